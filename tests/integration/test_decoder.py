"""DecodeKernels (integration/decoder.py) with a torch stand-in for the kernel: the page
table it plans must make the kernel attend exactly over the tokens req_to_token names, in
eager mode and through the persistent CUDA-graph buffers."""

import math

import pytest
import torch

from kvp_integration_helpers import dense_reference, make_paged_pool
from kvprefetch.integration.decoder import DecodeKernels

HQ, HK, D = 8, 2, 64


def make_kernels(pool, wrapper_cls, max_batch_size=16, shapes=((HQ, HK, D),), kv_dtype=torch.float32):
    return DecodeKernels(
        shapes=shapes, page_size=pool.page_size, q_dtype=torch.float32, kv_dtype=kv_dtype,
        device=torch.device("cpu"), req_to_token=pool.req_to_token, max_batch_size=max_batch_size,
        prefetch_distance=3, wrapper_cls=wrapper_cls,
    )


def run(kernels, pool, q, **kw):
    scale = 1 / math.sqrt(D)
    out = kernels.run(q.reshape(q.shape[0], -1), pool.k, pool.v, num_qo_heads=HQ, num_kv_heads=HK, head_dim=D,
                      sm_scale=scale, **kw)
    return out, dense_reference(pool, q, scale, logits_soft_cap=kw.get("logits_soft_cap", 0.0),
                                k_scale=kw.get("k_scale", 1.0) or 1.0, v_scale=kw.get("v_scale", 1.0) or 1.0)


@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("shared", [0, 1])
def test_eager_decode_matches_dense_attention(fake_wrapper_cls, page_size, shared):
    seq_lens = [1, page_size, page_size + 1, 3 * page_size - 1, 150]
    pool = make_paged_pool(seq_lens, page_size, num_kv_heads=HK, head_dim=D, share_prefix_pages=shared, seed=1)
    kernels = make_kernels(pool, fake_wrapper_cls)
    report = kernels.load()
    assert report.prefetch_distance == 3 and report.seconds >= 0
    (w,) = fake_wrapper_cls.instances
    assert w.loaded and w.page_size == page_size and w.max_batch_size == 16 and w.prefetch_distance == 3
    q = torch.randn(len(seq_lens), HQ, D)
    kernels.plan_eager(pool.req_pool_indices, pool.seq_lens, int(pool.seq_lens.sum()))
    out, ref = run(kernels, pool, q)
    assert out.shape == (len(seq_lens), HQ, D)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_soft_cap_and_kv_scales_are_passed(fake_wrapper_cls):
    pool = make_paged_pool([40, 7], 16, num_kv_heads=HK, head_dim=D)
    kernels = make_kernels(pool, fake_wrapper_cls)
    kernels.load()
    kernels.plan_eager(pool.req_pool_indices, pool.seq_lens, None)  # no host sum: computed
    q = torch.randn(2, HQ, D) * 4
    out, ref = run(kernels, pool, q, logits_soft_cap=5.0, k_scale=0.5, v_scale=2.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out2, _ = run(kernels, pool, q, k_scale=None, v_scale=None)  # layer.k_scale_float None -> 1.0
    _, ref2 = run(kernels, pool, q)
    torch.testing.assert_close(out2, ref2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("page_size", [1, 16])
def test_graph_buffers_are_persistent_and_refreshed(fake_wrapper_cls, page_size):
    """What CUDA-graph replay relies on: every plan_graph plans the SAME tensors (the
    captured addresses) and only their contents change."""
    pool = make_paged_pool([31, 6, 78, 2], page_size, num_kv_heads=HK, head_dim=D, seed=7)
    final_lens = pool.seq_lens.clone()
    pool.seq_lens -= 1  # the step before: every request one token shorter
    kernels = make_kernels(pool, fake_wrapper_cls)
    kernels.load()
    nbytes = kernels.init_graph_buffers(8)
    assert nbytes == 4 * (9 + 8 + 8 * kernels.max_pages_per_req)
    (w,) = fake_wrapper_cls.instances

    # "capture" at padded bs 8: real 4 requests + 4 padding entries (req slot 0, seq_len 1)
    def padded(bs):
        rpi = torch.zeros(8, dtype=torch.int64)
        sl = torch.ones(8, dtype=torch.int64)
        rpi[:bs] = pool.req_pool_indices[:bs]
        sl[:bs] = pool.seq_lens[:bs]
        return rpi, sl

    rpi, sl = padded(4)
    kernels.plan_graph(rpi, sl, 8)
    first = w.plans[-1]
    ptrs = [t.data_ptr() for t in first[:3]]
    assert first[3] == 8

    # "replay" with other contents: same tensors planned, new page table inside
    pool.seq_lens[:] = final_lens
    rpi, sl = padded(4)
    kernels.plan_graph(rpi, sl, 8)
    again = w.plans[-1]
    assert [t.data_ptr() for t in again[:3]] == ptrs
    q = torch.randn(8, HQ, D)
    out = kernels.run(q.reshape(8, -1), pool.k, pool.v, num_qo_heads=HQ, num_kv_heads=HK, head_dim=D,
                      sm_scale=1 / math.sqrt(D))
    ref = dense_reference(pool, q[:4], 1 / math.sqrt(D))
    torch.testing.assert_close(out[:4], ref, rtol=1e-5, atol=1e-5)

    # a smaller captured bucket plans prefixes of the same buffers
    kernels.plan_graph(*padded(4)[0:2], 4)
    small = w.plans[-1]
    assert small[0].data_ptr() == ptrs[0] and small[1].data_ptr() == ptrs[1] and small[3] == 4
    with pytest.raises(RuntimeError):
        kernels.plan_graph(*padded(4), 9)


def test_graph_planning_needs_buffers(fake_wrapper_cls):
    pool = make_paged_pool([3], 1, num_kv_heads=HK, head_dim=D)
    kernels = make_kernels(pool, fake_wrapper_cls)
    kernels.load()
    with pytest.raises(RuntimeError, match="init_graph_buffers"):
        kernels.plan_graph(pool.req_pool_indices, pool.seq_lens, 1)


def test_one_wrapper_per_shape_and_late_shapes(fake_wrapper_cls):
    pool = make_paged_pool([9, 20], 16, num_kv_heads=HK, head_dim=D)
    kernels = make_kernels(pool, fake_wrapper_cls, shapes=[(HQ, HK, D), (HQ, HK, D), (4, 2, 64)])
    kernels.load()
    assert len(fake_wrapper_cls.instances) == 2
    kernels.plan_eager(pool.req_pool_indices, pool.seq_lens, 29)
    assert all(len(w.plans) == 1 for w in fake_wrapper_cls.instances)
    # a shape nobody announced is built on first use and planned with the current batch
    q = torch.randn(2, 2, D)
    out = kernels.run(q.reshape(2, -1), pool.k, pool.v, num_qo_heads=2, num_kv_heads=2, head_dim=D, sm_scale=0.1)
    assert out.shape == (2, 2, D) and len(fake_wrapper_cls.instances) == 3


def test_eager_capacity_grows_and_keeps_old_wrappers(fake_wrapper_cls):
    seq_lens = [5] * 6
    pool = make_paged_pool(seq_lens, 1, num_kv_heads=HK, head_dim=D)
    kernels = make_kernels(pool, fake_wrapper_cls, max_batch_size=4)
    kernels.load()
    old = fake_wrapper_cls.instances[0]
    kernels.plan_eager(pool.req_pool_indices, pool.seq_lens, 30)
    assert kernels.max_batch_size >= 6
    assert kernels.wrappers[(HQ, HK, D)] is not old and old in kernels._retired
    q = torch.randn(6, HQ, D)
    out, ref = run(kernels, pool, q)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_paged_view_is_free():
    pool = make_paged_pool([3], 16, num_kv_heads=HK, head_dim=D)
    kernels = DecodeKernels(shapes=[], page_size=16, q_dtype=torch.float32, kv_dtype=torch.float32,
                            device=torch.device("cpu"), req_to_token=pool.req_to_token, max_batch_size=1)
    v = kernels.paged_view(pool.k)
    assert v.shape == (pool.k.shape[0] // 16, 16, HK, D) and v.data_ptr() == pool.k.data_ptr()
    odd = pool.k[: pool.k.shape[0] - 3]  # a pool whose row count is not page-aligned
    assert kernels.paged_view(odd).shape[0] == odd.shape[0] // 16


def test_load_failure_propagates():
    class Broken:
        def __init__(self, **kw):
            pass

        def load(self):
            raise RuntimeError("no nvcc")

    pool = make_paged_pool([3], 1)
    kernels = DecodeKernels(shapes=[(2, 2, 64)], page_size=1, q_dtype=torch.bfloat16, kv_dtype=torch.bfloat16,
                            device=torch.device("cpu"), req_to_token=pool.req_to_token, max_batch_size=1,
                            wrapper_cls=Broken)
    with pytest.raises(RuntimeError, match="nvcc"):
        kernels.load()


def test_load_report_names_each_module_and_where_it_came_from(fake_wrapper_cls, monkeypatch):
    from kvprefetch.jit_kernels import loader
    from kvprefetch.jit_kernels.jit_spec import make_config, module_name

    cfg = make_config("bf16", False, 64, 0)
    monkeypatch.setitem(loader.module_loads, module_name(cfg),
                        loader.ModuleLoad(module_name(cfg), "prebuilt", 0.25))

    class WithConfig(fake_wrapper_cls):
        config = cfg

    pool = make_paged_pool([5], 16, num_kv_heads=HK, head_dim=D)
    report = make_kernels(pool, WithConfig).load()
    assert report.modules == (f"{module_name(cfg)} (prebuilt, 0.25 s)",)


@pytest.mark.parametrize("pdl", [None, False, True])
def test_pdl_knob_reaches_the_wrapper_only_when_set(pdl):
    seen = []

    class Recorder:
        def __init__(self, **kw):
            seen.append(kw)
            self.prefetch_distance = kw["prefetch_distance"]

        def load(self):
            return self

    pool = make_paged_pool([5], 16, num_kv_heads=HK, head_dim=D, seed=2)
    kernels = DecodeKernels(shapes=[(HQ, HK, D)], page_size=16, q_dtype=torch.float32, kv_dtype=torch.float32,
                            device=torch.device("cpu"), req_to_token=pool.req_to_token, max_batch_size=4, pdl=pdl,
                            wrapper_cls=Recorder)
    kernels._new_wrapper((HQ, HK, D))
    assert seen[0].get("pdl", "unset") == ("unset" if pdl is None else pdl)
