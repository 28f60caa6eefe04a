"""Register 'kvprefetch' as an SGLang attention backend: a CLI choice plus a factory."""

from __future__ import annotations

BACKEND_NAME = "kvprefetch"


def create_kvprefetch_backend(model_runner):
    """SGLang's factory for the backend; imports the CUDA-side code only when a model runner asks."""
    from kvprefetch.integration.backend import create_backend

    return create_backend(model_runner)


def register() -> None:
    """Idempotent: adds the choice and the factory only where they are missing."""
    from sglang.srt.layers.attention.attention_registry import (
        ATTENTION_BACKENDS,
        register_attention_backend,
    )
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    # One list feeds --attention-backend, --prefill-attention-backend and --decode-attention-backend.
    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    if ATTENTION_BACKENDS.get(BACKEND_NAME) is not create_kvprefetch_backend:
        register_attention_backend(BACKEND_NAME)(create_kvprefetch_backend)
