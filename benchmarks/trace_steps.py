#!/usr/bin/env python3
"""Where a served decode step's time goes, from a torch-profiler trace of the SGLang scheduler (a Chrome trace,
``*.trace.json[.gz]``, as SGLang's /start_profile writes it).

A decode step is the interval between two CUDA-graph launches on the thread that launches them. Per step:
- the CPU period (median, p10, p90);
- the GPU busy time (union of kernel, memcpy and memset intervals inside the steps' window);
- the GPU step: first to last GPU activity, less idle stretches longer than BUBBLE_US. It is what the step costs the
  GPU with its launch gaps, when the host never makes it wait;
- the GPU time of each kernel, and the launching thread's CPU time per top-level op / runtime call;
- with stacks in the trace, the inclusive time of each Python function.

    python benchmarks/trace_steps.py TRACE [TRACE ...] [--top 25]
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import statistics
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple

GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
# An idle stretch of the GPU longer than this is a host-side bubble between steps; shorter ones are the launch gaps
# inside and between a step's own launches (part of what the backend costs on the GPU).
BUBBLE_US = 20.0
CPU_CATS = ("cpu_op", "cuda_runtime", "cuda_driver", "user_annotation")


def load_events(path: Path) -> List[Dict[str, Any]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    return [e for e in events if e.get("ph") == "X" and "ts" in e and "dur" in e]


def merged(intervals: Iterable[Tuple[float, float]]) -> List[Tuple[float, float]]:
    out: List[Tuple[float, float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def union_length(intervals: Iterable[Tuple[float, float]]) -> float:
    return sum(e - s for s, e in merged(intervals))


def bubbles(busy: Sequence[Tuple[float, float]], longer_than: float = BUBBLE_US) -> float:
    """Idle time between merged busy intervals, counting only the stretches longer than ``longer_than``."""
    return sum(g for g in (b[0] - a[1] for a, b in zip(busy, busy[1:])) if g > longer_than)


def top_level(events: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Events not nested inside another event of the list (same thread assumed)."""
    out, end = [], float("-inf")
    for e in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
        if e["ts"] >= end:
            out.append(e)
            end = e["ts"] + e["dur"]
    return out


def short_py(name: str) -> str:
    """'/x/sglang/srt/a/b.py(12): f' -> 'a/b.py(12): f'."""
    head, sep, func = name.partition(": ")
    parts = head.replace("\\", "/").split("/")
    return "/".join(parts[-2:]) + sep + func


def _p10_p90(xs: Sequence[float]) -> Tuple[float, float]:
    s = sorted(xs)
    return s[len(s) // 10], s[(9 * len(s)) // 10]


def analyze(events: List[Dict[str, Any]], top: int = 25) -> Dict[str, Any]:
    launches = [e for e in events if "GraphLaunch" in e["name"]]
    if len(launches) < 3:
        return {"error": f"{len(launches)} CUDA-graph launches in the trace: no decode steps to measure"}
    thread = collections.Counter((e["pid"], e["tid"]) for e in launches).most_common(1)[0][0]
    starts = sorted(e["ts"] for e in launches if (e["pid"], e["tid"]) == thread)
    t0, t1, steps = starts[0], starts[-1], len(starts) - 1
    periods = [b - a for a, b in zip(starts, starts[1:])]
    window = [e for e in events if t0 <= e["ts"] < t1]
    busy = merged((e["ts"], e["ts"] + e["dur"]) for e in window if e.get("cat") in GPU_CATS)
    gpu = sum(e - s for s, e in busy)
    host_bubbles = bubbles(busy)
    gpu_step = ((busy[-1][1] - busy[0][0]) - host_bubbles) / steps if busy else 0.0
    mine = [e for e in window if (e["pid"], e["tid"]) == thread]
    cpu_top = top_level([e for e in mine if e.get("cat") in CPU_CATS])
    by_op: Dict[str, float] = collections.defaultdict(float)
    for e in cpu_top:
        by_op[e["name"]] += e["dur"]
    kernels: Dict[str, float] = collections.defaultdict(float)
    for e in window:
        if e.get("cat") == "kernel":
            kernels[e["name"][:120]] += e["dur"]
    py: Dict[str, float] = collections.defaultdict(float)
    for e in mine:
        if e.get("cat") == "python_function":
            py[short_py(e["name"])] += e["dur"]

    def per_step(d: Dict[str, float]) -> List[Tuple[str, float]]:
        return [(k, round(v / steps, 2)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "steps": steps,
        "period_us_median": round(statistics.median(periods), 2),
        "period_us_mean": round((t1 - t0) / steps, 2),
        "period_us_p10_p90": [round(q, 2) for q in _p10_p90(periods)],
        "gpu_busy_us_per_step": round(gpu / steps, 2),
        "gpu_idle_fraction": round(1 - gpu / (t1 - t0), 4),
        "gpu_step_us": round(gpu_step, 2),
        "host_bubble_us_per_step": round(host_bubbles / steps, 2),
        "cpu_ops_us_per_step": round(sum(by_op.values()) / steps, 2),
        "top_cpu_ops_us_per_step": per_step(by_op),
        "top_gpu_kernels_us_per_step": per_step(kernels),
        "top_python_us_per_step": per_step(py),
    }


def render(name: str, a: Dict[str, Any]) -> str:
    if "error" in a:
        return f"## {name}\n\n{a['error']}\n"
    lines = [f"## {name}", "",
             f"{a['steps']} steps: period median {a['period_us_median']} µs (mean {a['period_us_mean']}, "
             f"p10/p90 {a['period_us_p10_p90'][0]}/{a['period_us_p10_p90'][1]}), "
             f"GPU busy {a['gpu_busy_us_per_step']} µs per step (idle {100 * a['gpu_idle_fraction']:.1f} %), "
             f"GPU step {a['gpu_step_us']} µs (launch gaps in, host bubbles > {BUBBLE_US:.0f} µs out: "
             f"{a['host_bubble_us_per_step']} µs per step), "
             f"top-level CPU ops {a['cpu_ops_us_per_step']} µs per step", "",
             "| top-level CPU op | µs per step |", "| :--- | ---: |"]
    lines += [f"| `{k}` | {v} |" for k, v in a["top_cpu_ops_us_per_step"]]
    lines += ["", "| GPU kernel | µs per step |", "| :--- | ---: |"]
    lines += [f"| `{k}` | {v} |" for k, v in a["top_gpu_kernels_us_per_step"]]
    if a["top_python_us_per_step"]:
        lines += ["", "| Python function (inclusive) | µs per step |", "| :--- | ---: |"]
        lines += [f"| `{k}` | {v} |" for k, v in a["top_python_us_per_step"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    for t in args.traces:
        print(render(t.name, analyze(load_events(t), args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
