"""Which devices the kernel supports: sm_90 (H100/H200), the only architecture it is built and tested for."""

from __future__ import annotations

import torch

SUPPORTED_CAPABILITIES = ((9, 0),)


def is_supported_device(device: torch.device | str | int | None = None) -> tuple[bool, str]:
    """(True, "") on an sm_90 GPU, else (False, reason naming what is missing or unsupported)."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible to torch (kvprefetch needs an sm_90 GPU: H100 or H200)"
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if dev.type != "cuda":
        return False, f"device {dev} is not a CUDA device"
    cap = torch.cuda.get_device_capability(dev)
    if cap not in SUPPORTED_CAPABILITIES:
        name = torch.cuda.get_device_name(dev)
        return False, f"{name} is sm_{cap[0]}{cap[1]}; kvprefetch supports sm_90 (H100/H200) only"
    return True, ""
