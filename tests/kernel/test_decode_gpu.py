"""The decode kernel against the float64 reference on an sm_90 GPU: fresh random inputs each check, poisoned
outputs, every page size, ragged lengths 1..131072, GQA groups incl. 7, split/unsplit, prefetch on/off, fp8."""

import math
import os
import random

import pytest
import torch

from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache, paged_decode_reference

from .paged_inputs import make_paged_inputs

pytestmark = pytest.mark.gpu

N_FUZZ = int(os.environ.get("KVPREFETCH_GPU_CASES", "500"))
TOL = {False: 1e-2, True: 3e-2}  # relative error bound: bf16/fp16 KV, fp8 KV
_wrappers: dict = {}


def wrapper(hq, hkv, d, page, q_dtype, fp8, pf):
    key = (hq, hkv, d, page, q_dtype, fp8, pf)
    if key not in _wrappers:
        _wrappers[key] = BatchDecodeWithPagedKVCache(
            hq, hkv, d, page, q_dtype, torch.float8_e4m3fn if fp8 else q_dtype, "cuda",
            max_batch_size=256, prefetch_distance=pf).load()
    return _wrappers[key]


def rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check(lens, *, hq, hkv, d, page, q_dtype=torch.bfloat16, fp8=False, pf=2, cap=0.0, seed=0):
    gen = torch.Generator("cuda").manual_seed(seed)
    inp = make_paged_inputs(lens, hq=hq, hkv=hkv, d=d, page_size=page, dtype=q_dtype, kv_fp8=fp8,
                            device="cuda", generator=gen)
    k_scale, v_scale = (random.Random(seed).uniform(0.25, 2.0), random.Random(seed + 1).uniform(0.25, 2.0)) if fp8 else (1.0, 1.0)
    w = wrapper(hq, hkv, d, page, q_dtype, fp8, pf)
    w.plan(inp.indptr, inp.indices, inp.last_len)
    out = torch.full_like(inp.q, float("nan"))
    lse = torch.full((len(lens), hq), float("nan"), device="cuda")
    sm_scale = 1.0 / math.sqrt(d)
    w.run(inp.q, inp.k, inp.v, sm_scale=sm_scale, logits_soft_cap=cap, k_scale=k_scale, v_scale=v_scale,
          out=out, lse=lse)
    ref, ref_lse = paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len,
                                          sm_scale=sm_scale, logits_soft_cap=cap, k_scale=k_scale, v_scale=v_scale)
    desc = f"lens={lens[:8]}{'...' if len(lens) > 8 else ''} hq={hq} hkv={hkv} d={d} page={page} {q_dtype} fp8={fp8} pf={pf} cap={cap} seed={seed}"
    assert not out.isnan().any(), f"unwritten or NaN output: {desc}"
    assert not lse.isnan().any(), f"unwritten or NaN lse: {desc}"
    err = rel_err(out, ref)
    assert err <= TOL[fp8], f"rel err {err:.3e}: {desc}"
    lse_err = ((lse.double() - ref_lse).abs() / ref_lse.abs().clamp_min(1.0)).max().item()
    assert lse_err <= 1e-2, f"lse err {lse_err:.3e}: {desc}"
    return err


def random_case(rng: random.Random):
    d = rng.choice((64, 128, 256))
    group = rng.choice((1, 2, 4, 7, 8, 16))
    hkv = 4 if group == 7 else rng.choice((1, 2, 4, 8))
    page = rng.choice((1, 1, 8, 16, 16, 32, 64, 64, 128))
    if rng.random() < 0.15:  # few requests, long contexts
        lens = [rng.choice((1, page, 131072 // rng.choice((1, 2, 8)), rng.randint(1, 131072))) for _ in range(rng.randint(1, 3))]
    else:
        batch = rng.choice((1, 2, 3, 8, 16, 33, 64, 128, 256))
        maxlen = rng.choice((16, 300, 2048, 8192))
        lens = [max(1, int(math.exp(rng.uniform(0, math.log(maxlen))))) for _ in range(batch)]
        lens = [n if rng.random() > 0.2 else max(page, n - n % page) for n in lens]  # exact page multiples too
    budget = 400_000 // (hkv * d // 64)
    while sum(lens) > budget and len(lens) > 1:
        lens.pop()
    lens[0] = min(lens[0], budget)
    return dict(lens=lens, hq=hkv * group, hkv=hkv, d=d, page=page,
                q_dtype=rng.choice((torch.bfloat16, torch.float16)), fp8=rng.random() < 0.3,
                pf=rng.choice((0, 2)), cap=30.0 if rng.random() < 0.2 else 0.0)


@pytest.mark.parametrize("chunk", range(10))
def test_fuzz_against_float64_reference(chunk):
    """N_FUZZ seeded random configurations, split in 10 chunks; a failure names its seed."""
    worst = 0.0
    for i in range(chunk, N_FUZZ, 10):
        case = random_case(random.Random(i))
        worst = max(worst, check(**case, seed=i))
    print(f"chunk {chunk}: worst rel err {worst:.3e}")


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
