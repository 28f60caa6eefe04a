"""benchmarks/main_job.py on a machine it cannot run on: a clear message and exit status 2."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "main_job.py")


def _has_cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.mark.skipif(_has_cuda(), reason="this machine has a CUDA GPU")
def test_exits_2_without_gpu():
    r = subprocess.run([sys.executable, SCRIPT, "--layers", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot run here" in r.stderr and "GPU" in r.stderr


def test_help():
    r = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--layers" in r.stdout and "--attention-backend" in r.stdout
