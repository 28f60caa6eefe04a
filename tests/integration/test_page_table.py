"""req_to_token -> paged metadata (integration/page_table.py): the torch builder against a
plain-Python reference, and the Triton kernel against the torch builder (in Triton's CPU
interpreter here; on the GPU in test_gpu_decoder.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from kvp_integration_helpers import make_paged_pool
from kvprefetch.integration.page_table import (
    build_page_table,
    build_page_table_torch,
    max_pages_per_request,
    num_pages_upper_bound,
)

CASES = [
    (1, [1, 2, 7, 300]),
    (16, [1, 15, 16, 17, 33, 200]),
    (64, [64, 1, 129, 500]),
    (128, [1, 127, 128, 129, 1000]),
    (2, [3]),
    (1, [2500, 5, 1030]),  # rows longer than one copy block: several programs share a request
]


def python_reference(pool):
    P = pool.page_size
    indptr, indices, last = [0], [], []
    for b in range(len(pool.seq_lens)):
        s = int(pool.seq_lens[b])
        r = int(pool.req_pool_indices[b])
        n = -(-s // P)
        indices += [int(pool.req_to_token[r, j * P]) // P for j in range(n)]
        indptr.append(indptr[-1] + n)
        last.append(s - (n - 1) * P)
    return indptr, indices, last


def buffers(bs, nnz_cap):
    return (torch.full((bs + 1,), -7, dtype=torch.int32), torch.full((nnz_cap,), -7, dtype=torch.int32),
            torch.full((bs,), -7, dtype=torch.int32))


@pytest.mark.parametrize("page_size,seq_lens", CASES)
@pytest.mark.parametrize("shared", [0, 2])
def test_torch_builder_matches_reference(page_size, seq_lens, shared):
    pool = make_paged_pool(seq_lens, page_size, share_prefix_pages=shared, seed=page_size)
    bs = len(seq_lens)
    bound = num_pages_upper_bound(sum(seq_lens), bs, page_size)
    indptr, indices, last = buffers(bs, bound + 5)
    nnz = build_page_table_torch(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, page_size,
                                 indptr, indices, last)
    ref_indptr, ref_indices, ref_last = python_reference(pool)
    assert nnz == len(ref_indices) <= bound
    assert indptr.tolist() == ref_indptr
    assert indices[:nnz].tolist() == ref_indices
    assert last.tolist() == ref_last
    assert all(1 <= x <= page_size for x in ref_last)
    # every page id points at the page that holds the request's tokens
    for b in range(bs):
        slots = pool.token_slots(b)
        pages = indices[indptr[b]:indptr[b + 1]].long()
        assert torch.equal(slots // page_size, pages.repeat_interleave(page_size)[: len(slots)])


def test_bounds():
    assert num_pages_upper_bound(0, 0, 16) == 0
    assert num_pages_upper_bound(17, 1, 16) == 2
    assert num_pages_upper_bound(32, 2, 16) == 3  # >= 2 (exact) and no sync needed
    assert max_pages_per_request(131072, 1) == 131072
    assert max_pages_per_request(131072, 16) == 8192
    assert max_pages_per_request(100, 64) == 2


def test_dispatch_uses_torch_on_cpu():
    pool = make_paged_pool([5, 9], 4)
    indptr, indices, last = buffers(2, 8)
    build_page_table(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, 4, indptr, indices, last)
    assert indptr.tolist() == python_reference(pool)[0]


def test_empty_batch():
    indptr, indices, last = buffers(0, 1)
    rt = torch.zeros(2, 8, dtype=torch.int32)
    e = torch.zeros(0, dtype=torch.int64)
    assert build_page_table_torch(rt, e, e, 16, indptr, indices, last) == 0
    assert indptr.tolist() == [0]


_INTERPRETER_SCRIPT = r"""
import json, sys, torch
import triton.runtime.interpreter as _ti
# Triton's interpreter turns a program id (a 1-element array) into a loop bound with
# int(array), which NumPy >= 2 refuses; convert the single element instead (test-only).
_orig_patch = _ti._patch_lang_tensor
def _patch(tensor, scope):
    _orig_patch(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
_ti._patch_lang_tensor = _patch
sys.path.insert(0, sys.argv[1])
from kvp_integration_helpers import make_paged_pool
from kvprefetch.integration.page_table import build_page_table_torch, build_page_table_triton
bad = []
for page_size, seq_lens in json.loads(sys.argv[2]):
    pool = make_paged_pool(seq_lens, page_size, share_prefix_pages=1, seed=3)
    bs, cap = len(seq_lens), sum(seq_lens) + 8
    a = [torch.full((bs + 1,), -7, dtype=torch.int32), torch.full((cap,), -7, dtype=torch.int32),
         torch.full((bs,), -7, dtype=torch.int32)]
    b = [t.clone() for t in a]
    nnz = build_page_table_torch(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, page_size, *a)
    build_page_table_triton(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, page_size, *b)
    c = [t.clone().fill_(-7) for t in a]  # one program per request: it walks the whole row
    build_page_table_triton(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, page_size, *c, max_pages=1)
    b = b if all(torch.equal(x, y) for x, y in zip(b, c)) else [t.fill_(-9) for t in b]
    if not (torch.equal(a[0], b[0]) and torch.equal(a[1][:nnz], b[1][:nnz]) and torch.equal(a[2], b[2])):
        bad.append(page_size)
print("BAD", bad)
sys.exit(1 if bad else 0)
"""


def test_triton_kernel_in_cpu_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT, here, json.dumps(CASES)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
