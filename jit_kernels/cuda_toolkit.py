"""Where the CUDA toolkit is: the one place kvprefetch looks for nvcc.

The order is FlashInfer's (``flashinfer.jit.cpp_ext.get_cuda_path``), which writes ``$cuda_home/bin/nvcc`` into
every build it runs, so "nvcc is missing" here means FlashInfer's build would not find it either.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

DEFAULT_CUDA_HOME = "/usr/local/cuda"  # FlashInfer's and torch's last guess


def _toolkit_root_of(nvcc: str) -> str | None:
    """The toolkit root nvcc reports; nvcc on PATH may be a wrapper script outside the toolkit."""
    try:
        probe = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"TOP=(\S+)", probe.stdout + probe.stderr)
    return os.path.normpath(m.group(1)) if m else None


def find_cuda_home() -> str | None:
    """$CUDA_HOME or $CUDA_PATH as set; else the root of the toolkit whose nvcc is on PATH; else /usr/local/cuda
    if it holds nvcc; else None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        return _toolkit_root_of(nvcc) or os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if os.path.isfile(os.path.join(DEFAULT_CUDA_HOME, "bin", "nvcc")):
        return DEFAULT_CUDA_HOME
    return None


def find_nvcc() -> str | None:
    """The nvcc a JIT build will run ($FLASHINFER_NVCC overrides the toolkit's), or None."""
    override = os.environ.get("FLASHINFER_NVCC")
    if override:
        return shutil.which(override)
    home = find_cuda_home()
    nvcc = os.path.join(home, "bin", "nvcc") if home else None
    return nvcc if nvcc and os.access(nvcc, os.X_OK) else None


def nvcc_missing_reason() -> str | None:
    """None when nvcc is reachable, else a message saying where it was looked for and what to do."""
    if find_nvcc():
        return None
    if os.environ.get("FLASHINFER_NVCC"):
        return f"nvcc was not found: $FLASHINFER_NVCC ({os.environ['FLASHINFER_NVCC']}) is not an executable"
    home = find_cuda_home()
    where = f"in {home}/bin" if home else f"on PATH, under $CUDA_HOME / $CUDA_PATH, or in {DEFAULT_CUDA_HOME}/bin"
    return (f"nvcc was not found {where} (the kernel is compiled on first use); install the CUDA toolkit, "
            "set CUDA_HOME, or set KVPREFETCH_PREBUILT_DIR to modules built ahead")
