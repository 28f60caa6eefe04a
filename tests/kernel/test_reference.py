"""The float64 reference against a plain dense-softmax formulation (CPU): soft-cap, fp8 dequant, every page size."""

import math

import pytest
import torch

from kvprefetch.jit_kernels.reference import gather_request_kv, paged_decode_reference

from paged_inputs import make_paged_inputs  # benchmarks/ (tests/kernel/conftest.py puts it on sys.path)


def dense_attention(q, keys, values, sm_scale, cap):
    """Padded dense batch with a length mask: an independent formulation of the same function."""
    batch, hq, d = q.shape
    lmax = max(k.shape[0] for k in keys)
    hkv = keys[0].shape[1]
    kd = torch.zeros(batch, lmax, hkv, d, dtype=torch.float64)
    vd = torch.zeros_like(kd)
    mask = torch.zeros(batch, lmax, dtype=torch.bool)
    for b, (k, v) in enumerate(zip(keys, values)):
        kd[b, : k.shape[0]], vd[b, : k.shape[0]], mask[b, : k.shape[0]] = k, v, True
    kd = kd.repeat_interleave(hq // hkv, dim=2)
    vd = vd.repeat_interleave(hq // hkv, dim=2)
    logits = torch.einsum("bhd,blhd->bhl", q.double(), kd) * sm_scale
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    logits = logits.masked_fill(~mask[:, None, :], -math.inf)
    return torch.einsum("bhl,blhd->bhd", torch.softmax(logits, -1), vd), torch.logsumexp(logits, -1)


@pytest.mark.parametrize("page_size", [1, 8, 16, 32, 64, 128])
@pytest.mark.parametrize("cap,fp8", [(0.0, False), (30.0, False), (0.0, True)])
def test_reference_matches_dense(page_size, cap, fp8):
    g = torch.Generator().manual_seed(page_size * 7 + int(cap) + fp8)
    lens = [1, page_size, page_size + 1, 3 * page_size - 1, 37]
    inp = make_paged_inputs(lens, hq=8, hkv=2, d=64, page_size=page_size, dtype=torch.bfloat16,
                            kv_fp8=fp8, device="cpu", generator=g)
    k_scale, v_scale = (0.5, 2.0) if fp8 else (1.0, 1.0)
    out, lse = paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len,
                                      sm_scale=0.125, logits_soft_cap=cap, k_scale=k_scale, v_scale=v_scale)
    keys = [gather_request_kv(inp.k, inp.indptr, inp.indices, inp.last_len, b).double() * k_scale for b in range(len(lens))]
    vals = [gather_request_kv(inp.v, inp.indptr, inp.indices, inp.last_len, b).double() * v_scale for b in range(len(lens))]
    for b, n in enumerate(lens):
        assert keys[b].shape[0] == n
    dout, dlse = dense_attention(inp.q, keys, vals, 0.125, cap)
    assert torch.allclose(out, dout, rtol=1e-10, atol=1e-10)
    assert torch.allclose(lse, dlse, rtol=1e-10, atol=1e-10)


def test_gather_follows_scattered_pages():
    k = torch.arange(5 * 4 * 1 * 1, dtype=torch.float32).view(5, 4, 1, 1)  # 5 pages of 4 tokens
    indptr = torch.tensor([0, 2], dtype=torch.int32)
    indices = torch.tensor([3, 1], dtype=torch.int32)
    rows = gather_request_kv(k, indptr, indices, torch.tensor([2], dtype=torch.int32), 0)
    assert rows.flatten().tolist() == [12, 13, 14, 15, 4, 5]
