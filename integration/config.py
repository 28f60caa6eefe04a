"""Environment knobs of the kvprefetch SGLang backend, read in one place.

Parsed the way SGLang parses its own ``SGLANG_*`` variables (``sglang.srt.environ``):
booleans accept ``1/true/yes/y/on`` and ``0/false/no/n/off`` in any case, an empty value
means "not set", and an invalid value is reported and replaced by the default
rather than taking the server down.

==============================  =========  ================================================
variable                        default    meaning
==============================  =========  ================================================
``KVPREFETCH_PREFETCH_DISTANCE``  unset    L2 prefetch distance in KV tiles of 64 tokens
                                           (int 0..8; 0 turns prefetch off). Unset: the
                                           kernel layer's tuned default.
``KVPREFETCH_PDL``              ``0``      programmatic dependent launch of the decode
                                           kernel: off by default (in serving the kernel
                                           after ours does not use it, and the early start
                                           cost the 8B step 0.7 %: NOTES.md, run 15a);
                                           ``auto`` takes the kernel layer's per-card
                                           choice (what kernel_bench measures; on an H200
                                           it includes the KV loads before the PDL wait,
                                           experiment 38; with them the 8B step still ran
                                           0.13 % slower, run 18c), a boolean forces it
                                           on / off.
``KVPREFETCH_DISABLE``          ``0``      ``1``: do not use the kvprefetch decode kernel;
                                           SGLang's Triton attention backend serves
                                           instead (logged at start-up).
``KVPREFETCH_VALIDATE``         ``0``      ``1``: kernel validation mode. Read and applied
                                           by ``kvprefetch.jit_kernels`` itself; the
                                           backend only reports it in its start-up log.
``KVPREFETCH_PREFILL_BACKEND``  ``auto``   the SGLang backend that serves prefill/extend
                                           under ``--attention-backend kvprefetch``:
                                           ``auto`` (FA3 where it imports -- SGLang's
                                           Hopper default, 11-22 % faster 16K prefill --
                                           and the KV cache is 16-bit, else FlashInfer:
                                           FA3 prefills an fp8 cache with q cast to
                                           fp8), ``flashinfer``, or ``fa3``
                                           (FlashInfer with a warning where FA3 does not
                                           import).
==============================  =========  ================================================

This module imports neither torch nor sglang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

ENV_PREFETCH_DISTANCE = "KVPREFETCH_PREFETCH_DISTANCE"
ENV_DISABLE = "KVPREFETCH_DISABLE"
ENV_PDL = "KVPREFETCH_PDL"
ENV_VALIDATE = "KVPREFETCH_VALIDATE"
ENV_PREFILL = "KVPREFETCH_PREFILL_BACKEND"
PREFILL_BACKENDS = ("auto", "flashinfer", "fa3")  # the first is the default

_TRUE = ("1", "true", "yes", "y", "on")
_FALSE = ("0", "false", "no", "n", "off")
# The range kvprefetch.jit_kernels accepts for prefetch_distance (its constructor's contract).
MAX_PREFETCH_DISTANCE = 8


@dataclass(frozen=True)
class KvPrefetchConfig:
    """The parsed knobs. ``warnings`` lists values that were invalid and ignored."""

    prefetch_distance: Optional[int] = None
    disable: bool = False
    validate: bool = False
    prefill_backend: str = "auto"
    pdl: Optional[bool] = False  # None: auto (the kernel layer's per-card default)
    warnings: Tuple[str, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        dist = "kernel default" if self.prefetch_distance is None else str(self.prefetch_distance)
        return (
            f"prefetch_distance={dist} ({ENV_PREFETCH_DISTANCE}), "
            f"disable={int(self.disable)} ({ENV_DISABLE}), "
            f"validate={int(self.validate)} ({ENV_VALIDATE}), "
            f"prefill={self.prefill_backend} ({ENV_PREFILL}), "
            f"pdl={'auto' if self.pdl is None else int(self.pdl)} ({ENV_PDL})"
        )


def _as_bool(value: str) -> Optional[bool]:
    return True if value in _TRUE else False if value in _FALSE else None


def parse_bool(name: str, raw: Optional[str], default: bool, warnings: list) -> bool:
    if raw is None or raw.strip() == "":
        return default
    value = _as_bool(raw.strip().lower())
    if value is not None:
        return value
    warnings.append(
        f'invalid value for {name}: "{raw}" is not a boolean (use 1/0, true/false, yes/no, on/off); '
        f"using default {int(default)}"
    )
    return default


def parse_distance(name: str, raw: Optional[str], warnings: list) -> Optional[int]:
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        warnings.append(f'invalid value for {name}: "{raw}" is not an integer; using the kernel default')
        return None
    if not 0 <= value <= MAX_PREFETCH_DISTANCE:
        warnings.append(
            f"invalid value for {name}: {value} is outside 0..{MAX_PREFETCH_DISTANCE}; using the kernel default"
        )
        return None
    return value


def parse_auto_bool(name: str, raw: Optional[str], default: Optional[bool], warnings: list) -> Optional[bool]:
    """``auto`` -> None, unset -> ``default``, else a boolean as parse_bool reads it."""
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() == "auto":
        return None
    value = _as_bool(raw.strip().lower())
    if value is None:
        shown = "auto" if default is None else int(default)
        warnings.append(f'invalid value for {name}: "{raw}" is neither auto nor a boolean (use auto, 1/0, true/false, '
                        f'yes/no, on/off); using {shown}')
        return default
    return value


def parse_choice(name: str, raw: Optional[str], choices: Tuple[str, ...], warnings: list) -> str:
    if raw is None or raw.strip() == "":
        return choices[0]
    value = raw.strip().lower()
    if value in choices:
        return value
    warnings.append(f'invalid value for {name}: "{raw}" is not one of {", ".join(choices)}; using {choices[0]}')
    return choices[0]


def load_config(environ: Optional[Mapping[str, str]] = None) -> KvPrefetchConfig:
    """Read the knobs from ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    warnings: list = []
    distance = parse_distance(ENV_PREFETCH_DISTANCE, env.get(ENV_PREFETCH_DISTANCE), warnings)
    disable = parse_bool(ENV_DISABLE, env.get(ENV_DISABLE), False, warnings)
    validate = parse_bool(ENV_VALIDATE, env.get(ENV_VALIDATE), False, warnings)
    prefill = parse_choice(ENV_PREFILL, env.get(ENV_PREFILL), PREFILL_BACKENDS, warnings)
    pdl = parse_auto_bool(ENV_PDL, env.get(ENV_PDL), False, warnings)
    return KvPrefetchConfig(
        prefetch_distance=distance, disable=disable, validate=validate, prefill_backend=prefill, pdl=pdl,
        warnings=tuple(warnings),
    )
