"""Load (building on first use) the decode module of one configuration, once per process."""

from __future__ import annotations

import shutil
import threading
import time

from .errors import KernelUnavailableError
from .jit_spec import DecodeConfig, gen_spec, module_name, prebuilt_path

_modules: dict = {}
_lock = threading.Lock()
load_seconds: dict[str, float] = {}  # module name -> wall time of its first load (build included), for logs


def _nvcc_missing_reason() -> str | None:
    import os

    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if shutil.which("nvcc") or (cuda_home and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))):
        return None
    return "nvcc was not found on PATH or under $CUDA_HOME/bin (the kernel is compiled on first use)"


def load_module(cfg: DecodeConfig):
    """The tvm-ffi module for ``cfg``; raises KernelUnavailableError naming the cause when it can't be had."""
    with _lock:
        mod = _modules.get(cfg)
        if mod is not None:
            return mod
        t0 = time.perf_counter()
        import tvm_ffi

        path = prebuilt_path(cfg)
        try:
            if path is not None:
                mod = tvm_ffi.load_module(str(path))
            else:
                missing = _nvcc_missing_reason()
                spec = gen_spec(cfg)
                if missing and not spec.is_compiled:
                    raise KernelUnavailableError(missing)
                mod = spec.build_and_load()
        except KernelUnavailableError:
            raise
        except Exception as e:  # a build or load failure: name the module and the cause, keep the chain
            raise KernelUnavailableError(f"building/loading {module_name(cfg)} failed: {e}") from e
        _modules[cfg] = mod
        load_seconds[module_name(cfg)] = time.perf_counter() - t0
        return mod
