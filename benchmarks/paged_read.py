"""The paged read bound: one Triton kernel that reads a batch's K and V through its page table, as a decode kernel
must (indptr -> page ids -> rows), and only XOR-reduces them: no q, no math, no split merge.

Two access patterns over the same bytes (experiment 33):
- per head: one program per (kv head, request, split) reads that head's rows of each page (``head_dim`` elements
  at a stride of ``kv_heads * head_dim``), the pattern of kvprefetch, FA3, FlashInfer and XQA;
- fused: one program per (request, split) reads whole pages (every head of a token is contiguous, a page is one
  contiguous block), the pattern a kernel that handles all kv heads of a request in one block would have.
Against ``read_bound`` (the pool streamed contiguously) it separates what the page-table chain and the access
pattern cost from what a kernel's own work costs."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from read_bound import _xor, xor_all

PROGRAMS_PER_SM = 4


@triton.jit
def _paged_read_kernel(k, v, indptr, indices, out, page_words, tok_words, head_words, n_heads, n_splits,
                       PAGE: tl.constexpr, ROW: tl.constexpr):
    h = tl.program_id(0)
    b = tl.program_id(1)
    s = tl.program_id(2)
    beg = tl.load(indptr + b)
    end = tl.load(indptr + b + 1)
    per = (end - beg + n_splits - 1) // n_splits
    p0 = beg + s * per
    p1 = tl.minimum(end, p0 + per)
    offs = tl.arange(0, PAGE)[:, None] * tok_words + tl.arange(0, ROW)[None, :]
    acc = tl.zeros([PAGE, ROW], dtype=tl.int32)
    for j in range(p0, p1):
        base = tl.load(indices + j).to(tl.int64) * page_words + h * head_words
        acc = acc ^ tl.load(k + base + offs) ^ tl.load(v + base + offs)
    tl.store(out + (b * n_heads + h) * n_splits + s, tl.reduce(tl.reduce(acc, 1, _xor), 0, _xor))


class PagedRead:
    """call(layer) reads every page of the batch from ``k(layer)`` / ``v(layer)`` ([pages, page, kv_heads, dim],
    contiguous); ``fused`` picks the access pattern (module docstring)."""

    def __init__(self, k, v, indptr: torch.Tensor, indices: torch.Tensor, batch: int, sm_count: int, fused: bool):
        pages, page, heads, dim = k(0).shape
        tok_bytes = heads * dim * k(0).element_size()
        if (dim * k(0).element_size()) % 4:
            raise ValueError(f"k: expected rows of a multiple of 4 bytes, got head_dim {dim} x {k(0).element_size()} B")
        self.k, self.v, self.indptr, self.indices, self.fused = k, v, indptr, indices, fused
        self.page, self.tok_words = page, tok_bytes // 4
        self.heads = 1 if fused else heads
        self.row = self.tok_words if fused else dim * k(0).element_size() // 4
        self.head_words = 0 if fused else self.row
        pages_per_request = max(1, int(indptr[1] - indptr[0]))
        self.splits = max(1, min(pages_per_request, PROGRAMS_PER_SM * sm_count // (self.heads * batch)))
        self.batch = batch
        self.out = torch.empty(self.heads * batch * self.splits, dtype=torch.int32, device=indices.device)

    def __call__(self, layer: int) -> torch.Tensor:
        kw = self.k(layer).reshape(-1).view(torch.int32)
        vw = self.v(layer).reshape(-1).view(torch.int32)
        _paged_read_kernel[(self.heads, self.batch, self.splits)](
            kw, vw, self.indptr, self.indices, self.out, self.page * self.tok_words, self.tok_words, self.head_words,
            self.heads, self.splits, PAGE=self.page, ROW=self.row, num_warps=8 if self.page * self.row >= 8192 else 4)
        return self.out


def self_test(k, v, indptr: torch.Tensor, indices: torch.Tensor, batch: int, sm_count: int) -> None:
    """Both patterns' XOR over what they read must equal torch's XOR over every page of the batch, K and V: each
    byte of the batch is read exactly once."""
    pages = indices[: int(indptr[batch])].long()
    want = xor_all(torch.bitwise_xor(k(0)[pages].reshape(-1).view(torch.int32),
                                     v(0)[pages].reshape(-1).view(torch.int32)))
    for fused in (False, True):
        got = xor_all(PagedRead(k, v, indptr, indices, batch, sm_count, fused)(0))
        if got != want:
            raise RuntimeError(f"paged_read self-test ({'fused' if fused else 'per head'}): XOR {got} != {want}")
