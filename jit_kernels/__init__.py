"""kvprefetch's kernel layer: the JIT-compiled paged decode op. Never imports SGLang."""

from .decode import BatchDecodeWithPagedKVCache
from .device import is_supported_device
from .errors import KernelUnavailableError
from .jit_spec import DecodeConfig
from .reference import paged_decode_reference

__all__ = [
    "BatchDecodeWithPagedKVCache",
    "DecodeConfig",
    "KernelUnavailableError",
    "is_supported_device",
    "paged_decode_reference",
]
