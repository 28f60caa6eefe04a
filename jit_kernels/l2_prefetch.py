"""Cross-layer L2 prefetch (experiment 39): after layer i's attention, bring layer i+1's KV pages into L2 while the
kernels in between stream their weights, so that layer's attention reads from L2 instead of HBM.

The page table is the one the decode op planned for this step (every layer of a step shares it). The prefetches are
bulk copies into L2 that no SM waits for; tagged evict_last they are persisting lines, which the weight stream cannot
evict only where an L2 set-aside for persisting lines exists (``set_persisting_l2``).

Measured on the H200 (NOTES.md, experiment 39) it made a simulated decode step 4-38 % slower: the prefetch of 32 MiB
takes 36 us and holds its stream, and L2 keeps almost none of it through 128 MB or more of weight traffic, even
tagged persisting. Nothing uses it by default; it stays for measurements on other cards."""

from __future__ import annotations

import torch

from .validation import check_tensor

THREADS = 128  # the kernel's block size (csrc/l2_prefetch.cuh)


def pool_page_geometry(k_cache: torch.Tensor, page_size: int) -> tuple[int, int]:
    """(bytes from one page to the next, bytes of one page's rows) of a pool ``[pages, page, heads, dim]`` or
    ``[slots, heads, dim]`` (page 1) whose pages are contiguous; raises ValueError naming what is not."""
    es = k_cache.element_size()
    heads, dim = k_cache.shape[-2], k_cache.shape[-1]
    inner = (heads * dim, dim, 1) if k_cache.dim() == 4 else (dim, 1)
    if tuple(k_cache.stride()[1:]) != inner:
        raise ValueError(f"k_cache: expected each page's rows contiguous (strides {inner} after the first), got "
                         f"{k_cache.stride()}")
    page_bytes = page_size * heads * dim * es
    stride_bytes = k_cache.stride(0) * es
    if page_bytes % 16 or stride_bytes % 16 or k_cache.data_ptr() % 16:
        raise ValueError(f"k_cache: expected 16-byte aligned pages (page {page_bytes} B, stride {stride_bytes} B)")
    return stride_bytes, page_bytes


def blocks_per_request(batch: int) -> int:
    """Enough threads that a long request's page ids are walked in a few rounds, without a wave of idle blocks."""
    return max(1, min(8, 128 // max(batch, 1)))


def launch(module, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_indptr: torch.Tensor, kv_indices: torch.Tensor,
           batch: int, page_size: int, max_bytes: int | None, evict_last: bool, blocks: int | None = None) -> None:
    """Prefetch the first ``batch`` requests' pages of ``k_cache`` / ``v_cache`` (at most ``max_bytes`` of K and V in
    all, shared evenly by the requests, each from its first page) on the current stream, with ``blocks`` blocks per
    request (None: ``blocks_per_request``); capturable."""
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, t, ndim=(3, 4), device=kv_indptr.device)
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride() or k_cache.dtype != v_cache.dtype:
        raise ValueError(f"v_cache: expected the shape, strides and dtype of k_cache {tuple(k_cache.shape)}, got "
                         f"{tuple(v_cache.shape)}")
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0):
        raise ValueError(f"max_bytes: expected None (every page) or an int >= 0, got {max_bytes!r}")
    if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= 1024):
        raise ValueError(f"blocks: expected None or an int 1..1024, got {blocks!r}")
    stride_bytes, page_bytes = pool_page_geometry(k_cache, page_size)
    max_pages = 2**31 - 1 if max_bytes is None else max_bytes // (2 * page_bytes * max(batch, 1))
    if batch == 0 or max_pages == 0:
        return
    if k_cache.dtype == torch.float8_e4m3fn:  # DLPack has no portable float8: hand the kernel the bytes
        k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
    module.l2_prefetch(k_cache, v_cache, kv_indptr, kv_indices, batch, stride_bytes, page_bytes, max_pages,
                       blocks or blocks_per_request(batch), bool(evict_last))


def set_persisting_l2(module, device: torch.device, nbytes: int | None) -> int:
    """Set the device's L2 set-aside for persisting lines to ``nbytes`` (clamped to the card's maximum; None: only
    read it) and return the set-aside in effect. Process-wide: every later kernel's evict_last lines share it."""
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0):
        raise ValueError(f"nbytes: expected None or an int >= 0, got {nbytes!r}")
    with torch.cuda.device(device):
        return int(module.l2_persisting(-1 if nbytes is None else nbytes))
