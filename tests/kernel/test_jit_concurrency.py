"""Several processes building the same module at once (SGLang's TP workers do) end with one good build.

CPU-only with nvcc: each process runs the FlashInfer JIT spec's locked build into one shared cache folder."""

import os
import subprocess
import sys
import textwrap

import pytest

from kvprefetch.jit_kernels.jit_spec import make_config, module_name

BUILD = textwrap.dedent("""
    import sys
    from kvprefetch.jit_kernels.prebuild import prepare_build_env
    prepare_build_env()
    from kvprefetch.jit_kernels.jit_spec import gen_spec, make_config
    spec = gen_spec(make_config("f16", False, 64, 0))
    spec.build(verbose=False)  # under FlashInfer's per-module file lock
    print(spec.jit_library_path)
""")


@pytest.mark.nvcc
def test_concurrent_builds_leave_one_good_module(tmp_path):
    env = {**os.environ, "FLASHINFER_WORKSPACE_BASE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1, paths
    so = paths.pop()
    name = module_name(make_config("f16", False, 64, 0))
    assert so.endswith(f"{name}.so") and os.path.getsize(so) > 10_000
    built = [f for _, _, files in os.walk(tmp_path) for f in files if f == f"{name}.so"]
    assert built == [f"{name}.so"], built  # one module, no half-written copies beside it
    symbols = subprocess.run(["nm", "-D", so], capture_output=True, text=True).stdout
    assert "__tvm_ffi_run" in symbols, "the tvm-ffi entry point is missing from the build"
