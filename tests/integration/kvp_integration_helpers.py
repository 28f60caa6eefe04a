"""Shared pieces of the integration tests (imported by name; unique to avoid clashes): a torch stand-in for the decode kernel that
implements the kvprefetch.jit_kernels contract, and a random paged KV pool laid out the
way SGLang's paged allocator lays it out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch


class FakeDecodeWrapper:
    """BatchDecodeWithPagedKVCache's contract, computed in float32 torch (CPU or GPU)."""

    instances: List["FakeDecodeWrapper"] = []

    def __init__(self, num_qo_heads, num_kv_heads, head_dim, page_size, q_dtype, kv_dtype, device,
                 max_batch_size=256, prefetch_distance=None, pdl=None):
        self.pdl = pdl
        self.num_qo_heads, self.num_kv_heads, self.head_dim = num_qo_heads, num_kv_heads, head_dim
        self.page_size, self.q_dtype, self.kv_dtype = page_size, q_dtype, kv_dtype
        self.device, self.max_batch_size, self.prefetch_distance = device, max_batch_size, prefetch_distance
        self.loaded = False
        self.plans = []
        FakeDecodeWrapper.instances.append(self)

    def load(self):
        self.loaded = True

    config = None  # a subclass may name a real DecodeConfig, described like the real wrapper does

    def describe_module(self):
        if self.config is None:
            return type(self).__name__
        from kvprefetch.jit_kernels.loader import describe_load

        return describe_load(self.config)

    def plan(self, kv_indptr, kv_indices, kv_last_page_len, batch_size=None):
        assert self.loaded
        assert kv_indptr.dtype == kv_indices.dtype == kv_last_page_len.dtype == torch.int32
        self.plans.append((kv_indptr, kv_indices, kv_last_page_len, batch_size))

    def run(self, q, k_cache, v_cache, *, sm_scale, logits_soft_cap=0.0, k_scale=1.0, v_scale=1.0,
            out=None, lse=None, return_lse=False):
        indptr, indices, last, bs = self.plans[-1]
        B = q.shape[0]
        assert bs is None or bs == B
        P, G = self.page_size, self.num_qo_heads // self.num_kv_heads
        if P == 1:
            assert k_cache.dim() == 3
        else:
            assert k_cache.dim() == 4 and k_cache.shape[1] == P
        res = torch.empty(B, self.num_qo_heads, self.head_dim, dtype=torch.float32, device=q.device)
        for b in range(B):
            pages = indices[int(indptr[b]):int(indptr[b + 1])].long()
            n = int(pages.numel())
            kk = k_cache[pages].float().reshape(n * P, self.num_kv_heads, self.head_dim)
            vv = v_cache[pages].float().reshape(n * P, self.num_kv_heads, self.head_dim)
            ntok = (n - 1) * P + int(last[b])
            kk, vv = kk[:ntok] * k_scale, vv[:ntok] * v_scale
            kk = kk.repeat_interleave(G, dim=1)  # [T, Hq, D]
            vv = vv.repeat_interleave(G, dim=1)
            s = torch.einsum("hd,thd->ht", q[b].float(), kk) * sm_scale
            if logits_soft_cap > 0:
                s = logits_soft_cap * torch.tanh(s / logits_soft_cap)
            res[b] = torch.einsum("ht,thd->hd", torch.softmax(s, dim=-1), vv)
        res = res.to(q.dtype)
        if out is not None:
            out.copy_(res)
            return out
        return res


@dataclass
class PagedPool:
    """A KV pool + req_to_token with SGLang's paged-allocator layout."""

    k: torch.Tensor  # [num_slots, H, D]
    v: torch.Tensor
    req_to_token: torch.Tensor  # [num_req_slots, max_ctx] int32
    req_pool_indices: torch.Tensor  # int64 [B]
    seq_lens: torch.Tensor  # int64 [B]
    page_size: int

    def token_slots(self, b: int) -> torch.Tensor:
        r = int(self.req_pool_indices[b])
        return self.req_to_token[r, : int(self.seq_lens[b])].long()


def make_paged_pool(seq_lens, page_size, num_kv_heads=2, head_dim=64, dtype=torch.float32,
                    max_ctx=None, share_prefix_pages=0, seed=0, device="cpu") -> PagedPool:
    """Requests get whole pages from a shuffled free list (page 0 stays reserved, as in
    SGLang); with share_prefix_pages=n every request starts with the first request's first
    n pages (a radix-cache hit)."""
    g = torch.Generator().manual_seed(seed)
    P = page_size
    pages_needed = [math.ceil(s / P) for s in seq_lens]
    max_ctx = max_ctx or max(max(seq_lens), 1) + 3 * P
    total_pages = sum(pages_needed) + 8
    free = (torch.randperm(total_pages - 1, generator=g) + 1).tolist()
    num_req_slots = len(seq_lens) + 3
    req_to_token = torch.zeros(num_req_slots, max_ctx, dtype=torch.int32)
    req_rows = (torch.randperm(num_req_slots - 1, generator=g)[: len(seq_lens)] + 1).tolist()
    first_pages = None
    for i, (s, npg) in enumerate(zip(seq_lens, pages_needed)):
        pages = [free.pop() for _ in range(npg)]
        if share_prefix_pages and first_pages is not None:
            k = min(share_prefix_pages, npg, len(first_pages))
            pages[:k] = first_pages[:k]
        if first_pages is None:
            first_pages = pages
        t = torch.arange(s)
        slots = torch.tensor(pages, dtype=torch.int64)[t // P] * P + t % P if s else torch.empty(0, dtype=torch.int64)
        req_to_token[req_rows[i], :s] = slots.to(torch.int32)
    num_slots = total_pages * P
    k = torch.randn(num_slots, num_kv_heads, head_dim, generator=g).to(dtype)
    v = torch.randn(num_slots, num_kv_heads, head_dim, generator=g).to(dtype)
    return PagedPool(
        k=k.to(device), v=v.to(device), req_to_token=req_to_token.to(device),
        req_pool_indices=torch.tensor(req_rows, dtype=torch.int64, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device), page_size=P,
    )


def dense_reference(pool: PagedPool, q, sm_scale, logits_soft_cap=0.0, k_scale=1.0, v_scale=1.0):
    """Attention of q[b] over the tokens req_to_token says request b holds (float32)."""
    B, Hq, D = q.shape
    Hk = pool.k.shape[1]
    out = torch.empty(B, Hq, D, dtype=torch.float32, device=q.device)
    kf, vf = pool.k.float(), pool.v.float()  # (fp8 pools: convert first, then gather)
    for b in range(B):
        slots = pool.token_slots(b)
        kk = (kf[slots] * k_scale).repeat_interleave(Hq // Hk, dim=1)
        vv = (vf[slots] * v_scale).repeat_interleave(Hq // Hk, dim=1)
        s = torch.einsum("hd,thd->ht", q[b].float(), kk) * sm_scale
        if logits_soft_cap > 0:
            s = logits_soft_cap * torch.tanh(s / logits_soft_cap)
        out[b] = torch.einsum("ht,thd->hd", torch.softmax(s, -1), vv)
    return out


def is_sm90() -> bool:
    try:
        return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
    except Exception:
        return False


SM90_REASON = "needs an sm_90 GPU (H100/H200) with CUDA"


def cuda_device_count() -> int:
    try:
        return torch.cuda.device_count()
    except Exception:
        return 0
