"""The decode kernel against the float64 reference on an sm_90 GPU: fresh random inputs each check, poisoned
outputs, every page size, ragged lengths 1..131072, GQA groups incl. 7, split/unsplit, prefetch on/off, fp8.

The fuzz's case generator and checker are benchmarks/fuzz_cases.py and fuzz_check.py (the GPU host runs the same
cases as `python benchmarks/fuzz_decode.py --cases 2000`); a failing seed reproduces with `--seed N` there."""

import math
import os
import random

import pytest
import torch

from fuzz_cases import describe, random_case  # benchmarks/ (tests/kernel/conftest.py puts it on sys.path)
from fuzz_check import WrapperCache, check_case
from paged_inputs import make_paged_inputs

pytestmark = pytest.mark.gpu

N_FUZZ = int(os.environ.get("KVPREFETCH_GPU_CASES", "500"))
_cache = WrapperCache()


def wrapper(hq, hkv, d, page, q_dtype, fp8, pf):
    q = "bf16" if q_dtype == torch.bfloat16 else "f16"
    return _cache.get(dict(hq=hq, hkv=hkv, d=d, page=page, q_dtype=q, fp8=fp8, pf=pf, lens=[1]))


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(lens, *, hq, hkv, d, page, q_dtype=torch.bfloat16, fp8=False, pf=2, cap=0.0, seed=0):
    """One explicit case through the fuzz's checker (k/v scales drawn from the seed when fp8)."""
    scales = (random.Random(seed).uniform(0.25, 2.0), random.Random(seed + 1).uniform(0.25, 2.0)) if fp8 else (1.0, 1.0)
    case = dict(lens=list(lens), hq=hq, hkv=hkv, d=d, page=page, q_dtype="bf16" if q_dtype == torch.bfloat16 else "f16",
                fp8=fp8, pf=pf, cap=cap, lse=True, k_scale=scales[0], v_scale=scales[1], sm_scale=1.0 / math.sqrt(d),
                layout3d=False, strided=False)
    res = check_case(case, seed, _cache)
    assert res["ok"], f"{res['reason']}: {describe(case)}"
    return res["err"]


@pytest.mark.parametrize("chunk", range(10))
def test_fuzz_against_float64_reference(chunk):
    """N_FUZZ seeded random configurations, split in 10 chunks; a failure names its seed and the repro command."""
    worst: dict = {}
    failures = []
    for seed in range(chunk, N_FUZZ, 10):
        case = random_case(random.Random(seed))
        res = check_case(case, seed, _cache)
        worst[res["kv"]] = max(worst.get(res["kv"], 0.0), res["err"] if res["ok"] else math.inf)
        if not res["ok"]:
            failures.append(f"seed {seed}: {res['reason']}: {res['desc']} "
                            f"(repro: python benchmarks/fuzz_decode.py --seed {seed})")
    print(f"chunk {chunk}: worst rel err " + ", ".join(f"{k} {v:.3e}" for k, v in sorted(worst.items())))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("page", [1, 16, 64])
def test_long_and_ragged(page):
    check([131072], hq=32, hkv=8, d=128, page=page, seed=1)
    check([1, 131072, page, 4097, 2 * page + 1], hq=32, hkv=8, d=128, page=page, seed=2)


@pytest.mark.parametrize("group,hkv", [(1, 8), (4, 8), (7, 4), (8, 8), (16, 2)])
@pytest.mark.parametrize("pf", [0, 2])
def test_groups_and_prefetch(group, hkv, pf):
    check([5, 700, 3000], hq=group * hkv, hkv=hkv, d=128, page=16, pf=pf, seed=group)


def test_token_pool_layout_page1_3d():
    """SGLang's token pool [slots, heads, dim] is the page_size == 1 case, passed with no copy."""
    gen = torch.Generator("cuda").manual_seed(3)
    inp = make_paged_inputs([9, 1000], hq=32, hkv=8, d=128, page_size=1, dtype=torch.bfloat16, device="cuda", generator=gen)
    w = wrapper(32, 8, 128, 1, torch.bfloat16, False, 2)
    w.plan(inp.indptr, inp.indices, inp.last_len)
    out3 = w.run(inp.q, inp.k.squeeze(1), inp.v.squeeze(1), sm_scale=0.1)
    out4 = w.run(inp.q, inp.k, inp.v, sm_scale=0.1)
    assert torch.equal(out3, out4)


def test_cuda_graph_replay_equals_eager():
    gen = torch.Generator("cuda").manual_seed(4)
    page = 16
    inp = make_paged_inputs([300, 5000, 17, 64], hq=32, hkv=8, d=128, page_size=page, dtype=torch.bfloat16,
                            device="cuda", generator=gen, spare_pages=400)
    w = wrapper(32, 8, 128, page, torch.bfloat16, False, 2)
    indptr, indices, last = inp.indptr.clone(), torch.zeros(400, dtype=torch.int32, device="cuda"), inp.last_len.clone()
    indices[: inp.indices.numel()] = inp.indices
    q, out = inp.q.clone(), torch.empty_like(inp.q)
    w.plan(indptr, indices, last)
    w.run(q, inp.k, inp.v, sm_scale=0.08, out=out)  # warm-up outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w.run(q, inp.k, inp.v, sm_scale=0.08, out=out)
    for step in range(3):  # new lengths and pages each step, same batch: what SGLang's replay does
        lens = [1 + 97 * step, 4000 + step, 16 * (step + 1), 3]
        new = make_paged_inputs(lens, hq=32, hkv=8, d=128, page_size=page, dtype=torch.bfloat16, device="cuda",
                                generator=gen)
        pages = new.indices.numel()
        indptr.copy_(new.indptr)
        indices[:pages] = new.indices % inp.k.shape[0]
        last.copy_(new.last_len)
        q.copy_(new.q)
        out.fill_(float("nan"))
        graph.replay()
        eager = w.run(q, inp.k, inp.v, sm_scale=0.08)
        torch.cuda.synchronize()
        assert torch.equal(out, eager), f"replay {step} differs from eager"


def test_matches_flashinfer_decode():
    import flashinfer

    gen = torch.Generator("cuda").manual_seed(5)
    page = 16
    inp = make_paged_inputs([1, 100, 2048, 777], hq=32, hkv=8, d=128, page_size=page, dtype=torch.bfloat16,
                            device="cuda", generator=gen)
    ours = wrapper(32, 8, 128, page, torch.bfloat16, False, 2)
    ours.plan(inp.indptr, inp.indices, inp.last_len)
    out = ours.run(inp.q, inp.k, inp.v)
    for tc in (False, True):
        fi = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"),
                                                           "NHD", use_tensor_cores=tc)
        fi.plan(inp.indptr, inp.indices, inp.last_len, 32, 8, 128, page, q_data_type=torch.bfloat16,
                kv_data_type=torch.bfloat16)
        ref = fi.run(inp.q, (inp.k, inp.v))
        assert rel_err(out, ref.double()) < 1e-2, f"use_tensor_cores={tc}"


def test_empty_batch_returns_without_launch():
    w = wrapper(32, 8, 128, 16, torch.bfloat16, False, 2)
    z = torch.zeros(1, dtype=torch.int32, device="cuda")
    w.plan(z, z, z[:0])
    k = torch.zeros(4, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
    out = w.run(torch.empty(0, 32, 128, dtype=torch.bfloat16, device="cuda"), k, k)
    assert out.shape == (0, 32, 128)


def test_validation_mode_checks_device_tables(monkeypatch):
    monkeypatch.setenv("KVPREFETCH_VALIDATE", "1")
    w = wrapper(32, 8, 128, 16, torch.bfloat16, False, 2)
    t = lambda x: torch.tensor(x, dtype=torch.int32, device="cuda")  # noqa: E731
    with pytest.raises(ValueError, match="non-decreasing"):
        w.plan(t([0, 2, 1]), t([0, 1]), t([1, 1]))
    with pytest.raises(ValueError, match="kv_last_page_len"):
        w.plan(t([0, 1]), t([0]), t([17]))


def test_run_checks_batch_against_plan():
    w = wrapper(32, 8, 128, 16, torch.bfloat16, False, 2)
    t = lambda x: torch.tensor(x, dtype=torch.int32, device="cuda")  # noqa: E731
    w.plan(t([0, 1]), t([0]), t([3]))
    k = torch.zeros(4, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="q: expected shape"):
        w.run(torch.zeros(2, 32, 128, dtype=torch.bfloat16, device="cuda"), k, k)


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graph"])
def test_pdl_variant_sees_the_previous_kernels_writes(graphed):
    """pdl=True may start before the previous kernel in the stream ends; it must still read that kernel's writes
    (here the newest token's K/V row, as SGLang's KV store leaves it) and match the default kernel bit for bit."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    gen = torch.Generator("cuda").manual_seed(5)
    inp = make_paged_inputs([1000, 37, 4096], hq=32, hkv=8, d=128, page_size=16, dtype=torch.bfloat16,
                            device="cuda", generator=gen)
    plain, pdl = (BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cuda", pdl=p).load()
                  for p in (False, True))
    for w in (plain, pdl):
        w.plan(inp.indptr, inp.indices, inp.last_len)
    page, slot = int(inp.indices[int(inp.indptr[1]) - 1]), int(inp.last_len[0]) - 1  # request 0's newest token
    new_k, new_v = (torch.randn(8, 128, device="cuda", dtype=torch.bfloat16, generator=gen) * 4 for _ in range(2))
    out = torch.empty_like(inp.q)

    def step():
        inp.k[page, slot].copy_(new_k)
        inp.v[page, slot].copy_(new_v)
        pdl.run(inp.q, inp.k, inp.v, sm_scale=0.08, out=out)

    inp.k[page, slot].zero_()
    inp.v[page, slot].zero_()
    if graphed:
        step()  # warm-up outside capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        inp.k[page, slot].zero_()
        inp.v[page, slot].zero_()
        out.fill_(float("nan"))
        graph.replay()
    else:
        step()
    ref = plain.run(inp.q, inp.k, inp.v, sm_scale=0.08)  # the row now holds new_k / new_v
    torch.cuda.synchronize()
    if pdl.num_splits_for(3) == plain.num_splits_for(3):  # same split plan: the same sums in the same order
        assert torch.equal(out, ref)
    else:  # occupancy differs, so the splits do; a stale row (zeros, not the x4 new one) would be far off
        assert rel_err(out, ref.double()) < 1e-3


@pytest.mark.parametrize("d,page", [(64, 16), (128, 1), (128, 16), (256, 16)])
def test_f16_math_variant_against_reference(d, page):
    """f16_math=True (fp8 KV, bf16 q) runs both mma in fp16: against the float64 reference it is at least as close as
    the bf16-mma fp8 path (same inputs, same bound), large q entries included; NaN never passes."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    gen = torch.Generator("cuda").manual_seed(100 + d + page)
    inp = make_paged_inputs([1, 77, 1000, 5000], hq=32, hkv=8, d=d, page_size=page, dtype=torch.bfloat16,
                            kv_fp8=True, device="cuda", generator=gen)
    inp.q[0, 0, :4] = torch.tensor([300.0, -300.0, 1e-3, -1e-3], dtype=torch.bfloat16)  # beyond bf16's usual q range
    kw = dict(sm_scale=1.0 / math.sqrt(d), k_scale=0.5, v_scale=1.5)
    _assert_variant_as_close_as_default(inp, d, page, torch.float8_e4m3fn, kw, dict(f16_math=True), 1e-2,
                                        base=dict(f16_math=False))  # the default at head_dim 128 (experiment 26)
    w = BatchDecodeWithPagedKVCache(32, 8, d, page, torch.bfloat16, torch.float8_e4m3fn, "cuda", f16_math=True).load()
    w.plan(inp.indptr, inp.indices, inp.last_len)
    f16 = torch.empty_like(inp.q)
    inp.q[1, 0, 0] = float("nan")  # a NaN in q is not saturated away: it reaches the same outputs as by default
    w.run(inp.q, inp.k, inp.v, out=f16, **kw)
    plain = BatchDecodeWithPagedKVCache(32, 8, d, page, torch.bfloat16, torch.float8_e4m3fn, "cuda",
                                        f16_math=False).load()
    plain.plan(inp.indptr, inp.indices, inp.last_len)
    default = plain.run(inp.q, inp.k, inp.v, **kw)
    torch.cuda.synchronize()
    assert f16[1, 0].isnan().all() and torch.equal(f16.isnan(), default.isnan())


@pytest.mark.parametrize("kv_fp8,f16,d,page", [(False, False, 128, 16), (False, False, 64, 1), (True, False, 128, 1),
                                               (True, True, 128, 16), (True, True, 64, 16)])
def test_lazy_rescale_variant_against_reference(kv_fp8, f16, d, page):
    """lazy_rescale=True keeps a row's reference max until a tile's max exceeds it by > 2^8: against the float64
    reference it is as close as the default kernel, on inputs whose late tokens score far higher (so the rescale path
    runs mid-sequence, not only at the first tile); NaN never passes."""
    gen = torch.Generator("cuda").manual_seed(200 + d + page + kv_fp8 + f16)
    inp = make_paged_inputs([1, 77, 1000, 5000], hq=32, hkv=8, d=d, page_size=page, dtype=torch.bfloat16,
                            kv_fp8=kv_fp8, device="cuda", generator=gen)
    for b in range(4):  # the last quarter of each request's pages: K x 6, a jump far beyond the slack
        pages = inp.indices[int(inp.indptr[b]):int(inp.indptr[b + 1])].long()
        late = pages[len(pages) * 3 // 4:]
        inp.k[late] = (inp.k[late].float() * 6).to(inp.k.dtype)
    kv = torch.float8_e4m3fn if kv_fp8 else torch.bfloat16
    kw = dict(sm_scale=1.0 / math.sqrt(d), k_scale=0.5 if kv_fp8 else 1.0, v_scale=1.5 if kv_fp8 else 1.0)
    _assert_variant_as_close_as_default(inp, d, page, kv, kw, dict(lazy_rescale=True), 3e-2 if kv_fp8 else 1e-2,
                                        base=dict(f16_math=f16, lazy_rescale=False))  # off: the default has it at d 64


def _assert_variant_as_close_as_default(inp, d, page, kv, kw, variant, bound, base=None, ratio=1.5):
    """The variant (``base`` + ``variant`` settings) against the float64 reference: within ``bound`` and within
    ``ratio`` x the ``base`` kernel's error on every request (a long request's small-norm output must not hide); no
    NaN."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache, paged_decode_reference

    ref, _ = paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len, **kw)
    outs = []
    for settings in (base or {}, {**(base or {}), **variant}):
        w = BatchDecodeWithPagedKVCache(32, 8, d, page, torch.bfloat16, kv, "cuda", **settings).load()
        w.plan(inp.indptr, inp.indices, inp.last_len)
        outs.append(w.run(inp.q, inp.k, inp.v, out=torch.full_like(inp.q, float("nan")), **kw))
    torch.cuda.synchronize()
    default, out = outs
    assert not out.isnan().any()
    for b in range(out.shape[0]):
        assert rel_err(out[b], ref[b]) < bound, (b, rel_err(out[b], ref[b]))
        assert rel_err(out[b], ref[b]) <= ratio * rel_err(default[b], ref[b]) + 1e-4, b


@pytest.mark.parametrize("d,page", [(64, 16), (128, 1), (128, 16), (256, 16)])
def test_fp8_q_variant_against_reference_of_rounded_q(d, page):
    """fp8_q=True rounds q to e4m3 and runs Q K^T on e4m3 tensor cores: against the float64 reference computed from
    the same rounded q it is as close as the default fp8 path is to its own reference; NaN never passes."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache, paged_decode_reference

    gen = torch.Generator("cuda").manual_seed(d + page)
    inp = make_paged_inputs([1, 77, 1000, 5000], hq=32, hkv=8, d=d, page_size=page, dtype=torch.bfloat16,
                            kv_fp8=True, device="cuda", generator=gen)
    w = BatchDecodeWithPagedKVCache(32, 8, d, page, torch.bfloat16, torch.float8_e4m3fn, "cuda", fp8_q=True).load()
    w.plan(inp.indptr, inp.indices, inp.last_len)
    out = torch.full_like(inp.q, float("nan"))
    w.run(inp.q, inp.k, inp.v, sm_scale=1.0 / math.sqrt(d), k_scale=0.5, v_scale=1.5, out=out)
    q8 = inp.q.to(torch.float8_e4m3fn).to(torch.bfloat16)
    ref, _ = paged_decode_reference(q8, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len,
                                    sm_scale=1.0 / math.sqrt(d), k_scale=0.5, v_scale=1.5)
    torch.cuda.synchronize()
    assert not out.isnan().any()
    for b in range(out.shape[0]):  # per request: a long request's small-norm output must not hide behind others
        assert rel_err(out[b], ref[b]) < 1e-2, (b, rel_err(out[b], ref[b]))


def test_trace_variant_records_every_block():
    """trace=True (experiment 18) computes the same output as the default module, bit for bit, and with a buffer
    set appends one record per block of the grid: the active splits' stamps in order, the idle ones marked idle."""
    import timeline_stats as ts
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    gen = torch.Generator("cuda").manual_seed(18)
    inp = make_paged_inputs([1, 77, 1000, 5000], hq=32, hkv=8, d=128, page_size=16, dtype=torch.bfloat16,
                            device="cuda", generator=gen)
    outs, w = [], None
    for trace in (False, True):
        w = BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cuda", trace=trace).load()
        w.plan(inp.indptr, inp.indices, inp.last_len)
        if trace:
            buf = torch.zeros(ts.HEADER_WORDS + ts.RECORD_WORDS * 4096, dtype=torch.int64, device="cuda")
            w.set_trace(buf)
        outs.append(w.run(inp.q, inp.k, inp.v, out=torch.full_like(inp.q, float("nan"))))
    w.set_trace(None)
    torch.cuda.synchronize()
    assert torch.equal(outs[0], outs[1])
    recs = ts.parse(buf.cpu().tolist())
    assert len(recs) == 4 * 8 * w.num_splits_for(4)
    for r in recs:
        assert r["t"] == sorted(r["t"]) and r["kind"] in ts.KINDS
    assert {r["kind"] for r in recs} >= {0, 1, 2, 3}  # the 1-token request is single, the 5000-token one merges
    with pytest.raises(ValueError, match="trace=True"):
        BatchDecodeWithPagedKVCache(32, 8, 128, 16, torch.bfloat16, torch.bfloat16, "cuda").set_trace(None)


@pytest.mark.parametrize("hq,hkv,d,kv_fp8", [(32, 8, 128, False), (32, 2, 128, False), (16, 1, 256, False),
                                             (16, 1, 64, True)])
def test_many_split_merge_against_reference(hq, hkv, d, kv_fp8):
    """Long requests split many ways (up to 132 splits at group 16): the last split's merge against the float64
    reference, output and lse; both are poisoned first, so an unwritten row fails."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache, paged_decode_reference

    gen = torch.Generator("cuda").manual_seed(19 + hq + hkv + d)
    inp = make_paged_inputs([20000, 3, 9000], hq=hq, hkv=hkv, d=d, page_size=16, dtype=torch.bfloat16,
                            kv_fp8=kv_fp8, device="cuda", generator=gen)
    kv = torch.float8_e4m3fn if kv_fp8 else torch.bfloat16
    ref, ref_lse = paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len)
    w = BatchDecodeWithPagedKVCache(hq, hkv, d, 16, torch.bfloat16, kv, "cuda").load()
    assert w.num_splits_for(3) > 8
    w.plan(inp.indptr, inp.indices, inp.last_len)
    out, lse = w.run(inp.q, inp.k, inp.v, out=torch.full_like(inp.q, float("nan")),
                     lse=torch.full((3, hq), float("nan"), device="cuda"), return_lse=True)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert rel_err(out, ref) < (3e-2 if kv_fp8 else 1e-2)
    assert (lse.double() - ref_lse).abs().max().item() < 1e-3


@pytest.mark.parametrize("pdl", [True, False])
@pytest.mark.parametrize("page", [1, 16])
def test_batch1_short_plan_against_reference(pdl, page):
    """Experiment 56: batch 1's few-K-token requests on fewer, longer splits (16-bit KV at head_dim 128 on an H200;
    the planner's elsewhere), lengths on both sides of each launch's threshold, output and lse against the float64
    reference, both poisoned first."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache, paged_decode_reference
    from kvprefetch.jit_kernels.batch1_plan import batch1_short_plan

    w = BatchDecodeWithPagedKVCache(32, 8, 128, page, torch.bfloat16, torch.bfloat16, "cuda", pdl=pdl).load()
    props = torch.cuda.get_device_properties(0)
    assert w.batch1_short == batch1_short_plan(False, 128, 8, pdl, props.name, props.multi_processor_count)
    gen = torch.Generator("cuda").manual_seed(56 + page + pdl)
    for n in (3000, 4096, 4224, 4300, 4580, 4620, 8192):
        inp = make_paged_inputs([n], hq=32, hkv=8, d=128, page_size=page, dtype=torch.bfloat16, kv_fp8=False,
                                device="cuda", generator=gen)
        ref, ref_lse = paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len)
        w.plan(inp.indptr, inp.indices, inp.last_len)
        out, lse = w.run(inp.q, inp.k, inp.v, out=torch.full_like(inp.q, float("nan")),
                         lse=torch.full((1, 32), float("nan"), device="cuda"), return_lse=True)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all() and torch.isfinite(lse).all(), n
        assert rel_err(out, ref) < 1e-2, n
        assert (lse.double() - ref_lse).abs().max().item() < 1e-3, n


_ADAPTIVE = dict(early_kv=True, adaptive_release=True)
_BATCH4 = [5000, 1, 700, 12000]


@pytest.mark.parametrize("kv_fp8,d,variant,lens", [
    (False, 128, {}, _BATCH4), (True, 128, dict(two_blocks=True), _BATCH4), (False, 64, dict(two_blocks=True), _BATCH4),
    (True, 128, dict(late_trigger=True), _BATCH4), (False, 64, {}, _BATCH4),
    # experiment 40: batch-1 grids with fewer active blocks than SMs release after the loop, larger ones at the start
    (False, 128, _ADAPTIVE, [900]), (True, 128, _ADAPTIVE, [900]), (False, 64, _ADAPTIVE, [300]),
    (False, 64, _ADAPTIVE, [20000])])
def test_pdl_chain_of_launches_sharing_the_workspace(kv_fp8, d, variant, lens):
    """With PDL every launch lets the next one in at its start (experiment 20): in a graph of back-to-back launches
    where each q is the previous output, sharing one wrapper's partials and split counters, the result equals the
    chain run without PDL bit for bit (same split plan), so no launch reads a predecessor's output or workspace
    early. Also with two blocks per SM (experiment 21), for the modules that would fit three, and with the release
    moved after the main loop (experiment 23), and with the early loads and the adaptive release (experiment 40)."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    gen = torch.Generator("cuda").manual_seed(20 + d + kv_fp8 + len(variant))
    inp = make_paged_inputs(lens, hq=32, hkv=8, d=d, page_size=16, dtype=torch.bfloat16,
                            kv_fp8=kv_fp8, device="cuda", generator=gen)
    kv = torch.float8_e4m3fn if kv_fp8 else torch.bfloat16
    chains = []
    for pdl in (False, True):
        settings = variant if pdl else {k: v for k, v in variant.items() if k == "two_blocks"}
        w = BatchDecodeWithPagedKVCache(32, 8, d, 16, torch.bfloat16, kv, "cuda", pdl=pdl, **settings).load()
        w.plan(inp.indptr, inp.indices, inp.last_len)
        outs = [torch.full_like(inp.q, float("nan")) for _ in range(8)]

        def chain():
            q = inp.q
            for o in outs:
                w.run(q, inp.k, inp.v, sm_scale=0.3, out=o)
                q = o

        chain()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            chain()
        for o in outs:
            o.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        chains.append(torch.stack(outs))
        assert not w._counters.any()  # every split counter reset for the next launch
    assert torch.isfinite(chains[1]).all() and torch.equal(chains[0], chains[1])


@pytest.mark.parametrize("kv_fp8,d", [(False, 64), (True, 128)])
def test_two_blocks_variant_plans_for_two_per_sm(kv_fp8, d):
    """two_blocks=True (experiment 21) pads the launch's shared memory past a third of the SM's: a module that fits
    three blocks per SM reports two, plans its splits for two, and stays as close to the float64 reference as the
    default (with PDL, as the experiment runs it)."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    kv = torch.float8_e4m3fn if kv_fp8 else torch.bfloat16
    plain, two = (BatchDecodeWithPagedKVCache(32, 8, d, 16, torch.bfloat16, kv, "cuda", two_blocks=t).load()
                  for t in (False, True))
    assert plain._module.blocks_per_sm() == 3 and two._module.blocks_per_sm() == 2
    assert two._module.smem_bytes() > plain._module.smem_bytes()
    assert two.num_splits_for(1) == two.short_splits_for(1) < plain.num_splits_for(1)
    gen = torch.Generator("cuda").manual_seed(21 + d)
    inp = make_paged_inputs([1, 77, 1000, 5000], hq=32, hkv=8, d=d, page_size=16, dtype=torch.bfloat16,
                            kv_fp8=kv_fp8, device="cuda", generator=gen)
    kw = dict(sm_scale=1.0 / math.sqrt(d), k_scale=0.5 if kv_fp8 else 1.0, v_scale=1.5 if kv_fp8 else 1.0)
    _assert_variant_as_close_as_default(inp, d, 16, kv, kw, dict(pdl=True, two_blocks=True),
                                        3e-2 if kv_fp8 else 1e-2)


@pytest.mark.parametrize("kv_fp8,d", [(True, 128), (False, 64)])
def test_wide_module_runs_the_batches_that_fill_every_sm(kv_fp8, d):
    """Experiment 28: on an H200 these families run batches past half the deep module's slots on a 3-deep ring that
    fits four blocks per SM, and stay as close to the float64 reference on both sides of the switch; on other cards
    there is one module."""
    w = wrapper(32, 8, d, 16, torch.bfloat16, kv_fp8, 0)
    if "H200" not in torch.cuda.get_device_name():
        assert w.wide_config is None and not w.uses_wide(256)
        return
    first = w.target_blocks // 16 + 1
    assert not w.uses_wide(first - 1) and w.uses_wide(first) and w.config_for(first).stages == 3
    assert w._wide.blocks_per_sm() == 4 and w._module.blocks_per_sm() == 3
    assert w.num_splits_for(first) == w.wide_target_blocks // (first * 8) > w.target_blocks // (first * 8)
    rng = random.Random(28 + d)
    for batch in (first - 1, first, 2 * first):
        lens = [rng.choice((1, 15, 16, 700, 3000, 9000)) for _ in range(batch)]
        assert check(lens, hq=32, hkv=8, d=d, page=16, fp8=kv_fp8, pf=0, seed=batch) < (3e-2 if kv_fp8 else 1e-2)


_MERGE_FAMILIES = [(False, 128, 16), (True, 128, 16), (False, 64, 1), (True, 64, 16), (False, 256, 16)]


@pytest.mark.parametrize("kv_fp8,d,page", _MERGE_FAMILIES)
@pytest.mark.parametrize("splits", [None, 2, 8, 9, 16, 24])
def test_cluster_merge_variant_against_reference(kv_fp8, d, page, splits):
    """cluster_merge=True (experiment 30): the splits of a request merge through the cluster's shared memory where
    the grid is 2..16 splits wide (9: two rounds of the merge's loads), through global memory where it is wider
    (24); ragged requests leave idle splits that exit before the barrier. As close to the float64 reference as the
    default, no NaN, and the global path's counters stay reset."""
    w = _merge_variant_against_reference(kv_fp8, d, page, splits, dict(cluster_merge=True))
    n = w.num_splits_for(6)
    fits = bool(w._module.cluster_fits(n, 8, 6))
    assert fits if 2 <= n <= 8 else not fits if not 2 <= n <= 16 else True  # 9..16: non-portable, card-dependent


@pytest.mark.parametrize("kv_fp8,d,page", _MERGE_FAMILIES)
@pytest.mark.parametrize("splits", [None, 8])
def test_page_prefetch_variant_against_reference(kv_fp8, d, page, splits):
    """page_prefetch=True (experiment 34) only adds L2 prefetches of whole token rows: the same closeness to the
    float64 reference as the default, ragged requests, a graph replay equal to the eager launch."""
    _merge_variant_against_reference(kv_fp8, d, page, splits, dict(page_prefetch=True), replays=2)


@pytest.mark.parametrize("kv_fp8,d,page", [(True, 128, 16), (True, 128, 32), (False, 64, 16), (False, 64, 64),
                                           (True, 128, 1), (False, 128, 16)])
@pytest.mark.parametrize("splits", [None, 8, 24])
def test_tma_variant_against_reference(kv_fp8, d, page, splits):
    """tma=True (experiment 37): K/V tiles as TMA boxes of 16 tokens where rows are 128 bytes and pages hold 16 or more
    (boxes start mid-page at page 32 and 64; rows past a split's end are zeroed, whatever the pool holds there);
    page 1 and 256-byte rows take the cp.async path of the same module. Same closeness to the float64 reference as
    the default, graph replays equal to the eager launch."""
    _merge_variant_against_reference(kv_fp8, d, page, splits, dict(tma=True), replays=2, poison_pool=True)


@pytest.mark.parametrize("kv_fp8,d,page", _MERGE_FAMILIES)
@pytest.mark.parametrize("splits", [None, 8])
def test_pid_ahead_variant_against_reference(kv_fp8, d, page, splits):
    """pid_ahead=True (experiment 44): the main loop's page ids load four iterations ahead; every unowned pool slot
    holds NaN, so a page id used for the wrong tile shows."""
    _merge_variant_against_reference(kv_fp8, d, page, splits, dict(pid_ahead=True), replays=2, poison_pool=True)


@pytest.mark.parametrize("kv_fp8,d,page", [(False, 64, 1), (False, 64, 16), (False, 128, 1), (False, 128, 16),
                                           (False, 256, 16), (True, 64, 16), (True, 128, 1), (True, 128, 16),
                                           (True, 256, 16)])
@pytest.mark.parametrize("splits", [None, 8])
@pytest.mark.parametrize("pdl", [None, False])
def test_swap_ab_variant_against_reference(kv_fp8, d, page, splits, pdl):
    """swap_ab=True (experiments 50, 51): the tokens are the M side of both tensor-core products and q stays in
    registers, 16-bit and fp8 KV (raw e4m3 operands, fp16 mma at head_dim 128); with the H200's early loads and
    launched plainly, NaN in every unowned pool slot, graph replays equal to the eager launch."""
    _merge_variant_against_reference(kv_fp8, d, page, splits, dict(swap_ab=True, pdl=pdl), replays=2,
                                     poison_pool=True)


@pytest.mark.parametrize("hq,hkv,q_dtype", [(8, 8, torch.bfloat16), (16, 8, torch.float16), (28, 4, torch.bfloat16),
                                            (64, 8, torch.float16)])
@pytest.mark.parametrize("page", [1, 16])
@pytest.mark.parametrize("kv_fp8", [False, True])
def test_swap_ab_every_group_against_reference(hq, hkv, q_dtype, page, kv_fp8):
    """The swapped products for GQA groups 1, 2, 7 and 8 (the heads fill 1..8 columns of the 8-wide side), fp16 and
    bf16 q, 16-bit KV at head_dim 64 and fp8 KV at head_dim 128 (experiment 51; fp16 mma with bf16 q, the q type's
    mma with fp16 q), a soft cap, ragged lengths and the twin's batch sizes, against the float64 reference."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache, paged_decode_reference

    d, kv = (128, torch.float8_e4m3fn) if kv_fp8 else (64, q_dtype)
    w = BatchDecodeWithPagedKVCache(hq, hkv, d, page, q_dtype, kv, "cuda", pdl=False, swap_ab=True).load()
    rng = random.Random(50 + hq + page)
    for batch in (1, 3, 40):
        lens = [rng.choice((1, 15, 16, 63, 700, 3000, 9000)) for _ in range(batch)]
        gen = torch.Generator("cuda").manual_seed(batch + hq + page)
        inp = make_paged_inputs(lens, hq=hq, hkv=hkv, d=d, page_size=page, dtype=q_dtype, kv_fp8=kv_fp8,
                                device="cuda", generator=gen)
        _poison_unowned_slots(inp, page)
        kw = dict(sm_scale=1.0 / math.sqrt(d), logits_soft_cap=30.0 if batch == 3 else 0.0,
                  k_scale=0.5 if kv_fp8 else 1.0, v_scale=1.5 if kv_fp8 else 1.0)
        ref, ref_lse = paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len, **kw)
        w.plan(inp.indptr, inp.indices, inp.last_len)
        out, lse = w.run(inp.q, inp.k, inp.v, out=torch.full_like(inp.q, float("nan")),
                         lse=torch.full((batch, hq), float("nan"), device="cuda"), return_lse=True, **kw)
        torch.cuda.synchronize()
        assert not out.isnan().any() and not lse.isnan().any()
        assert max(rel_err(out[b], ref[b]) for b in range(batch)) < (3e-2 if kv_fp8 else 1e-2)
        assert (lse.double() - ref_lse).abs().max().item() < 1e-3


@pytest.mark.parametrize("kv_fp8,d,page", _MERGE_FAMILIES)
@pytest.mark.parametrize("splits", [None, 8])
def test_early_kv_variant_against_reference(kv_fp8, d, page, splits):
    """early_kv=True (experiment 38): the first tiles load before the PDL wait except each request's newest token.
    The newest rows hold NaN until a copy launched just before the kernel writes them (SGLang's KV write), eagerly
    and inside a replayed graph: the output must be the reference's, built from the written rows."""
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache, paged_decode_reference

    from kernel_peers import _fixed_splits

    _merge_variant_against_reference(kv_fp8, d, page, splits, dict(pdl=True, early_kv=True), replays=2)
    cls = _fixed_splits(BatchDecodeWithPagedKVCache, splits) if splits else BatchDecodeWithPagedKVCache
    kv = torch.float8_e4m3fn if kv_fp8 else torch.bfloat16
    w = cls(32, 8, d, page, torch.bfloat16, kv, "cuda", pdl=True, early_kv=True).load()
    lens = [1, 77, 1000, 5000, 3 * page + 1, 20000]
    gen = torch.Generator("cuda").manual_seed(38 + d + page + (splits or 0))
    inp = make_paged_inputs(lens, hq=32, hkv=8, d=d, page_size=page, dtype=torch.bfloat16, kv_fp8=kv_fp8,
                            device="cuda", generator=gen)
    kw = dict(sm_scale=1.0 / math.sqrt(d), k_scale=0.5 if kv_fp8 else 1.0, v_scale=1.5 if kv_fp8 else 1.0)
    ref, _ = paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len, **kw)
    last_page = inp.indices[(inp.indptr[1:] - 1).long()].long()
    slots = last_page * page + (inp.last_len.long() - 1)  # each request's newest token
    views = [t.view(-1, 8, d).view(torch.uint8) if kv_fp8 else t.view(-1, 8, d) for t in (inp.k, inp.v)]
    newest = [v[slots].clone() for v in views]
    nan = torch.full_like(newest[0], 0x7F) if kv_fp8 else torch.full_like(newest[0], float("nan"))

    def step(out):
        for v, rows in zip(views, newest):
            v[slots] = rows  # the write the kernel's PDL wait must see
        w.run(inp.q, inp.k, inp.v, out=out, **kw)

    w.plan(inp.indptr, inp.indices, inp.last_len)
    for v in views:
        v[slots] = nan
    out = torch.full_like(inp.q, float("nan"))
    step(out)
    torch.cuda.synchronize()
    graph, again = torch.cuda.CUDAGraph(), torch.full_like(inp.q, float("nan"))
    with torch.cuda.graph(graph):
        step(again)
    for _ in range(3):
        for v in views:
            v[slots] = nan
        graph.replay()
    torch.cuda.synchronize()
    for o in (out, again):
        assert not o.isnan().any()
        for b in range(len(lens)):
            assert rel_err(o[b], ref[b]) < (3e-2 if kv_fp8 else 1e-2), (b, rel_err(o[b], ref[b]))


def _poison_unowned_slots(inp, page):
    owned = torch.zeros(inp.k.shape[0] * page, dtype=torch.bool, device=inp.k.device)
    lens = (inp.indptr[1:] - inp.indptr[:-1] - 1) * page + inp.last_len
    for b in range(len(lens)):
        pages = inp.indices[inp.indptr[b]:inp.indptr[b + 1]].long()
        slots = (pages[:, None] * page + torch.arange(page, device=pages.device)).flatten()[: int(lens[b])]
        owned[slots] = True
    nan = float("nan")
    for t in (inp.k, inp.v):
        flat = t.view(-1, *t.shape[-2:]) if t.dim() == 4 else t
        if flat.dtype == torch.float8_e4m3fn:
            flat.view(torch.uint8)[~owned] = 0x7F  # e4m3 NaN
        else:
            flat[~owned] = nan


def _merge_variant_against_reference(kv_fp8, d, page, splits, variant, replays=0, poison_pool=False):
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    from kernel_peers import _fixed_splits  # kernel_bench's --splits override

    cls = _fixed_splits(BatchDecodeWithPagedKVCache, splits) if splits else BatchDecodeWithPagedKVCache
    kv = torch.float8_e4m3fn if kv_fp8 else torch.bfloat16
    w = cls(32, 8, d, page, torch.bfloat16, kv, "cuda", **variant).load()
    lens = [1, 77, 1000, 5000, 3 * page + 1, 20000]
    gen = torch.Generator("cuda").manual_seed(30 + d + page + (splits or 0))
    inp = make_paged_inputs(lens, hq=32, hkv=8, d=d, page_size=page, dtype=torch.bfloat16, kv_fp8=kv_fp8,
                            device="cuda", generator=gen)
    if poison_pool:  # every slot no request owns holds NaN: a kernel that lets one into a sum fails
        _poison_unowned_slots(inp, page)
    kw = dict(sm_scale=1.0 / math.sqrt(d), k_scale=0.5 if kv_fp8 else 1.0, v_scale=1.5 if kv_fp8 else 1.0)
    from kvprefetch.jit_kernels import paged_decode_reference

    ref, ref_lse = paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len, **kw)
    w.plan(inp.indptr, inp.indices, inp.last_len)
    out, lse = w.run(inp.q, inp.k, inp.v, out=torch.full_like(inp.q, float("nan")),
                     lse=torch.full((len(lens), 32), float("nan"), device="cuda"), return_lse=True, **kw)
    torch.cuda.synchronize()
    assert not out.isnan().any() and not lse.isnan().any()
    for b in range(len(lens)):
        assert rel_err(out[b], ref[b]) < (3e-2 if kv_fp8 else 1e-2), (b, rel_err(out[b], ref[b]))
    assert (lse.double() - ref_lse).abs().max().item() < 1e-3
    assert not w._counters.any()
    if replays:
        graph, again = torch.cuda.CUDAGraph(), torch.empty_like(out)
        with torch.cuda.graph(graph):
            w.run(inp.q, inp.k, inp.v, out=again, **kw)
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(again, out) and not w._counters.any()
    return w
