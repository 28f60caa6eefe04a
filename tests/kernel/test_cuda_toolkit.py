"""Where nvcc is looked for (FlashInfer's order), with fake toolkits; no CUDA needed."""

import os

import pytest

from kvprefetch.jit_kernels import cuda_toolkit


def _fake_nvcc(folder, top=None):
    folder.mkdir(parents=True, exist_ok=True)
    nvcc = folder / "nvcc"
    report = f'echo "#$ TOP={top}" >&2' if top else "true"
    nvcc.write_text(f"#!/bin/sh\n{report}\n")
    nvcc.chmod(0o755)
    return nvcc


@pytest.fixture
def bare(monkeypatch, tmp_path):
    """No CUDA_HOME / CUDA_PATH / FLASHINFER_NVCC, an empty PATH, no /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH", "FLASHINFER_NVCC"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setattr(cuda_toolkit, "DEFAULT_CUDA_HOME", str(tmp_path / "no-usr-local-cuda"))


def test_cuda_home_is_used_first(bare, monkeypatch, tmp_path):
    nvcc = _fake_nvcc(tmp_path / "toolkit" / "bin")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "toolkit"))
    assert cuda_toolkit.find_nvcc() == str(nvcc) and cuda_toolkit.nvcc_missing_reason() is None


def test_a_cuda_home_without_nvcc_is_reported_by_path(bare, monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "empty-toolkit"))
    reason = cuda_toolkit.nvcc_missing_reason()
    assert f"in {tmp_path / 'empty-toolkit'}/bin" in reason and "KVPREFETCH_PREBUILT_DIR" in reason


def test_nothing_anywhere_names_every_place_looked(bare):
    assert cuda_toolkit.find_cuda_home() is None
    reason = cuda_toolkit.nvcc_missing_reason()
    assert "on PATH" in reason and "$CUDA_HOME" in reason and "/bin" in reason


def test_a_wrapper_on_path_reports_its_toolkit(bare, monkeypatch, tmp_path):
    wrapper_dir = tmp_path / "wrappers"
    _fake_nvcc(wrapper_dir, top=str(tmp_path / "real-toolkit"))
    _fake_nvcc(tmp_path / "real-toolkit" / "bin")
    monkeypatch.setenv("PATH", str(wrapper_dir))
    assert cuda_toolkit.find_cuda_home() == str(tmp_path / "real-toolkit")
    assert cuda_toolkit.find_nvcc() == os.path.join(str(tmp_path / "real-toolkit"), "bin", "nvcc")


def test_usr_local_cuda_is_the_last_guess(bare, monkeypatch, tmp_path):
    _fake_nvcc(tmp_path / "default" / "bin")
    monkeypatch.setattr(cuda_toolkit, "DEFAULT_CUDA_HOME", str(tmp_path / "default"))
    assert cuda_toolkit.find_cuda_home() == str(tmp_path / "default")


def test_flashinfer_nvcc_overrides(bare, monkeypatch, tmp_path):
    monkeypatch.setenv("FLASHINFER_NVCC", str(tmp_path / "absent-nvcc"))
    assert "FLASHINFER_NVCC" in cuda_toolkit.nvcc_missing_reason()
    nvcc = _fake_nvcc(tmp_path / "custom")
    monkeypatch.setenv("FLASHINFER_NVCC", str(nvcc))
    assert cuda_toolkit.find_nvcc() == str(nvcc)
