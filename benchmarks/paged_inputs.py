"""Random paged-KV inputs laid out as a serving engine leaves them: pages scattered at random in a pool.

Shared by the fuzz and sanitizer drivers here and by the kernel tests (tests/kernel/conftest.py puts benchmarks/ on
sys.path)."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class PagedInputs:
    q: torch.Tensor
    k: torch.Tensor  # [num_pages, page_size, hkv, d]
    v: torch.Tensor
    indptr: torch.Tensor
    indices: torch.Tensor
    last_len: torch.Tensor


def make_paged_inputs(lens, *, hq, hkv, d, page_size, dtype, kv_fp8=False, device="cuda", generator: torch.Generator | None = None,
                      spare_pages=3) -> PagedInputs:
    pages_per = [-(-n // page_size) for n in lens]
    total = sum(pages_per) + spare_pages
    perm = torch.randperm(total, generator=generator, device=device)
    indices = perm[: sum(pages_per)].to(torch.int32)
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.tensor(pages_per, dtype=torch.int64), 0).to(torch.int32)
    last = torch.tensor([n - (p - 1) * page_size if p else 0 for n, p in zip(lens, pages_per)], dtype=torch.int32)
    shape = (total, page_size, hkv, d)
    kv_dtype = torch.float8_e4m3fn if kv_fp8 else dtype
    k = torch.randn(shape, generator=generator, device=device, dtype=dtype).to(kv_dtype)
    v = torch.randn(shape, generator=generator, device=device, dtype=dtype).to(kv_dtype)
    q = torch.randn(len(lens), hq, d, generator=generator, device=device, dtype=dtype)
    return PagedInputs(q, k, v, indptr.to(device), indices, last.to(device))
