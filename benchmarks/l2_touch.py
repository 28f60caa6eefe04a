"""Bring one request's KV pages into L2 ahead of their use: a small Triton kernel that reads every K and V page
named by the page table (loads with an L2 eviction policy, XOR-reduced so nothing is optimised away) and writes
one word per program. With few programs it leaves most SMs to the kernels it runs beside (xlayer_bench.py: the
next layer's KV while this layer's o_proj and MLP stream their weights)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from read_bound import _xor, xor_all

BLOCK = 2048  # int32 words per load (8 KiB)


@triton.jit
def _touch_pages_kernel(k, v, pages, n_pages, words_per_page, out, NPROG: tl.constexpr, BLOCK: tl.constexpr,
                        POLICY: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for j in range(pid, n_pages, NPROG):
        base = tl.load(pages + j).to(tl.int64) * words_per_page
        for w in range(0, words_per_page, BLOCK):
            offs = base + w + tl.arange(0, BLOCK)
            acc = acc ^ tl.load(k + offs, eviction_policy=POLICY) ^ tl.load(v + offs, eviction_policy=POLICY)
    tl.store(out + pid, tl.reduce(acc, 0, _xor))


class PageToucher:
    """call(k, v) reads the pages ``pages`` (int32 page ids, device) of the pools k and v
    ([num_pages, page_size, heads, dim], any dtype) with ``programs`` programs."""

    def __init__(self, pages: torch.Tensor, page_bytes: int, programs: int = 32, policy: str = "evict_last"):
        if page_bytes % (4 * BLOCK):
            raise ValueError(f"page_bytes: expected a multiple of {4 * BLOCK}, got {page_bytes}")
        if policy not in ("evict_last", "evict_first", ""):
            raise ValueError(f"policy: expected 'evict_last', 'evict_first' or '', got {policy!r}")
        self.pages, self.words_per_page, self.programs, self.policy = pages, page_bytes // 4, programs, policy
        self.out = torch.zeros(programs, dtype=torch.int32, device=pages.device)

    def __call__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        kw, vw = k.reshape(-1).view(torch.int32), v.reshape(-1).view(torch.int32)
        _touch_pages_kernel[(self.programs,)](kw, vw, self.pages, self.pages.numel(), self.words_per_page, self.out,
                                              NPROG=self.programs, BLOCK=BLOCK, POLICY=self.policy, num_warps=4)


def self_test(k: torch.Tensor, v: torch.Tensor, pages: torch.Tensor, page_bytes: int) -> None:
    """The programs' XOR over all touched words must equal torch's: every named page is read, K and V."""
    t = PageToucher(pages, page_bytes, programs=7)
    t(k, v)
    words = page_bytes // 4
    kw, vw = (x.reshape(-1).view(torch.int32).reshape(-1, words) for x in (k, v))
    sel = pages.long()
    want = torch.bitwise_xor(kw[sel], vw[sel]).reshape(-1)
    got, exp = xor_all(t.out), xor_all(want)
    if got != exp:
        raise RuntimeError(f"l2_touch self-test: XOR {got} != {exp}")

