"""A bad entry in FlashInfer's JIT cache is rebuilt, not loaded; a bad prebuilt file falls back to the JIT path.

CPU with nvcc, real FlashInfer builds of the smallest module: one build shared by the module's tests, one rebuild.
Every load runs in its own process (FlashInfer fixes its cache folder at import; a process is what a TP worker is).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvprefetch.jit_kernels.jit_spec import make_config, module_name
from kvprefetch.jit_kernels.module_file import module_file_problem

from .stub_modules import damage

CFG = ("f16", False, 64, 0)  # the module test_jit_concurrency.py builds too: the smallest family
NAME = module_name(make_config(*CFG))

LOAD = f"""
import json, logging
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
from kvprefetch.jit_kernels.prebuild import prepare_build_env
prepare_build_env()
from kvprefetch.jit_kernels import loader
from kvprefetch.jit_kernels.jit_spec import gen_spec, make_config
cfg = make_config(*{CFG!r})
mod = loader.load_module(cfg)
print("RESULT " + json.dumps(dict(source=loader.module_loads[{NAME!r}].source, so=str(gen_spec(cfg).jit_library_path),
                                  run=bool(mod.implements_function("run")))))
"""


def _start(workspace, prebuilt_dir=None):
    env = {k: v for k, v in os.environ.items() if k != "KVPREFETCH_PREBUILT_DIR"}
    env["FLASHINFER_WORKSPACE_BASE"] = str(workspace)
    if prebuilt_dir is not None:
        env["KVPREFETCH_PREBUILT_DIR"] = str(prebuilt_dir)
    return subprocess.Popen([sys.executable, "-c", LOAD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-4000:]
    line = [l for l in out.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):]), err


def _warnings(err):
    return [l for l in err.splitlines() if l.startswith("WARNING kvprefetch")]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A FlashInfer workspace holding one good build of NAME (the one build of this module)."""
    root = tmp_path_factory.mktemp("fiws")
    res, err = _finish(_start(root))
    assert res["source"] == "compiled" and res["run"] and not _warnings(err), err[-3000:]
    return root, res["so"]


@pytest.mark.nvcc
def test_a_truncated_cached_module_is_rebuilt_once_by_concurrent_loaders(workspace):
    root, so = workspace
    damage(Path(so), "truncated")  # an interrupted write: mapping it would SIGBUS
    procs = [_start(root) for _ in range(2)]  # two TP workers starting together
    results = [_finish(p) for p in procs]
    sources = sorted(r["source"] for r, _ in results)
    assert sources == ["JIT cache", "rebuilt"], sources  # one repaired it; the other waited on the lock
    assert all(r["run"] for r, _ in results)
    warnings = [w for _, err in results for w in _warnings(err)]
    assert len(warnings) == 1 and NAME in warnings[0] and "truncated" in warnings[0], warnings
    assert module_file_problem(so) is None
    copies = [f for _, _, files in os.walk(root) for f in files if f == f"{NAME}.so"]
    assert copies == [f"{NAME}.so"], copies


@pytest.mark.nvcc
def test_a_corrupt_prebuilt_file_falls_back_to_the_jit_cache(workspace, tmp_path):
    root, so = workspace
    prebuilt = tmp_path / f"{NAME}.so"
    prebuilt.write_bytes(b"\x7fELF" + b"\0" * 60)  # an ELF header and nothing else
    res, err = _finish(_start(root, prebuilt_dir=tmp_path))
    assert res["source"] == "JIT cache" and res["run"]
    (warning,) = _warnings(err)
    assert str(prebuilt) in warning and "JIT build" in warning
