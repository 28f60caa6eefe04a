"""GPU: the integration layer with the real kernel, without SGLang.

* the Triton page-table kernel against the torch builder (large batches, long sequences);
* DecodeKernels + kvprefetch.jit_kernels against dense float32 attention (page sizes 1/16/64,
  bf16 and fp8 KV, soft-cap);
* the CUDA-graph contract the SGLang backend relies on: capture run() once, then for each
  "replay" rewrite the persistent page table outside the graph (plan_graph) and replay.

Tolerances: outputs are bf16; two correct computations differ by bf16 rounding of the
output (~4e-3 relative) and of P in the PV product (the kernel's documented 2-4e-3 relative
error vs float64). With unit-normal K/V the outputs are O(1), so atol=rtol=2e-2 has ~5x margin,
while attention over a wrong page / stale page table is off by O(1).
"""

import math

import pytest
import torch

from kvp_integration_helpers import SM90_REASON, dense_reference, is_sm90, make_paged_pool

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not is_sm90(), reason=SM90_REASON)]

DEV = "cuda"


def _kernels(pool, hq, hk, d, kv_dtype=torch.bfloat16, max_batch_size=64):
    from kvprefetch.integration.decoder import DecodeKernels

    k = DecodeKernels(shapes=[(hq, hk, d)], page_size=pool.page_size, q_dtype=torch.bfloat16, kv_dtype=kv_dtype,
                      device=torch.device(DEV, torch.cuda.current_device()), req_to_token=pool.req_to_token,
                      max_batch_size=max_batch_size)
    k.load()
    return k


@pytest.mark.parametrize("page_size", [1, 16, 64, 128])
def test_triton_page_table_matches_torch(page_size):
    from kvprefetch.integration.page_table import build_page_table_torch, build_page_table_triton

    g = torch.Generator().manual_seed(page_size)
    bs = 1500  # > SCAN_BLOCK: several scan iterations per program
    seq_lens = torch.randint(1, 300, (bs,), generator=g).tolist()
    seq_lens[7] = 5000  # > COPY_BLOCK pages at page_size 1
    pool = make_paged_pool(seq_lens, page_size, num_kv_heads=1, head_dim=64, share_prefix_pages=2, device=DEV)
    cap = sum(seq_lens) + 16
    a = [torch.full((bs + 1,), -7, dtype=torch.int32, device=DEV), torch.full((cap,), -7, dtype=torch.int32, device=DEV),
         torch.full((bs,), -7, dtype=torch.int32, device=DEV)]
    b = [t.clone() for t in a]
    nnz = build_page_table_torch(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, page_size, *a)
    build_page_table_triton(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, page_size, *b)
    torch.cuda.synchronize()
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert torch.equal(a[1][:nnz], b[1][:nnz])


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("max_pages", [None, 1, 5000])
def test_triton_page_table_small_batch_long_rows(page_size, max_pages):
    """A few long requests: several programs share each row (as many as max_pages allows), same result."""
    from kvprefetch.integration.page_table import build_page_table_torch, build_page_table_triton

    seq_lens = [20000, 7, 3000]
    pool = make_paged_pool(seq_lens, page_size, num_kv_heads=1, head_dim=64, share_prefix_pages=1, device=DEV)
    cap = sum(seq_lens) + 16
    a = [torch.full((4,), -7, dtype=torch.int32, device=DEV), torch.full((cap,), -7, dtype=torch.int32, device=DEV),
         torch.full((3,), -7, dtype=torch.int32, device=DEV)]
    b = [t.clone() for t in a]
    nnz = build_page_table_torch(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, page_size, *a)
    build_page_table_triton(pool.req_to_token, pool.req_pool_indices, pool.seq_lens, page_size, *b,
                            max_pages=max_pages)
    torch.cuda.synchronize()
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert torch.equal(a[1][:nnz], b[1][:nnz]) and bool((b[1][nnz:] == -7).all())


@pytest.mark.parametrize("page_size", [1, 16, 64])
@pytest.mark.parametrize("kv", ["bf16", "fp8"])
@pytest.mark.parametrize("heads", [(32, 8, 128), (28, 4, 128), (16, 2, 64)])
def test_eager_decode_vs_dense(page_size, kv, heads):
    hq, hk, d = heads
    seq_lens = [1, 33, page_size + 1, 700, 2049]
    pool = make_paged_pool(seq_lens, page_size, num_kv_heads=hk, head_dim=d, dtype=torch.bfloat16,
                           share_prefix_pages=1, device=DEV, seed=11)
    kv_dtype = torch.bfloat16
    k_scale = v_scale = 1.0
    if kv == "fp8":
        kv_dtype, k_scale, v_scale = torch.float8_e4m3fn, 0.5, 1.5
        pool.k, pool.v = pool.k.to(kv_dtype), pool.v.to(kv_dtype)
    kernels = _kernels(pool, hq, hk, d, kv_dtype)
    kernels.plan_eager(pool.req_pool_indices, pool.seq_lens, sum(seq_lens))
    q = torch.randn(len(seq_lens), hq, d, device=DEV).to(torch.bfloat16)
    scale = 1 / math.sqrt(d)
    out = kernels.run(q.view(len(seq_lens), -1), pool.k, pool.v, num_qo_heads=hq, num_kv_heads=hk, head_dim=d,
                      sm_scale=scale, k_scale=k_scale, v_scale=v_scale)
    ref = dense_reference(pool, q, scale, k_scale=k_scale, v_scale=v_scale)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_soft_cap():
    pool = make_paged_pool([100, 900], 16, num_kv_heads=8, head_dim=128, dtype=torch.bfloat16, device=DEV)
    kernels = _kernels(pool, 32, 8, 128)
    kernels.plan_eager(pool.req_pool_indices, pool.seq_lens, 1000)
    q = (torch.randn(2, 32, 128, device=DEV) * 3).to(torch.bfloat16)
    out = kernels.run(q.view(2, -1), pool.k, pool.v, num_qo_heads=32, num_kv_heads=8, head_dim=128,
                      sm_scale=128 ** -0.5, logits_soft_cap=5.0)
    ref = dense_reference(pool, q, 128 ** -0.5, logits_soft_cap=5.0)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("page_size", [1, 16])
def test_cuda_graph_replay_sees_refreshed_page_table(page_size):
    hq, hk, d = 32, 8, 128
    final = [40, 3, 1200, 64, 257]
    pool = make_paged_pool(final, page_size, num_kv_heads=hk, head_dim=d, dtype=torch.bfloat16, device=DEV, seed=5)
    kernels = _kernels(pool, hq, hk, d)
    kernels.init_graph_buffers(8)
    padded_rpi = torch.zeros(8, dtype=torch.int64, device=DEV)
    padded_len = torch.ones(8, dtype=torch.int64, device=DEV)  # fill value 1 for padded entries
    q = torch.zeros(8, hq * d, dtype=torch.bfloat16, device=DEV)
    scale = d ** -0.5

    def prepare(lens):
        padded_rpi.zero_()
        padded_len.fill_(1)
        padded_rpi[: len(lens)] = pool.req_pool_indices[: len(lens)]
        padded_len[: len(lens)] = torch.tensor(lens, device=DEV)
        kernels.plan_graph(padded_rpi, padded_len, 8)  # outside the graph, like SGLang's out_graph hook

    # capture with the shortest lengths (warm-up run first, as SGLang does)
    prepare([1, 1, 1, 1, 1])
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        kernels.run(q, pool.k, pool.v, num_qo_heads=hq, num_kv_heads=hk, head_dim=d, sm_scale=scale)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernels.run(q, pool.k, pool.v, num_qo_heads=hq, num_kv_heads=hk, head_dim=d, sm_scale=scale)

    for step, grow in enumerate([0, 7, 150]):
        lens = [max(1, x - grow) for x in final] if step < 2 else final
        prepare(lens)
        q.copy_(torch.randn(8, hq * d, device=DEV).to(torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        cur = make_view(pool, lens)
        ref = dense_reference(cur, q[: len(lens)].view(len(lens), hq, d), scale)
        torch.testing.assert_close(out[: len(lens)].view(len(lens), hq, d).float(), ref, rtol=2e-2, atol=2e-2)


def make_view(pool, lens):
    from types import SimpleNamespace

    def token_slots(b):
        return pool.req_to_token[int(pool.req_pool_indices[b]), : lens[b]].long()

    return SimpleNamespace(k=pool.k, v=pool.v, token_slots=token_slots)
