"""Load (building on first use) the decode module of one configuration, once per process.

Where a module comes from, in order: ``$KVPREFETCH_PREBUILT_DIR/<name>.so``; FlashInfer's JIT cache
(``cached_ops/<name>/``, checked by ninja when nvcc is reachable); a fresh build. A prebuilt file that can't be
loaded is skipped with a warning. A cached build that can't be loaded (truncated, overwritten, missing its entry
points, or failing to rebuild in place) is removed and built once more from scratch; a second failure raises
KernelUnavailableError.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from .cuda_toolkit import nvcc_missing_reason
from .errors import KernelUnavailableError
from .jit_spec import DecodeConfig, gen_spec, module_name, prebuilt_path
from .module_file import load_module_file

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModuleLoad:
    """How this process got a module, for the start-up log."""

    name: str
    source: str  # "prebuilt" | "JIT cache" | "compiled" | "rebuilt"
    seconds: float

    def describe(self) -> str:
        return f"{self.name} ({self.source}, {self.seconds:.2f} s)"


_modules: dict = {}
_lock = threading.Lock()
module_loads: dict[str, ModuleLoad] = {}  # module name -> how its first load in this process went


def load_module(cfg: DecodeConfig):
    """The tvm-ffi module for ``cfg``; raises KernelUnavailableError naming the cause when it can't be had."""
    with _lock:
        mod = _modules.get(cfg)
        if mod is not None:
            return mod
        t0 = time.perf_counter()
        try:
            mod, source = _load_prebuilt(cfg), "prebuilt"
            if mod is None:
                mod, source = _load_jit(cfg)
        except KernelUnavailableError:
            raise
        except Exception as e:  # a build or load failure: name the module and the cause, keep the chain
            raise KernelUnavailableError(f"building/loading {module_name(cfg)} failed: {e}") from e
        _modules[cfg] = mod
        name = module_name(cfg)
        module_loads[name] = ModuleLoad(name, source, time.perf_counter() - t0)
        return mod


def describe_load(cfg: DecodeConfig) -> str:
    """'<module name> (<source>, <seconds>)' for a module this process loaded, else its name."""
    name = module_name(cfg)
    load = module_loads.get(name)
    return load.describe() if load else name


def _load_prebuilt(cfg: DecodeConfig):
    path = prebuilt_path(cfg)
    if path is None:
        return None
    try:
        return load_module_file(path)
    except Exception as e:
        logger.warning("kvprefetch: prebuilt module %s cannot be loaded (%s); using the JIT build instead", path, e)
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _file_id(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _build_and_load(spec, can_build: bool):
    """(module, whether ninja wrote a new library file)."""
    before = _file_id(spec.jit_library_path)
    if can_build:  # ninja: nothing to do when the cached build is complete and up to date
        spec.build(verbose=os.environ.get("FLASHINFER_JIT_VERBOSE", "0") == "1", need_lock=False)
    mod = load_module_file(spec.jit_library_path)
    return mod, before is None or _file_id(spec.jit_library_path) != before


def _load_jit(cfg: DecodeConfig):
    """(module, source) from FlashInfer's JIT cache or a build, under FlashInfer's per-module file lock."""
    from filelock import FileLock

    spec = gen_spec(cfg)
    missing = nvcc_missing_reason()
    if missing and not spec.jit_library_path.exists():
        raise KernelUnavailableError(missing)
    # The lock FlashInfer's own build_and_load takes: concurrent processes (TP workers) build, check and repair
    # one at a time, and a process that waited finds the finished build.
    with FileLock(spec.lock_path, thread_local=False):
        cached = os.path.lexists(spec.build_dir)
        try:
            mod, compiled = _build_and_load(spec, can_build=not missing)
            return mod, "compiled" if compiled else "JIT cache"
        except Exception as first:
            if not cached:
                raise
            _remove(spec.build_dir)
            if missing:
                raise KernelUnavailableError(f"cached module {spec.name} was unusable ({first}) and cannot be "
                                             f"rebuilt: {missing}") from first
            logger.warning("kvprefetch: cached module %s was unusable (%s); removed %s, building it again",
                           spec.name, first, spec.build_dir)
            try:
                return _build_and_load(spec, can_build=True)[0], "rebuilt"
            except Exception as second:
                raise KernelUnavailableError(f"{spec.name} still fails after removing its unusable cache entry "
                                             f"({first}): {second}") from second
