"""Load a built module file only after checking it is whole.

A truncated shared object can kill the process (SIGBUS) when the loader maps it, and one without tvm-ffi's entry
points loads fine but serves nothing, and stays loaded under its path for the life of the process. So the file is
checked from its ELF headers before any dlopen: complete header tables and segments, and the entry points the op
calls in its dynamic symbol table.
"""

from __future__ import annotations

import struct
from pathlib import Path

# the functions the op calls (decode.py, l2_prefetch.py); tvm-ffi exports each as __tvm_ffi_<name>
ENTRY_POINTS = ("run", "blocks_per_sm", "l2_prefetch", "l2_persisting")

_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
_SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")
_SYMBOL = struct.Struct("<IBBHQQ")
_PT_LOAD, _SHT_NOBITS, _SHT_DYNSYM, _ET_DYN, _SHN_UNDEF = 1, 8, 11, 3, 0


class UnusableModuleFile(RuntimeError):
    """A module file that must not be loaded (missing, not a shared object, truncated, or without entry points)."""


def _exported_names(data: bytes, sections: list) -> set:
    names = set()
    for sec in sections:
        if sec[1] != _SHT_DYNSYM:
            continue
        strtab = sections[sec[6]]
        step = sec[9] or _SYMBOL.size
        for off in range(sec[4], sec[4] + sec[5] - _SYMBOL.size + 1, step):
            st_name, _, _, st_shndx, _, _ = _SYMBOL.unpack_from(data, off)
            if st_shndx == _SHN_UNDEF:
                continue
            start = strtab[4] + st_name
            names.add(data[start:data.index(b"\0", start)].decode("latin-1"))
    return names


def module_file_problem(path: Path | str, entry_points=ENTRY_POINTS) -> str | None:
    """None if ``path`` is a whole 64-bit shared object exporting ``entry_points``; else what is wrong with it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    size = len(data)
    if size < _ELF_HEADER.size or data[:4] != b"\x7fELF":
        return f"is not an ELF file ({size} bytes)"
    ident, e_type, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _ = _ELF_HEADER.unpack_from(data)
    if ident[4] != 2 or ident[5] != 1 or e_type != _ET_DYN:
        return "is not a 64-bit little-endian shared object"
    if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
        return f"is truncated ({size} bytes; its header tables end past the file)"
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz, _, _ = _PROGRAM_HEADER.unpack_from(data, phoff + i * phentsize)
        if p_type == _PT_LOAD and p_offset + p_filesz > size:
            return f"is truncated ({size} bytes; a loadable segment ends at {p_offset + p_filesz})"
    sections = [_SECTION_HEADER.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    for sec in sections:
        if sec[1] != _SHT_NOBITS and sec[4] + sec[5] > size:
            return f"is truncated ({size} bytes; a section ends at {sec[4] + sec[5]})"
    try:
        names = _exported_names(data, sections)
    except (IndexError, ValueError, struct.error):
        return "has a damaged dynamic symbol table"
    missing = [f"__tvm_ffi_{f}" for f in entry_points if f"__tvm_ffi_{f}" not in names]
    if missing:
        return f"lacks the tvm-ffi entry point(s) {', '.join(missing)}"
    return None


def load_module_file(path: Path | str):
    """tvm_ffi.load_module(path) once the file passed module_file_problem; raises UnusableModuleFile otherwise."""
    problem = module_file_problem(path)
    if problem:
        raise UnusableModuleFile(f"{path} {problem}")
    import tvm_ffi

    return tvm_ffi.load_module(str(path))
