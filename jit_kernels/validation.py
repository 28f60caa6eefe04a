"""Argument checks for the decode op: each raises ValueError naming the argument and what was expected.

Host-side checks (shape, dtype, device, contiguity) never synchronise. Checks of values inside index tensors
run on CPU tensors as they arrive, and on device tensors only in validation mode (KVPREFETCH_VALIDATE=1),
which synchronises and is therefore never used inside CUDA-graph capture.
"""

from __future__ import annotations

import os

import torch


def validation_mode() -> bool:
    return os.environ.get("KVPREFETCH_VALIDATE", "0").lower() in ("1", "true", "yes", "on")


def check_tensor(name: str, t, *, dtype=None, ndim=None, device=None, last_dim_contiguous=True) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = dtype if isinstance(dtype, tuple) else (dtype,)
        if t.dtype not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name}: expected dtype {want}, got {t.dtype}")
    if ndim is not None:
        allowed = ndim if isinstance(ndim, tuple) else (ndim,)
        if t.dim() not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {t.stride()}")


def check_shape(name: str, t: torch.Tensor, expected: tuple) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(t.shape)}")


def check_index_values(kv_indptr, kv_indices, kv_last_page_len, page_size: int, num_pages: int | None) -> None:
    """Values inside the page table (synchronises when the tensors live on a GPU)."""
    indptr = kv_indptr.cpu().long()
    if indptr.numel() == 0 or int(indptr[0]) != 0:
        raise ValueError("kv_indptr: expected kv_indptr[0] == 0")
    if bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("kv_indptr: expected a non-decreasing sequence")
    if int(indptr[-1]) > kv_indices.numel():
        raise ValueError(
            f"kv_indptr: last entry {int(indptr[-1])} exceeds kv_indices' length {kv_indices.numel()}"
        )
    last = kv_last_page_len.cpu().long()
    nonempty = indptr[1:] > indptr[:-1]
    bad = nonempty & ((last < 1) | (last > page_size))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"kv_last_page_len: entry {i} is {int(last[i])}, expected 1..{page_size}")
    used = kv_indices[: int(indptr[-1])].cpu().long()
    if used.numel() and (int(used.min()) < 0 or (num_pages is not None and int(used.max()) >= num_pages)):
        hi = "" if num_pages is None else f" and < {num_pages} (pages in the KV cache)"
        raise ValueError(f"kv_indices: page ids must be >= 0{hi}, got range [{int(used.min())}, {int(used.max())}]")
