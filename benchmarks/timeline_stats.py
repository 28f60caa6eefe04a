"""Experiment 18's analysis: per-launch phases from the block-timeline records of a `trace=True` decode module.

A record (csrc/paged_decode.cuh, trace_write) is 10 int64 words: six globaltimer stamps in ns (0 block start,
1 request length known, 2 first tile in shared memory, 3 last tile consumed, 4 partial written / split counted,
5 merge written), a packed (smid, kind, active splits, tiles), the block index, and the K pointer of the launch.
Stamps a block never reached repeat the one before. CPU-only, so the tests run it on synthetic records.
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Sequence

HEADER_WORDS, RECORD_WORDS = 16, 10
KINDS = {0: "single", 1: "partial", 2: "merger", 3: "idle", 4: "empty"}
ACTIVE = (0, 1, 2)


def parse(buf: Sequence[int]) -> List[dict]:
    """Records of a trace buffer (word 0 = count; the kernel drops records beyond the buffer's capacity)."""
    n = min(int(buf[0]), (len(buf) - HEADER_WORDS) // RECORD_WORDS)
    out = []
    for i in range(n):
        w = [int(x) for x in buf[HEADER_WORDS + i * RECORD_WORDS: HEADER_WORDS + (i + 1) * RECORD_WORDS]]
        meta = w[6] & ((1 << 64) - 1)
        out.append({"t": w[0:6], "smid": meta & 0xFFFF, "kind": (meta >> 16) & 0xFF, "n_act": (meta >> 24) & 0xFFFF,
                    "ntiles": (meta >> 40) & 0xFFFFFF, "block": w[7], "launch": w[8]})
    return out


def _q(xs: Sequence[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))] if xs else float("nan")


def launches(records: Sequence[dict]) -> List[List[dict]]:
    """Records grouped by launch (K pointer), in start order."""
    by: Dict[int, List[dict]] = {}
    for r in records:
        by.setdefault(r["launch"], []).append(r)
    return sorted(by.values(), key=lambda rs: min(r["t"][0] for r in rs))


def launch_phases(rs: Sequence[dict], prev_end_ns: float | None = None) -> Dict[str, float]:
    """Microseconds from the launch's first block start: when blocks started, got their first tile, finished their
    loop, and when the launch's last write happened; merge = last split counted -> merged output written."""
    t0 = min(r["t"][0] for r in rs)
    end = max(r["t"][5] for r in rs)
    act = [r for r in rs if r["kind"] in ACTIVE]
    us = lambda ns: ns / 1e3  # noqa: E731
    rel = lambda i, sel: [us(r["t"][i] - t0) for r in sel]  # noqa: E731
    per_sm: Dict[int, int] = {}
    for r in act:
        per_sm[r["smid"]] = per_sm.get(r["smid"], 0) + 1
    mergers = [r for r in act if r["kind"] == 2]
    out = {
        "blocks": len(rs), "active": len(act), "idle": sum(r["kind"] == 3 for r in rs),
        "span": us(end - t0),
        "gap_before": us(t0 - prev_end_ns) if prev_end_ns is not None else float("nan"),
        "start_p50": _q(rel(0, rs), 0.5), "start_max": _q(rel(0, rs), 1.0),
        "active_start_max": _q(rel(0, act), 1.0),
        "len_known_p50": _q([us(r["t"][1] - r["t"][0]) for r in act], 0.5),
        "first_tile_p50": _q(rel(2, act), 0.5), "first_tile_max": _q(rel(2, act), 1.0),
        "first_tile_wait_p50": _q([us(r["t"][2] - r["t"][1]) for r in act], 0.5),
        "loop_end_p10": _q(rel(3, act), 0.1), "loop_end_p50": _q(rel(3, act), 0.5),
        "loop_end_max": _q(rel(3, act), 1.0),
        "counted_max": _q(rel(4, act), 1.0),
        "merge_p50": _q([us(r["t"][5] - r["t"][4]) for r in mergers], 0.5),
        "active_per_sm_max": max(per_sm.values()) if per_sm else 0,
        "sms_doubled": sum(n >= 2 for n in per_sm.values()),  # SMs running two or more of the launch's active blocks
        "sms_used": len(per_sm),
    }
    return out


def summarize(records: Sequence[dict]) -> Dict[str, object]:
    """Per-launch phases and their medians over the launches after the first (the first has no predecessor)."""
    ls = launches(records)
    per, prev_end = [], None
    for rs in ls:
        per.append(launch_phases(rs, prev_end))
        prev_end = max(r["t"][5] for r in rs)
    body = per[1:] or per
    keys = per[0].keys() if per else []
    med = {k: statistics.median([p[k] for p in body if p[k] == p[k]] or [float("nan")]) for k in keys}
    stamps = sorted({r["t"][0] for r in records})
    steps = [b - a for a, b in zip(stamps, stamps[1:]) if b > a]
    return {"launches": len(ls), "median": med, "per_launch": per, "timer_step_ns": min(steps) if steps else None}


COLUMNS = ("span", "gap_before", "start_max", "active_start_max", "len_known_p50", "first_tile_p50", "first_tile_max",
           "loop_end_p10", "loop_end_p50", "loop_end_max", "counted_max", "merge_p50")


def markdown(rows: Sequence[dict]) -> str:
    """rows: {shape, us_per_layer, us_per_layer_trace, summary}; one line per shape, medians over launches, µs."""
    head = ["shape", "µs/layer", "µs/layer (trace build)"] + list(COLUMNS) + ["active/SM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["summary"]["median"]
        cells = [r["shape"], f"{r['us_per_layer']:.1f}", f"{r['us_per_layer_trace']:.1f}"]
        cells += [f"{m[c]:.2f}" for c in COLUMNS] + [f"{m['active_per_sm_max']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
