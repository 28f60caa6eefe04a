"""GPU: a JIT failure in the server falls back to SGLang's Triton attention with one warning, and generation goes on.

Two broken machines, each an Engine (gpu_engine_worker.py) under ``--attention-backend kvprefetch`` with no
prebuilt modules (KVPREFETCH_PREBUILT_DIR unset) and a fresh FlashInfer workspace (FLASHINFER_WORKSPACE_BASE), so
no cached kvprefetch module exists:

* no-nvcc: no nvcc on PATH, and CUDA_HOME pointing at a folder without one. CUDA_HOME is set rather than unset
  because, unset, FlashInfer's lookup (which kvprefetch's follows) falls back to /usr/local/cuda, where the host's
  nvcc is; SGLang's own JIT kernels for this model are already built by then (the Triton reference runs first)
  and load from their cache without a compiler.
* cache-dir-is-a-file: nvcc is there, but FlashInfer's JIT folder (``.../cached_ops``) is a regular file, so no
  module can be built or locked there. (A read-only folder would not do: the GPU host runs as root.)

Each must give SGLang's Triton decode (same tokens as a plain ``--attention-backend triton`` run) and exactly one
"kvprefetch decode kernel unavailable" warning naming the cause.
"""

import math
import os
import subprocess
import sys

import pytest

from gpu_engine_runs import compare, run_engine
from kvp_integration_helpers import SM90_REASON, is_sm90

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not is_sm90(), reason=SM90_REASON)]

WARNING = "kvprefetch decode kernel unavailable"


def _fresh_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KVPREFETCH_PREBUILT_DIR"}
    env["FLASHINFER_WORKSPACE_BASE"] = str(tmp_path / "flashinfer-workspace")
    return env


def _no_nvcc_env(tmp_path):
    env = _fresh_env(tmp_path)
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                  if d and not os.path.exists(os.path.join(d, "nvcc")))
    (tmp_path / "cuda-home-without-nvcc").mkdir()
    env["CUDA_HOME"] = str(tmp_path / "cuda-home-without-nvcc")
    for var in ("CUDA_PATH", "FLASHINFER_NVCC"):
        env.pop(var, None)
    probe = "from kvprefetch.jit_kernels.cuda_toolkit import nvcc_missing_reason as r; print(r() or 'FOUND')"
    seen = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout
    assert "nvcc was not found" in seen, f"nvcc is still reachable in the test's environment: {seen}"
    return env, "nvcc was not found"


def _jit_dir_is_a_file_env(tmp_path):
    env = _fresh_env(tmp_path)
    # the folder the loader builds in, asked of the loader's own spec (FlashInfer names it after the GPU arch)
    probe = ("from kvprefetch.jit_kernels.jit_spec import gen_spec, make_config; "
             "print(gen_spec(make_config('bf16', False, 128, 0)).build_dir.parent)")
    jit_dir = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
    os.makedirs(os.path.dirname(jit_dir), exist_ok=True)
    with open(jit_dir, "w") as f:
        f.write("a file where FlashInfer's JIT folder should be\n")
    return env, "cached_ops"


@pytest.mark.parametrize("broken", [_no_nvcc_env, _jit_dir_is_a_file_env], ids=["no-nvcc", "cache-dir-is-a-file"])
def test_fallback_to_triton_with_one_warning(tiny_model, tmp_path_factory, tmp_path, broken):
    tmp = str(tmp_path_factory.getbasetemp())
    triton, _ = run_engine(tiny_model, tmp, attention_backend="triton")
    env, cause = broken(tmp_path)
    got, log = run_engine(tiny_model, tmp, env=env, attention_backend="kvprefetch")
    warnings = [line for line in log.splitlines() if WARNING in line]
    assert len(warnings) == 1, "\n".join(warnings) or log[-4000:]
    assert cause in warnings[0] and "Triton" in warnings[0], warnings[0]
    assert "kvprefetch decode backend ready" not in log
    assert len(got["results"]) == 8
    for r in got["results"]:
        assert len(r["ids"]) == 24 and all(math.isfinite(x) for x in r["lp"])
    mx, _ = compare(triton, got, min_fraction=0.9)
    assert mx <= 1e-3, f"the fallback does not compute what SGLang's Triton backend does (max {mx:.4f} nats)"
