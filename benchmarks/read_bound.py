"""The read bound: one Triton kernel that streams N bytes from HBM and writes one value per block.

Grid = 8 blocks per SM (8 warps each: 64 warps per SM, one full wave on Hopper), each block walks a
grid-stride loop over 16 KiB tiles (int32 words, 128-bit loads) and XOR-reduces them, so the only traffic
is the read itself. Timed like the attention kernels (same layers, same regimes), it is the floor a
decode-attention call reading the same KV bytes can approach."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096          # int32 words per tile (16 KiB)
WARPS = 8
BLOCKS_PER_SM = 8


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _stream_read_kernel(src, out, n_words, n_iters, BLOCK: tl.constexpr, NPROG: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for it in range(0, n_iters):          # grid-stride: tile (it * NPROG + pid)
        offs = (it * NPROG + pid) * BLOCK + tl.arange(0, BLOCK)
        acc = acc ^ tl.load(src + offs, mask=offs < n_words, other=0)
    tl.store(out + pid, tl.reduce(acc, 0, _xor))


class ReadBound:
    """call(i) streams buffers[i] (any dtype, contiguous, byte size a multiple of 4)."""

    def __init__(self, buffers, sm_count: int):
        self.words = [b.reshape(-1).view(torch.int32) for b in buffers]
        self.nprog = BLOCKS_PER_SM * sm_count
        self.out = torch.empty(self.nprog, dtype=torch.int32, device=self.words[0].device)

    def nbytes(self, i: int = 0) -> int:
        return self.words[i].numel() * 4

    def __call__(self, i: int) -> None:
        w = self.words[i]
        n = w.numel()
        n_iters = -(-n // (self.nprog * BLOCK))
        _stream_read_kernel[(self.nprog,)](w, self.out, n, n_iters, BLOCK=BLOCK, NPROG=self.nprog,
                                           num_warps=WARPS)


def self_test(device, sm_count: int) -> None:
    """The kernel's XOR of all words must equal torch's: it reads every word exactly once (odd sizes too)."""
    for n in (BLOCK * BLOCKS_PER_SM * sm_count * 3 + 17, 16 << 20, 1000):
        x = torch.randint(-2**31, 2**31 - 1, (n,), dtype=torch.int32, device=device)
        rb = ReadBound([x], sm_count)
        rb(0)
        if xor_all(rb.out) != xor_all(x):
            raise RuntimeError(f"read_bound kernel self-test failed for {n} words")


def xor_all(x: torch.Tensor) -> int:
    """XOR of all int32 words, on the GPU by pairwise folding."""
    v = x.reshape(-1)
    while v.numel() > 1:
        if v.numel() % 2:
            v = torch.cat([v, torch.zeros(1, dtype=v.dtype, device=v.device)])
        v = torch.bitwise_xor(v[0::2], v[1::2])
    return int(v.item()) if v.numel() else 0
