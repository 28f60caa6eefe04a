"""Do two builds of the decode modules hold the same kernel machine code? For each module tag present in both
folders (the name without its source hash), compare the kernel's .text sections of the sm_90a cubin.

    python benchmarks/same_machine_code.py OLD_DIR NEW_DIR      # e.g. .gpu/prebuilt from before and after a change

A csrc edit renames every module (the name hashes the sources), so results measured before it are stale by
rule; identical machine code for the modules a result used shows the edit did not touch them. Needs cuobjdump
(CUDA's, or the copy Triton ships).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path


def find_cuobjdump() -> str | None:
    found = shutil.which("cuobjdump") or next(iter(glob.glob("/usr/local/cuda*/bin/cuobjdump")), None)
    if found:
        return found
    try:
        import triton

        path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        return str(path) if path.exists() else None
    except ImportError:
        return None


def text_sections(elf: bytes) -> dict[str, str]:
    """md5 of every .text.* section of an ELF64 little-endian image, by section name."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    out = {}
    for name_off, _, _, _, offset, size, *_ in headers:
        name = elf[names_at + name_off: elf.index(b"\0", names_at + name_off)].decode()
        if name.startswith(".text."):
            out[name] = hashlib.md5(elf[offset: offset + size]).hexdigest()
    return out


def module_text(so: Path, cuobjdump: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([cuobjdump, "-xelf", "all", str(so.resolve())], cwd=tmp, capture_output=True, check=True)
        out = {}
        for cubin in sorted(Path(tmp).glob("*.cubin")):
            out.update(text_sections(cubin.read_bytes()))
        return out


def by_tag(folder: Path) -> dict[str, Path]:
    return {re.sub(r"_[0-9a-f]{12}$", "", p.stem): p for p in sorted(folder.glob("*.so"))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    args = ap.parse_args(argv)
    tool = find_cuobjdump()
    if tool is None:
        print("cuobjdump not found (CUDA's bin/ or Triton's backends/nvidia/bin/)")
        return 2
    old, new = by_tag(args.old), by_tag(args.new)
    differ = 0
    for tag in sorted(old.keys() & new.keys()):
        same = module_text(old[tag], tool) == module_text(new[tag], tool)
        differ += not same
        print(f"{'same' if same else 'DIFFERENT':9s} {tag}")
    print(f"{len(old.keys() & new.keys())} modules compared, {differ} different; "
          f"only in old: {len(old.keys() - new.keys())}, only in new: {len(new.keys() - old.keys())}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
