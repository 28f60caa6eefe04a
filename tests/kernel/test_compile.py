"""nvcc compile-only check of each template family, for sm_90a and sm_80 (CI has nvcc 13.0, no GPU)."""

import subprocess

import pytest

from kvprefetch.jit_kernels.jit_spec import CSRC_DIR, SOURCES, make_config, nvcc_flags
from kvprefetch.jit_kernels.cuda_toolkit import find_cuda_home

FAMILIES = [("bf16", False, 128, 2), ("f16", True, 64, 0), ("bf16", True, 256, 1), ("f16", False, 256, 2)]


def _includes():
    import tvm_ffi.libinfo as info

    return [f"-I{CSRC_DIR}", f"-I{info.find_include_path()}", f"-I{info.find_dlpack_include_path()}"]


# every family for the target (sm_90a); two for sm_80, where only the prefetch instruction differs
CASES = [("90a", f) for f in FAMILIES] + [("80", f) for f in FAMILIES[:2]]


@pytest.mark.nvcc
@pytest.mark.parametrize("arch,family", CASES, ids=lambda c: "-".join(map(str, c)) if isinstance(c, tuple) else c)
def test_family_compiles(tmp_path, arch, family):
    _compile(tmp_path, make_config(*family), arch)


def _compile(tmp_path, cfg, arch):
    cmd = ["nvcc", "-std=c++17", "-O3", "-Xptxas", "-warn-spills", *nvcc_flags(cfg, arch), *_includes(),
           "-c", str(CSRC_DIR / SOURCES[0]), "-o", str(tmp_path / "m.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "spill" not in r.stderr, r.stderr  # local-memory spills would cost bandwidth


@pytest.mark.nvcc
def test_cuda_home_is_found():
    assert find_cuda_home() is not None


@pytest.mark.nvcc
@pytest.mark.parametrize("variant", [dict(pdl=True), dict(fp8_q=True), dict(f16_math=True),
                                     dict(f16_math=True, lazy_rescale=True), dict(trace=True),
                                     dict(pdl=True, two_blocks=True), dict(pdl=True, late_trigger=True),
                                     dict(cluster_merge=True), dict(pdl=True, cluster_merge=True, trace=True),
                                     dict(page_prefetch=True),
                                     dict(tma=True), dict(pdl=True, early_kv=True)],
                         ids=["pdl", "fp8_q", "f16_math", "f16_math+lazy_rescale", "trace", "pdl+two_blocks",
                              "pdl+late_trigger", "cluster_merge", "pdl+cluster_merge+trace",
                              "page_prefetch", "tma", "pdl+early_kv"])
def test_experiment_variants_compile(tmp_path, variant):  # griddepcontrol + cudaLaunchKernelEx; e4m3 mma; fp16 mma
    _compile(tmp_path, make_config("bf16", True, 128, 0, **variant), "90a")
