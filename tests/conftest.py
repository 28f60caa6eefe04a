"""Markers: `gpu` tests run only on an sm_90 GPU, `nvcc` tests only where nvcc exists; both skip with a reason."""

import shutil

import pytest


def _gpu_skip_reason():
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU (GPU tests run on the H100/H200 host)"
    if torch.cuda.get_device_capability() != (9, 0):
        return f"{torch.cuda.get_device_name()} is not sm_90"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_reason = _gpu_skip_reason()
    nvcc_reason = None if shutil.which("nvcc") else "nvcc is not on PATH"
    for item in items:
        if gpu_reason and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=gpu_reason))
        if nvcc_reason and "nvcc" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=nvcc_reason))
