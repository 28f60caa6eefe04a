"""The cross-layer L2 prefetch on the GPU (experiment 39): it runs eagerly and in a replayed graph on every pool
layout without touching the pool or the next attention's result, skips page ids outside the pool, and the
persisting set-aside round-trips."""
import math

import pytest
import torch

from paged_inputs import make_paged_inputs

pytestmark = pytest.mark.gpu


def _wrapper(d, page, kv_fp8):
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    kv = torch.float8_e4m3fn if kv_fp8 else torch.bfloat16
    return BatchDecodeWithPagedKVCache(32, 8, d, page, torch.bfloat16, kv, "cuda").load()


@pytest.mark.parametrize("d,page,kv_fp8", [(128, 1, False), (128, 16, False), (64, 16, False), (128, 16, True)])
@pytest.mark.parametrize("evict_last", [True, False])
def test_prefetch_leaves_pool_and_result_unchanged(d, page, kv_fp8, evict_last):
    w = _wrapper(d, page, kv_fp8)
    gen = torch.Generator("cuda").manual_seed(39 + d + page)
    lens = [1, 300, 5000, 17]
    inp = make_paged_inputs(lens, hq=32, hkv=8, d=d, page_size=page, dtype=torch.bfloat16, kv_fp8=kv_fp8,
                            device="cuda", generator=gen)
    k, v = (t.view(-1, 8, d) for t in (inp.k, inp.v)) if page == 1 else (inp.k, inp.v)
    other_k, other_v = k.clone(), v.clone()  # "the next layer"
    before = [t.view(torch.uint8).clone() for t in (other_k, other_v)]
    w.plan(inp.indptr, inp.indices, inp.last_len)
    kw = dict(sm_scale=1.0 / math.sqrt(d))
    want = w.run(inp.q, k, v, **kw)
    got = torch.full_like(want, float("nan"))

    def step():
        w.prefetch_l2(other_k, other_v, evict_last=evict_last)
        w.prefetch_l2(other_k, other_v, max_bytes=1 << 20, evict_last=evict_last)
        w.run(inp.q, k, v, out=got, **kw)

    step()
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    graph = torch.cuda.CUDAGraph()
    got.fill_(float("nan"))
    with torch.cuda.graph(graph):
        step()
    for _ in range(2):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(got, want)
    for t, b in zip((other_k, other_v), before):
        assert torch.equal(t.view(torch.uint8), b)


def test_page_ids_outside_the_pool_are_skipped():
    w = _wrapper(128, 16, False)
    k = torch.zeros(4, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
    indptr = torch.tensor([0, 3], dtype=torch.int32, device="cuda")
    indices = torch.tensor([1, 4, -7], dtype=torch.int32, device="cuda")  # 4 and -7 are outside
    last = torch.tensor([16], dtype=torch.int32, device="cuda")
    w.plan(indptr, indices, last)
    w.prefetch_l2(k, k.clone())
    torch.cuda.synchronize()


def test_persisting_set_aside_round_trips():
    w = _wrapper(128, 16, False)
    try:
        most = w.set_persisting_l2(1 << 40)
        assert 0 < most <= torch.cuda.get_device_properties(0).L2_cache_size
        assert w.set_persisting_l2(None) == most
    finally:
        assert w.set_persisting_l2(0) == 0


def test_prefetch_needs_a_plan_and_this_ops_pool_shape():
    w = _wrapper(128, 16, False)
    k = torch.zeros(4, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="plan\\(\\) must be called before prefetch_l2"):
        w.prefetch_l2(k, k)
    w.plan(torch.tensor([0, 1], dtype=torch.int32, device="cuda"), torch.tensor([0], dtype=torch.int32, device="cuda"),
           torch.tensor([3], dtype=torch.int32, device="cuda"))
    with pytest.raises(ValueError, match="k_cache: expected shape \\[num_pages, 16, 8, 128\\]"):
        w.prefetch_l2(k[:, :8], k[:, :8])
