"""Small shared objects standing in for built decode modules (needs a C compiler, no nvcc): one exporting the
tvm-ffi entry points the op calls, one without them, and damaged copies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

_ENTRY_POINTS_C = """
int __tvm_ffi_run(void *self, const void *args, int num_args, void *result) { return 0; }
int __tvm_ffi_blocks_per_sm(void *self, const void *args, int num_args, void *result) { return 0; }
int __tvm_ffi_l2_prefetch(void *self, const void *args, int num_args, void *result) { return 0; }
int __tvm_ffi_l2_persisting(void *self, const void *args, int num_args, void *result) { return 0; }
"""
_NO_ENTRY_POINTS_C = "int kvprefetch_stub_without_entry_points;\n"


def have_cc() -> bool:
    return shutil.which("cc") is not None


def compile_shared(path: Path, with_entry_points: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    src = _ENTRY_POINTS_C if with_entry_points else _NO_ENTRY_POINTS_C
    subprocess.run(["cc", "-shared", "-fPIC", "-x", "c", "-", "-o", str(path)], input=src, text=True, check=True)
    return path


def damage(path: Path, how: str) -> Path:
    """Overwrite ``path`` the way a bad cache entry looks: garbage bytes, a truncated copy, or an empty file."""
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"\x13\x37" * 2048)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(f"how: expected garbage, truncated or empty, got {how!r}")
    return path
