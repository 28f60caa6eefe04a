"""Importing kvprefetch.patches must stay cheap: no sglang, no torch, no CUDA-side project code."""

import subprocess
import sys


def test_import_patches_imports_neither_sglang_nor_torch():
    code = (
        "import sys, kvprefetch.patches\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sglang', 'torch')"
        " or m.startswith('kvprefetch.integration.') or m.startswith('kvprefetch.jit_kernels'))\n"
        "print(heavy)\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
