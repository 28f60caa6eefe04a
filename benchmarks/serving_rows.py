"""Serving-benchmark plan and rows: workloads, which (model, backend) servers and points to run (shards,
resume), how per-repeat results of SGLang's bench_serving become one row, speedups, a time estimate.
Pure Python (no torch, no sglang)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

MODELS = ("llama-3.1-8b", "llama-3.2-1b")
BACKENDS = ("kvprefetch", "fa3", "flashinfer", "triton")
# (input_len, output_len, max_concurrency)
WORKLOADS: Tuple[Tuple[int, int, int], ...] = (
    (8192, 256, 1), (8192, 256, 8), (16384, 256, 1), (16384, 256, 8), (1024, 128, 64),
)
MIN_PROMPTS = 16
# The larger sweep (serving_bench --large): the Qwen2.5-7B shape too, 32K inputs, and every prompt in flight at
# once ("unbounded": max_concurrency 0 here, sent as --max-concurrency = the prompt count).
LARGE_MODELS = ("llama-3.1-8b", "qwen2.5-7b")
LARGE_WORKLOADS: Tuple[Tuple[int, int, int], ...] = ((32768, 256, 1), (32768, 256, 8), (1024, 128, 0))
UNBOUNDED = 0
UNBOUNDED_PROMPTS = 256

POINT_FIELDS = ("model", "backend", "page_size", "kv_dtype", "input_len", "output_len", "max_concurrency")
ROW_FIELDS = POINT_FIELDS + (
    "num_prompts", "repeats", "output_tok_s", "output_tok_s_min", "output_tok_s_max", "tpot_ms_p50", "tpot_ms_p99",
    "ttft_ms_p50", "itl_ms_p50", "tpot_spread", "output_tok_s_spread", "completed", "runs", "attention_backend",
    "speedup_vs_fa3", "best_other", "speedup_vs_best_other", "beyond_spread", "skipped", "note",
)


@dataclass(frozen=True)
class Workload:
    input_len: int
    output_len: int
    max_concurrency: int

    def label(self) -> str:
        conc = "unbounded" if self.max_concurrency == UNBOUNDED else self.max_concurrency
        return f"{_tok(self.input_len)} in / {_tok(self.output_len)} out, conc {conc}"


def _tok(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def parse_workloads(spec: Optional[str], default=WORKLOADS) -> List[Workload]:
    """'8192:256:1,1024:128:64' (also '8K:256:1'; concurrency 'U': unbounded) -> workloads; None -> ``default``."""
    if not spec:
        return [Workload(*w) for w in default]
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        fields = part.split(":")
        if len(fields) != 3:
            raise ValueError(f"workload {part!r}: expected INPUT:OUTPUT:CONCURRENCY")
        vals = []
        unbounded = fields[2].strip().upper() == "U"
        for f in fields[:2] + ([] if unbounded else fields[2:]):
            f = f.strip().upper()
            mult = 1024 if f.endswith("K") else 1
            vals.append(int(f[:-1] if mult > 1 else f) * mult)
        if min(vals) <= 0:
            raise ValueError(f"workload {part!r}: values must be positive")
        out.append(Workload(*vals, UNBOUNDED) if unbounded else Workload(*vals))
    return out


def num_prompts_for(w: Workload, override: Optional[int] = None) -> int:
    """At least MIN_PROMPTS, and at least two full waves of the concurrency."""
    if override:
        return max(override, 1)
    if w.max_concurrency == UNBOUNDED:
        return UNBOUNDED_PROMPTS
    return max(MIN_PROMPTS, 2 * w.max_concurrency)


def kv_dtype_label(kv_cache_dtype: str) -> str:
    return {"auto": "bf16", "bfloat16": "bf16", "fp8_e4m3": "fp8_e4m3"}.get(kv_cache_dtype, kv_cache_dtype)


def point_key(r: Dict[str, Any]) -> Tuple:
    return tuple(r.get(f) for f in POINT_FIELDS)


@dataclass(frozen=True)
class Server:
    model: str
    backend: str
    page_size: int
    kv_dtype: str

    def point(self, w: Workload) -> Dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "page_size": self.page_size, "kv_dtype": self.kv_dtype,
                "input_len": w.input_len, "output_len": w.output_len, "max_concurrency": w.max_concurrency}


def plan_servers(models: Sequence[str], backends: Sequence[str], page_size: int, kv_dtype: str,
                 shard: Tuple[int, int] = (0, 1)) -> List[Server]:
    """Servers (model x backend) in a fixed order; shard (i, n) keeps every n-th starting at i."""
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    all_servers = [Server(m, b, page_size, kv_dtype) for m in models for b in backends]
    return [s for k, s in enumerate(all_servers) if k % n == i]


def parse_shard(spec: Optional[str]) -> Tuple[int, int]:
    if not spec:
        return (0, 1)
    a, _, b = spec.partition("/")
    return int(a), int(b)


def done_points(rows: Iterable[Dict[str, Any]]) -> set:
    """Points already measured (rows that ran). Skipped rows are retried."""
    return {point_key(r) for r in rows if not r.get("skipped") and r.get("output_tok_s")}


def pending(server: Server, workloads: Sequence[Workload], done: set) -> List[Workload]:
    return [w for w in workloads if point_key(server.point(w)) not in done]


def _spread(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return 0.0 if xs else None
    med = statistics.median(xs)
    return (max(xs) - min(xs)) / med if med else None


def _median(xs: Sequence[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


RUN_KEYS = ("output_throughput", "median_tpot_ms", "p99_tpot_ms", "median_ttft_ms", "mean_tpot_ms", "completed",
            "duration", "total_output_tokens", "total_input_tokens", "request_throughput", "median_itl_ms")


def make_row(server: Server, w: Workload, num_prompts: int, runs: Sequence[Dict[str, Any]],
             attention_backend: Optional[str] = None, skipped: Optional[str] = None,
             note: Optional[str] = None) -> Dict[str, Any]:
    """One point from its repeats' bench_serving results (the JSON line it writes per run).
    output_tok_s / tpot / ttft: medians over repeats (tpot_ms_p50 = median of the runs' median TPOT,
    tpot_ms_p99 = median of the runs' p99 TPOT); *_spread = (max - min) / median over repeats."""
    r: Dict[str, Any] = {f: None for f in ROW_FIELDS}
    r.update(server.point(w))
    r.update(num_prompts=num_prompts, repeats=len(runs), attention_backend=attention_backend, note=note,
             runs=[{k: run.get(k) for k in RUN_KEYS} for run in runs])
    if skipped is not None:
        r["skipped"] = str(skipped)[:500] or "skipped"
        return r
    if not runs:
        raise ValueError("a row that ran needs at least one run")
    return aggregate(r, runs, num_prompts, note)


def aggregate(r: Dict[str, Any], runs: Sequence[Dict[str, Any]], num_prompts: int,
              note: Optional[str] = None) -> Dict[str, Any]:
    """Fill the row's summary fields from its runs. A run whose median TTFT is 0 had no first-token time
    recorded (seen on repeats 2+ of bench_serving in one process, H100, b06f672): its TPOT then folds the
    prefill in (~+0.8 ms at 8K), so TPOT and TTFT come only from runs with a TTFT; the inter-token latency
    (itl_ms_p50, median of the runs' median ITL) does not depend on it and is taken from every run."""
    timed = [run for run in runs if (run.get("median_ttft_ms") or 0) > 0]
    tok = [run.get("output_throughput") for run in runs]
    tpot = [run.get("median_tpot_ms") for run in timed]
    r.update(
        output_tok_s=_median(tok),
        output_tok_s_min=min(x for x in tok if x is not None) if any(x is not None for x in tok) else None,
        output_tok_s_max=max(x for x in tok if x is not None) if any(x is not None for x in tok) else None,
        tpot_ms_p50=_median(tpot),
        tpot_ms_p99=_median([run.get("p99_tpot_ms") for run in timed]),
        ttft_ms_p50=_median([run.get("median_ttft_ms") for run in timed]),
        itl_ms_p50=_median([run.get("median_itl_ms") for run in runs]),
        tpot_spread=_spread(tpot),
        output_tok_s_spread=_spread(tok),
        completed=min(int(run.get("completed") or 0) for run in runs),
    )
    notes = [note] if note else []
    if len(timed) < len(runs):
        notes.append(f"TPOT/TTFT from {len(timed)} of {len(runs)} runs (no first-token time in the others)")
    if r["completed"] < num_prompts:
        notes.append(f"only {r['completed']}/{num_prompts} requests completed")
    r["note"] = "; ".join(notes) or None
    return r


def derive(rows: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """speedup_vs_fa3 = tok/s / fa3's tok/s; best_other = the fastest OTHER backend on the same
    (model, page, kv dtype, workload); speedup_vs_best_other = tok/s / its tok/s; beyond_spread = whether that
    ratio's distance from 1 exceeds the larger tok/s spread of the two rows (the issue's rule: a difference counts
    only where it exceeds the repeats' spread)."""
    rows = [dict(r) for r in rows]
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        k = tuple(r.get(f) for f in POINT_FIELDS if f != "backend")
        groups.setdefault(k, []).append(r)
    for members in groups.values():
        ok = [m for m in members if not m.get("skipped") and m.get("output_tok_s")]
        fa3 = next((m for m in ok if m["backend"] == "fa3"), None)
        for r in members:
            r["speedup_vs_fa3"] = r["best_other"] = r["speedup_vs_best_other"] = r["beyond_spread"] = None
            if r not in ok:
                continue
            if fa3 is not None and fa3 is not r:
                r["speedup_vs_fa3"] = r["output_tok_s"] / fa3["output_tok_s"]
            others = [m for m in ok if m is not r]
            if others:
                best = max(others, key=lambda m: m["output_tok_s"])
                r["best_other"] = best["backend"]
                r["speedup_vs_best_other"] = r["output_tok_s"] / best["output_tok_s"]
                spreads = [x for x in (r.get("output_tok_s_spread"), best.get("output_tok_s_spread")) if x is not None]
                if spreads:
                    r["beyond_spread"] = abs(r["speedup_vs_best_other"] - 1.0) > max(spreads)
    return rows


# ---- time estimate (H100, dummy weights; rough, for planning a 10-minute job) ------------------------
PREFILL_TOK_S = {"llama-3.1-8b": 11000.0, "llama-3.2-1b": 45000.0, "qwen2.5-7b": 12000.0}  # qwen: estimated
DECODE_STEP_S = {"llama-3.1-8b": 0.0075, "llama-3.2-1b": 0.0030, "qwen2.5-7b": 0.0070}   # at concurrency 1; grows with batch*ctx
SERVER_START_S = {"kvprefetch": 110.0, "fa3": 75.0, "flashinfer": 90.0, "triton": 100.0}
CLIENT_OVERHEAD_S = 3.0


def estimate_point_s(model: str, w: Workload, num_prompts: int, repeats: int) -> float:
    prefill = PREFILL_TOK_S.get(model, 11000.0)
    conc = w.max_concurrency or num_prompts
    step = DECODE_STEP_S.get(model, 0.0075) * (1.0 + 0.04 * conc * w.input_len / 8192)
    waves = -(-num_prompts // conc)
    one = num_prompts * w.input_len / prefill + waves * w.output_len * step
    warm = w.input_len / prefill + w.output_len * step
    return repeats * (one + CLIENT_OVERHEAD_S) + warm


def estimate_server_s(server: Server, workloads: Sequence[Workload], repeats: int,
                      prompts_override: Optional[int] = None) -> float:
    return SERVER_START_S.get(server.backend, 100.0) + 10.0 + sum(
        estimate_point_s(server.model, w, num_prompts_for(w, prompts_override), repeats) for w in workloads)
