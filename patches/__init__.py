"""The only code in kvprefetch that touches SGLang internals.

SGLang's `load_plugins()` (launch_server, Engine, scheduler processes) calls `apply()` through the
entry point `sglang.srt.plugins: kvprefetch = kvprefetch.patches:apply`. Programs that build
`ServerArgs` themselves (or run `sglang.bench_one_batch`, which loads no plugins) call
`kvprefetch.patches.apply()` before parsing arguments.

Importing this package imports neither sglang nor torch; `apply()` imports sglang, and the backend
factory imports `kvprefetch.integration.backend` only when SGLang creates the backend.

No SGLang per-backend allow-list is patched: none stands in the way of a paged MHA decode backend
in SGLang 0.5.17. README.md beside this file lists the code paths that were checked.
"""

from __future__ import annotations

from .register import BACKEND_NAME, create_kvprefetch_backend, register
from .version_guard import TESTED_SGLANG_SPECIFIER, check_sglang_version

__all__ = [
    "BACKEND_NAME",
    "TESTED_SGLANG_SPECIFIER",
    "apply",
    "check_sglang_version",
    "create_kvprefetch_backend",
]


def apply() -> None:
    """Register the 'kvprefetch' attention backend with SGLang. Safe to call any number of times.

    Raises RuntimeError (and registers nothing) if the installed SGLang is outside the tested range.
    Note that SGLang's load_plugins() logs a plugin's exception and carries on, so there the error
    shows up in the log and `--attention-backend kvprefetch` is then refused as an invalid choice.
    """
    check_sglang_version()
    register()
