"""load_module's cache decisions, in-process with a stand-in for FlashInfer's JitSpec whose "build" writes a stub
module (CPU, a C compiler, no nvcc): a bad cache entry is removed and built once more, a second failure names the
module and the cause, a bad prebuilt file falls back to the JIT path, and no build runs without nvcc."""

import logging
import shutil
from pathlib import Path

import pytest

from kvprefetch.jit_kernels import loader
from kvprefetch.jit_kernels.errors import KernelUnavailableError
from kvprefetch.jit_kernels.jit_spec import make_config, module_name

from .stub_modules import compile_shared, damage, have_cc

pytestmark = pytest.mark.skipif(not have_cc(), reason="needs a C compiler (cc) to build stub modules")

CFG = make_config("bf16", False, 128, 0)
NAME = module_name(CFG)


class FakeSpec:
    """FlashInfer's JitSpec surface the loader uses; build() is ninja's: a no-op while the library file exists."""

    def __init__(self, root: Path, good: Path, builds_good: bool = True):
        self.name = NAME
        self.build_dir = root / "cached_ops" / NAME
        self.jit_library_path = self.build_dir / f"{NAME}.so"
        self.lock_path = root / "cached_ops" / "tmp" / f"{NAME}.lock"
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.good, self.builds_good, self.builds = good, builds_good, 0

    def build(self, verbose, need_lock=True):
        assert not need_lock, "the loader holds the module lock itself"
        if self.jit_library_path.exists():
            return
        self.builds += 1
        self.build_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.good, self.jit_library_path)
        if not self.builds_good:
            damage(self.jit_library_path, "garbage")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fresh loader state; returns a factory for the fake spec the loader will get."""
    monkeypatch.setattr(loader, "_modules", {})
    monkeypatch.setattr(loader, "module_loads", {})
    monkeypatch.setattr(loader, "nvcc_missing_reason", lambda: None)
    monkeypatch.delenv("KVPREFETCH_PREBUILT_DIR", raising=False)
    good = compile_shared(tmp_path / "built" / "good.so")

    def make(**kw):
        spec = FakeSpec(tmp_path / "fiws", good, **kw)
        monkeypatch.setattr(loader, "gen_spec", lambda cfg: spec)
        return spec

    make.good = good
    return make


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_first_load_builds_then_the_cache_serves(env, monkeypatch):
    spec = env()
    loader.load_module(CFG)
    assert spec.builds == 1 and loader.module_loads[NAME].source == "compiled"
    monkeypatch.setattr(loader, "_modules", {})  # a second process
    loader.load_module(CFG)
    assert spec.builds == 1 and loader.module_loads[NAME].source == "JIT cache"
    assert NAME in loader.describe_load(CFG) and "JIT cache" in loader.describe_load(CFG)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "no entry points"])
def test_a_bad_cache_entry_is_rebuilt_not_loaded(env, caplog, how):
    spec = env()
    spec.build(verbose=False, need_lock=False)
    if how == "no entry points":
        compile_shared(spec.jit_library_path, with_entry_points=False)
    else:
        damage(spec.jit_library_path, how)
    stale_object = spec.build_dir / "paged_decode_binding.cuda.o"
    stale_object.write_bytes(b"left over")
    with caplog.at_level(logging.WARNING):
        mod = loader.load_module(CFG)
    assert mod.implements_function("run")
    assert spec.builds == 2 and loader.module_loads[NAME].source == "rebuilt"
    assert not stale_object.exists()  # the whole entry was removed, not only the library
    (msg,) = _warnings(caplog)
    assert NAME in msg and "unusable" in msg


def test_a_second_failure_names_the_module_and_the_cause(env, caplog):
    spec = env(builds_good=False)
    spec.build(verbose=False, need_lock=False)
    with pytest.raises(KernelUnavailableError, match=f"{NAME} still fails.*not an ELF file") as err:
        loader.load_module(CFG)
    assert spec.builds == 2 and NAME not in loader.module_loads
    assert isinstance(err.value.__cause__, Exception)


def test_a_failing_fresh_build_is_not_retried(env):
    spec = env(builds_good=False)
    with pytest.raises(KernelUnavailableError, match=f"{NAME}.*not an ELF file"):
        loader.load_module(CFG)
    assert spec.builds == 1


def test_without_nvcc_a_whole_cache_entry_still_loads(env, monkeypatch):
    spec = env()
    spec.build(verbose=False, need_lock=False)
    monkeypatch.setattr(loader, "nvcc_missing_reason", lambda: "nvcc was not found")
    spec.build = None  # must not be called: there is no compiler
    loader.load_module(CFG)
    assert loader.module_loads[NAME].source == "JIT cache"


def test_without_nvcc_a_bad_cache_entry_is_removed_and_reported(env, monkeypatch):
    spec = env()
    spec.build(verbose=False, need_lock=False)
    damage(spec.jit_library_path, "truncated")
    monkeypatch.setattr(loader, "nvcc_missing_reason", lambda: "nvcc was not found")
    with pytest.raises(KernelUnavailableError, match=f"cached module {NAME} was unusable.*truncated.*nvcc was not"):
        loader.load_module(CFG)
    assert not spec.build_dir.exists()


def test_without_nvcc_or_cache_the_reason_is_nvcc(env, monkeypatch):
    env()
    monkeypatch.setattr(loader, "nvcc_missing_reason", lambda: "nvcc was not found on PATH")
    with pytest.raises(KernelUnavailableError, match="nvcc was not found on PATH"):
        loader.load_module(CFG)


def test_a_good_prebuilt_file_is_used(env, tmp_path, monkeypatch):
    spec = env()
    shutil.copy(env.good, tmp_path / f"{NAME}.so")
    monkeypatch.setenv("KVPREFETCH_PREBUILT_DIR", str(tmp_path))
    loader.load_module(CFG)
    assert spec.builds == 0 and loader.module_loads[NAME].source == "prebuilt"


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_bad_prebuilt_file_falls_back_to_the_jit_build(env, tmp_path, monkeypatch, caplog, how):
    spec = env()
    prebuilt = tmp_path / "prebuilt"
    prebuilt.mkdir()
    damage(Path(shutil.copy(env.good, prebuilt / f"{NAME}.so")), how)
    monkeypatch.setenv("KVPREFETCH_PREBUILT_DIR", str(prebuilt))
    with caplog.at_level(logging.WARNING):
        mod = loader.load_module(CFG)
    assert mod.implements_function("run") and spec.builds == 1
    assert loader.module_loads[NAME].source == "compiled"
    (msg,) = _warnings(caplog)
    assert str(prebuilt / f"{NAME}.so") in msg and "JIT build" in msg


def test_a_file_where_the_cache_entry_should_be_is_replaced(env, caplog):
    spec = env()
    spec.build_dir.parent.mkdir(parents=True, exist_ok=True)
    spec.build_dir.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        loader.load_module(CFG)
    assert spec.build_dir.is_dir() and loader.module_loads[NAME].source == "rebuilt"
