"""Run one fuzz case on the GPU and judge it against the float64 reference.

The output (and lse) is poisoned with NaN before the launch, so an element the kernel never wrote fails; NaN never
passes. The error is the worst per-request relative L2 error: a long request's output has a small norm (an average
over many random values), and a batch-wide norm would hide an error there behind the short requests.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, Optional

import torch

from fuzz_cases import describe, kv_dtype_name, wrapper_key
from paged_inputs import make_paged_inputs

TOL = {False: 1e-2, True: 3e-2}  # relative error bound: bf16/fp16 KV, fp8 KV
LSE_TOL = 1e-2  # |lse - ref| / max(1, |ref|)
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


class WrapperCache:
    """Loaded wrappers by shape, least recently used dropped past ``size`` (each holds a split workspace)."""

    def __init__(self, size: int = 64, device: str = "cuda"):
        self.size, self.device = size, device
        self._w: "OrderedDict[tuple, Any]" = OrderedDict()

    def get(self, case: Dict[str, Any]):
        from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

        key = wrapper_key(case)
        if key in self._w:
            self._w.move_to_end(key)
            return self._w[key]
        q = DTYPES[case["q_dtype"]]
        w = BatchDecodeWithPagedKVCache(case["hq"], case["hkv"], case["d"], case["page"], q,
                                        torch.float8_e4m3fn if case["fp8"] else q, self.device,
                                        max_batch_size=max(256, len(case["lens"])), prefetch_distance=case["pf"]).load()
        self._w[key] = w
        while len(self._w) > self.size:
            self._w.popitem(last=False)
        return w


def judge(out: torch.Tensor, lse: Optional[torch.Tensor], ref: torch.Tensor, ref_lse: torch.Tensor, fp8: bool,
          lens=None) -> Dict[str, Any]:
    """{ok, err, lse_err, reason}. ``out`` [B, H, D] against ``ref`` (float64); ``lse`` may be None (not asked)."""
    res: Dict[str, Any] = {"ok": True, "err": 0.0, "lse_err": None, "reason": ""}
    if out.isnan().any():
        return {**res, "ok": False, "err": math.nan, "reason": "unwritten or NaN output"}
    if lse is not None and lse.isnan().any():
        return {**res, "ok": False, "err": math.nan, "reason": "unwritten or NaN lse"}
    diff = (out.double() - ref).flatten(1).norm(dim=1)
    norm = ref.flatten(1).norm(dim=1)
    empty = norm == 0  # an empty request: the reference is exactly zero, and so must the output be
    rel = torch.where(empty, diff, diff / norm.clamp_min(1e-30))
    res["err"] = float(rel.max()) if rel.numel() else 0.0
    if not math.isfinite(res["err"]):
        return {**res, "ok": False, "reason": "non-finite output"}
    nonzero_empty = (empty & (diff > 0)).nonzero().flatten().tolist()
    if nonzero_empty:
        res.update(ok=False, reason=f"empty request {nonzero_empty[0]}: output not zero")
    elif res["err"] > TOL[fp8]:
        b = int(rel.argmax())
        where = f" (request {b}" + (f", length {lens[b]})" if lens is not None else ")")
        res.update(ok=False, reason=f"rel err {res['err']:.3e} > {TOL[fp8]:.0e}{where}")
    if lse is not None:
        l, r = lse.double(), ref_lse.to(lse.device)
        both_inf = torch.isinf(l) & torch.isinf(r) & ((l > 0) == (r > 0))
        lerr = torch.where(both_inf, torch.zeros_like(l), (l - r).abs() / r.abs().clamp_min(1.0))
        res["lse_err"] = float(lerr.max()) if lerr.numel() else 0.0
        if not math.isfinite(res["lse_err"]) or res["lse_err"] > LSE_TOL:
            res["ok"] = False
            lse_msg = f"lse err {res['lse_err']:.3e} > {LSE_TOL:.0e}"
            res["reason"] = f"{res['reason']}; {lse_msg}" if res["reason"] else lse_msg
    return res


def _strided_views(q: torch.Tensor, gen: torch.Generator):
    """q and a NaN out as the first hq heads of wider buffers: row strides differ from hq * d."""
    b, hq, d = q.shape
    qbuf = torch.randn(b, hq + 3, d, generator=gen, device=q.device, dtype=q.dtype)
    qbuf[:, :hq] = q
    obuf = torch.full((b, hq + 1, d), math.nan, device=q.device, dtype=q.dtype)
    return qbuf[:, :hq], obuf


def check_case(case: Dict[str, Any], seed: int, wrappers: WrapperCache, device: str = "cuda") -> Dict[str, Any]:
    """Fresh inputs from ``seed``, one launch, the reference; {seed, ok, err, lse_err, reason, desc, kv, d, ...}."""
    from kvprefetch.jit_kernels import paged_decode_reference

    gen = torch.Generator(device).manual_seed(seed)
    q_dtype, lens = DTYPES[case["q_dtype"]], case["lens"]
    inp = make_paged_inputs(lens, hq=case["hq"], hkv=case["hkv"], d=case["d"], page_size=case["page"], dtype=q_dtype,
                            kv_fp8=case["fp8"], device=device, generator=gen)
    w = wrappers.get(case)
    w.plan(inp.indptr, inp.indices, inp.last_len)
    if case["strided"]:
        q, obuf = _strided_views(inp.q, gen)
        out = obuf[:, : case["hq"]]
    else:
        q, obuf = inp.q, None
        out = torch.full_like(q, math.nan)
    lse = torch.full((len(lens), case["hq"]), math.nan, device=device) if case["lse"] else None
    k, v = (inp.k.squeeze(1), inp.v.squeeze(1)) if case["layout3d"] else (inp.k, inp.v)
    w.run(q, k, v, sm_scale=case["sm_scale"], logits_soft_cap=case["cap"], k_scale=case["k_scale"],
          v_scale=case["v_scale"], out=out, lse=lse)
    ref, ref_lse = paged_decode_reference(q, inp.k, inp.v, inp.indptr, inp.indices, inp.last_len,
                                          sm_scale=case["sm_scale"], logits_soft_cap=case["cap"],
                                          k_scale=case["k_scale"], v_scale=case["v_scale"])
    res = judge(out, lse, ref, ref_lse, case["fp8"], lens)
    if obuf is not None and not obuf[:, case["hq"]:].isnan().all():
        res["ok"] = False
        res["reason"] = (res["reason"] + "; " if res["reason"] else "") + "wrote outside out's heads"
    res.update(seed=seed, desc=describe(case), kv=kv_dtype_name(case), d=case["d"],
               num_splits=w.num_splits_for(max(len(lens), 1)), short_splits=w.short_splits_for(max(len(lens), 1)),
               short_chunk=w.short_chunk_for(max(len(lens), 1)),
               module=w.config_for(max(len(lens), 1)).tag)
    return res
