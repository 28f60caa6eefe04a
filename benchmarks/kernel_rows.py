"""Kernel-benchmark rows: the row schema, the derived numbers (GB/s, % of measured HBM copy bandwidth,
time over the read bound, speedups over each peer and over the best peer) and row merging.
Pure Python (no torch)."""
from __future__ import annotations

import statistics
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from kernel_grid import READ_BOUND, Shape

REL_ERR_TOL = 2e-2

# Fields every row carries (JSON schema of `rows[]`); derived ones are filled by derive().
ROW_FIELDS = (
    "l2", "batch", "ctx", "page_size", "num_qo_heads", "num_kv_heads", "head_dim", "kv_dtype", "q_dtype",
    "kernel", "us", "us_p10", "us_p90", "samples", "layers", "cold_sets", "bytes", "gbps", "pct_hbm",
    "hbm_copy_gbps", "us_over_read_bound", "speedup_over", "best_peer", "best_peer_flagged", "speedup_over_best_peer",
    "prefetch_distance", "max_rel_err", "correct", "skipped", "note",
)

GROUP_FIELDS = ("l2", "batch", "ctx", "page_size", "num_qo_heads", "num_kv_heads", "head_dim", "kv_dtype")


def row_key(r: Dict[str, Any]) -> Tuple:
    return tuple(r.get(f) for f in GROUP_FIELDS) + (r.get("kernel"),)


def group_key(r: Dict[str, Any]) -> Tuple:
    return tuple(r.get(f) for f in GROUP_FIELDS)


def summarize(samples_us: Sequence[float]) -> Dict[str, float]:
    """median and 10th/90th percentiles of per-call microseconds."""
    xs = sorted(samples_us)
    if not xs:
        raise ValueError("no samples")

    def pct(p: float) -> float:
        if len(xs) == 1:
            return xs[0]
        i = p * (len(xs) - 1)
        lo, hi = int(i), min(int(i) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)

    return {"us": statistics.median(xs), "us_p10": pct(0.10), "us_p90": pct(0.90), "samples": len(xs)}


def make_row(shape: Shape, l2: str, kernel: str, *, timing: Optional[Dict[str, float]] = None,
             skipped: Optional[str] = None, layers: Optional[int] = None, cold_sets: Optional[int] = None,
             max_rel_err: Optional[float] = None, prefetch_distance: Optional[int] = None,
             hbm_copy_gbps: Optional[float] = None, note: Optional[str] = None) -> Dict[str, Any]:
    """A row before derive(). A kernel that did not run has skipped = reason and us = None."""
    r: Dict[str, Any] = {f: None for f in ROW_FIELDS}
    r.update(l2=l2, batch=shape.batch, ctx=shape.ctx, page_size=shape.page_size,
             num_qo_heads=shape.num_qo_heads, num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim,
             kv_dtype=shape.kv_dtype, q_dtype=shape.q_dtype, kernel=kernel, layers=layers, cold_sets=cold_sets,
             bytes=shape.pool_bytes if kernel == READ_BOUND else shape.total_bytes, hbm_copy_gbps=hbm_copy_gbps,
             prefetch_distance=prefetch_distance, note=note, speedup_over={})
    if skipped is not None:
        r["skipped"] = str(skipped)[:500] or "skipped"
        return r
    if timing is None:
        raise ValueError("a row that ran needs timing")
    r.update(timing)
    r["max_rel_err"] = max_rel_err
    r["correct"] = None if (max_rel_err is None or kernel == READ_BOUND) else bool(max_rel_err < REL_ERR_TOL)
    return r


def ran(r: Dict[str, Any]) -> bool:
    return not r.get("skipped") and r.get("us") is not None and r["us"] > 0


def is_peer(kernel: str) -> bool:
    return not kernel.startswith("kvprefetch") and kernel != READ_BOUND  # kvprefetch_s<n>: our variants too


def derive(rows: Iterable[Dict[str, Any]], hbm_copy_gbps: Optional[float] = None) -> List[Dict[str, Any]]:
    """Fill gbps, pct_hbm, us_over_read_bound, speedup_over {peer: x}, best_peer, speedup_over_best_peer.

    gbps = bytes / us (bytes: KV + q + o; read_bound: the KV bytes it streams).
    pct_hbm = gbps / (the row's own hbm_copy_gbps, else the argument) * 100.
    speedup_over[p] = us(peer p) / us(row), for every peer row of the same shape and regime that ran.
    best peer = the fastest peer (not kvprefetch*, not read_bound) that ran, flagged by the correctness
    guard or not (best_peer_flagged says so: a peer we call wrongly must not flatter kvprefetch)."""
    rows = [dict(r) for r in rows]
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group_key(r), []).append(r)
    for members in groups.values():
        rb = next((m for m in members if m["kernel"] == READ_BOUND and ran(m)), None)
        peers = [m for m in members if is_peer(m["kernel"]) and ran(m)]
        best = min(peers, key=lambda m: m["us"]) if peers else None
        for r in members:
            r["speedup_over"] = {}
            r["best_peer"] = best["kernel"] if best else None
            r["best_peer_flagged"] = bool(best and best.get("correct") is False)
            r["speedup_over_best_peer"] = None
            r["gbps"] = r["pct_hbm"] = r["us_over_read_bound"] = None
            if not ran(r):
                continue
            r["gbps"] = r["bytes"] / (r["us"] * 1e-6) / 1e9
            hbm = r.get("hbm_copy_gbps") or hbm_copy_gbps
            if hbm:
                r["pct_hbm"] = 100.0 * r["gbps"] / hbm
            if rb is not None:
                r["us_over_read_bound"] = r["us"] / rb["us"]
            if r["kernel"] == READ_BOUND:
                continue
            for p in peers:
                if p is not r:
                    r["speedup_over"][p["kernel"]] = p["us"] / r["us"]
            if best is not None and best is not r:
                r["speedup_over_best_peer"] = best["us"] / r["us"]
    return rows


def geomean(xs: Iterable[float]) -> Optional[float]:
    import math

    xs = [x for x in xs if x and x > 0]
    if not xs:
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def summary_by_regime(rows: Sequence[Dict[str, Any]], kernel: str = "kvprefetch") -> Dict[str, Dict[str, Any]]:
    """Per regime: geomean speedup of `kernel` over the best peer, shape count, wins, and mean % HBM."""
    out: Dict[str, Dict[str, Any]] = {}
    for l2 in sorted({r["l2"] for r in rows}):
        mine = [r for r in rows if r["l2"] == l2 and r["kernel"] == kernel and ran(r)]
        sp = [r["speedup_over_best_peer"] for r in mine if r.get("speedup_over_best_peer")]
        pct = [r["pct_hbm"] for r in mine if r.get("pct_hbm") is not None]
        out[l2] = {
            "shapes": len(mine),
            "geomean_speedup_over_best_peer": geomean(sp),
            "wins": sum(1 for s in sp if s > 1.0),
            "compared": len(sp),
            "mean_pct_hbm": (sum(pct) / len(pct)) if pct else None,
        }
    return out
