"""Float64 reference for paged decode attention (tests and benchmarks check the kernel against it)."""

from __future__ import annotations

import math

import torch


def gather_request_kv(cache: torch.Tensor, kv_indptr, kv_indices, kv_last_page_len, b: int) -> torch.Tensor:
    """Request ``b``'s rows ``[len, num_kv_heads, head_dim]`` from a ``[num_pages, page_size, H, D]`` cache."""
    if cache.dim() == 3:
        cache = cache.unsqueeze(1)
    page_size = cache.shape[1]
    beg, end = int(kv_indptr[b]), int(kv_indptr[b + 1])
    if end == beg:
        return cache.new_empty(0, *cache.shape[2:])
    pages = kv_indices[beg:end].long().to(cache.device)
    rows = cache[pages].reshape(-1, *cache.shape[2:])
    length = (end - beg - 1) * page_size + int(kv_last_page_len[b])
    return rows[:length]


def paged_decode_reference(q, k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len, *, sm_scale=None,
                           logits_soft_cap: float = 0.0, k_scale: float = 1.0, v_scale: float = 1.0):
    """(out, lse) in float64; ``lse`` is the natural log of the softmax denominator. Runs on q's device."""
    batch, hq, d = q.shape
    hkv = k_cache.shape[-2]
    group = hq // hkv
    sm_scale = 1.0 / math.sqrt(d) if sm_scale is None else sm_scale
    indptr, last = kv_indptr.cpu(), kv_last_page_len.cpu()
    out = torch.zeros(batch, hq, d, dtype=torch.float64, device=q.device)
    lse = torch.full((batch, hq), -math.inf, dtype=torch.float64, device=q.device)
    for b in range(batch):
        k = gather_request_kv(k_cache, indptr, kv_indices, last, b).to(q.device).double() * k_scale
        v = gather_request_kv(v_cache, indptr, kv_indices, last, b).to(q.device).double() * v_scale
        if k.shape[0] == 0:
            continue
        qb = q[b].double().view(hkv, group, d)
        logits = torch.einsum("hgd,lhd->hgl", qb, k) * sm_scale
        if logits_soft_cap > 0:
            logits = logits_soft_cap * torch.tanh(logits / logits_soft_cap)
        lse[b] = torch.logsumexp(logits, dim=-1).reshape(hq)
        out[b] = torch.einsum("hgl,lhd->hgd", torch.softmax(logits, dim=-1), v).reshape(hq, d)
    return out, lse
