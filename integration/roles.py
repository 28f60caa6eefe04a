"""Which part of attention SGLang asked the "kvprefetch" factory to serve.

SGLang 0.5.17 resolves ``--prefill-attention-backend`` / ``--decode-attention-backend``
(each defaulting to ``--attention-backend``). When the two differ it calls each factory
once and composes the results in its own ``HybridAttnBackend``; when both are the same
it calls one factory for everything. So our factory serves:

* ``"full"``    -- both phases are kvprefetch: we return HybridAttnBackend(prefill =
  SGLang's FlashInferAttnBackend, decode = our kernel);
* ``"decode"``  -- e.g. ``--decode-attention-backend kvprefetch --prefill-attention-backend
  fa3``: SGLang composes, we return only the decode backend;
* ``"prefill"`` -- kvprefetch named for prefill only: we have no prefill kernel, so
  SGLang's FlashInfer backend serves it.

This module imports neither torch nor sglang.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

BACKEND_NAME = "kvprefetch"


def resolved_backends(server_args: Any) -> Tuple[Optional[str], Optional[str]]:
    """(prefill, decode) backend names, the way ServerArgs.get_attention_backends does it."""
    getter = getattr(server_args, "get_attention_backends", None)
    if callable(getter):
        prefill, decode = getter()
        return prefill, decode
    default = getattr(server_args, "attention_backend", None)
    prefill = getattr(server_args, "prefill_attention_backend", None) or default
    decode = getattr(server_args, "decode_attention_backend", None) or default
    return prefill, decode


def resolve_role(server_args: Any, name: str = BACKEND_NAME) -> str:
    prefill, decode = resolved_backends(server_args)
    if decode == name and prefill != name and prefill is not None:
        return "decode"
    if prefill == name and decode != name and decode is not None:
        return "prefill"
    return "full"
