"""Serving-soak plan: length buckets, the rounds (one `python -m sglang.benchmark.serving` run each) in a fixed
order, which rounds carry client-side aborts, the bench_serving command line of a round, a time estimate.
Pure Python (no torch, no sglang).

A bucket's lengths come from bench_serving's `random-ids` dataset: input ~ U[max(int(I * r), 1), I] and output
~ U[max(int(O * r), 1), O] for --random-input-len I --random-output-len O --random-range-ratio r (one ratio for
both), ignore_eos on, so a request that is not aborted produces exactly its sampled output length.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import serving_rows as sr

MAX_INPUT_LEN = 32768


@dataclass(frozen=True)
class Bucket:
    name: str
    input_len: int           # --random-input-len (the largest input)
    range_ratio: float       # --random-range-ratio
    output_len: int          # --random-output-len (the largest output)
    concurrency: int         # --max-concurrency
    rounds: int
    prompts: int             # per round
    abort_rounds: Sequence[int] = ()          # round numbers k (0-based) with client-side aborts
    request_rate: Optional[float] = None      # --request-rate for the even-numbered rounds without aborts

    def input_range(self) -> tuple:
        return (max(int(self.input_len * self.range_ratio), 1), self.input_len)

    def output_range(self) -> tuple:
        return (max(int(self.output_len * self.range_ratio), 1), self.output_len)


# Skewed toward short inputs: 2,400 requests, ~3.8M prefill tokens, 16 rounds (6 with aborts).
BUCKETS = (
    Bucket("tiny", 128, 0.0, 64, 64, rounds=5, prompts=220, abort_rounds=(1, 3), request_rate=150.0),
    Bucket("short", 1024, 0.0, 64, 32, rounds=4, prompts=190, abort_rounds=(1,), request_rate=50.0),
    Bucket("mid", 4096, 0.25, 64, 16, rounds=3, prompts=120, abort_rounds=(1,)),
    Bucket("long", 16384, 0.25, 64, 8, rounds=2, prompts=65, abort_rounds=(1,)),
    Bucket("xlong", MAX_INPUT_LEN, 0.5, 64, 4, rounds=2, prompts=25, abort_rounds=(1,)),
)

# Client-side aborts in an abort round: when the server has received this fraction of the round's requests,
# abort "some" (max(1, concurrency // 8) requests in flight, one /abort_request {"rid"} each) or "all"
# (/abort_request {"abort_all": true}).
ABORT_STEPS = ((0.2, "some"), (0.4, "all"), (0.6, "some"), (0.8, "some"))

CLIENT_OVERHEAD_S = 4.0      # bench_serving: dataset, 1 s sleep after warm-up, /server_info
SERVER_STOP_S = 25.0


@dataclass(frozen=True)
class Round:
    id: str
    bucket: str
    kind: str                # "soak" or "warmup"
    num_prompts: int
    input_len: int
    output_len: int
    range_ratio: float
    max_concurrency: int
    request_rate: Optional[float]
    abort: bool
    seed: int

    def input_range(self) -> tuple:
        return (max(int(self.input_len * self.range_ratio), 1), self.input_len)

    def output_range(self) -> tuple:
        return (max(int(self.output_len * self.range_ratio), 1), self.output_len)

    def label(self) -> str:
        (ilo, ihi), (olo, ohi) = self.input_range(), self.output_range()
        rate = f", rate {self.request_rate:g}/s" if self.request_rate else ""
        return (f"{self.id}{' (aborts)' if self.abort else ''}: {self.num_prompts} req, in {ilo}..{ihi}, "
                f"out {olo}..{ohi}, conc {self.max_concurrency}{rate}")


def plan_rounds(buckets: Sequence[Bucket] = BUCKETS, seed: int = 1, scale: float = 1.0) -> List[Round]:
    """Every soak round, interleaved across buckets (round k of each bucket, then k + 1, ...) so any prefix of
    the list mixes lengths. Round i of the list uses seed + i. scale multiplies the prompts per round."""
    out: List[Round] = []
    for k in range(max(b.rounds for b in buckets)):
        for b in buckets:
            if k >= b.rounds:
                continue
            abort = k in b.abort_rounds
            rate = b.request_rate if (b.request_rate and not abort and k % 2 == 0) else None
            out.append(Round(f"{b.name}-{k}", b.name, "soak", max(1, int(round(b.prompts * scale))), b.input_len,
                             b.output_len, b.range_ratio, b.concurrency, rate, abort, seed + len(out)))
    return out


def plan_warmup(buckets: Sequence[Bucket] = BUCKETS, seed: int = 1) -> List[Round]:
    """Before the memory baseline: the longest inputs (the longest bucket at its full length, one wave) and the
    widest decode batch (the shortest bucket, one wave at its concurrency)."""
    longest = max(buckets, key=lambda b: b.input_len)
    widest = max(buckets, key=lambda b: b.concurrency)
    return [
        Round(f"warmup-{longest.name}", longest.name, "warmup", longest.concurrency, longest.input_len, 8, 1.0,
              longest.concurrency, None, False, seed + 100000),
        Round(f"warmup-{widest.name}", widest.name, "warmup", widest.concurrency, widest.input_len,
              widest.output_len, widest.range_ratio, widest.concurrency, None, False, seed + 100001),
    ]


def max_concurrency(rounds: Sequence[Round]) -> int:
    return max([8] + [r.max_concurrency for r in rounds])


def mean_input(r: Round) -> float:
    lo, hi = r.input_range()
    return (lo + hi) / 2


def mean_output(r: Round) -> float:
    lo, hi = r.output_range()
    return (lo + hi) / 2


def estimate_round_s(r: Round, model: str) -> float:
    """Rough H100 time: prefill at the model's serving prefill rate (slower for long inputs: attention grows
    with length), decode waves at the serving decode step (grows with batch x context), arrivals at the
    request rate, plus bench_serving's fixed overhead."""
    prefill = sr.PREFILL_TOK_S.get(model, 11000.0)
    avg_in, avg_out = mean_input(r), mean_output(r)
    prefill_s = r.num_prompts * avg_in * (1.0 + avg_in / MAX_INPUT_LEN) / prefill
    step = sr.DECODE_STEP_S.get(model, 0.0075) * (1.0 + 0.04 * r.max_concurrency * avg_in / 8192)
    decode_s = math.ceil(r.num_prompts / r.max_concurrency) * avg_out * step
    arrivals_s = r.num_prompts / r.request_rate if r.request_rate else 0.0
    return max(prefill_s + decode_s, arrivals_s) + CLIENT_OVERHEAD_S


def server_start_s(backend: str = "kvprefetch") -> float:
    return sr.SERVER_START_S.get(backend, 110.0)


def totals(rounds: Sequence[Round], model: str) -> Dict[str, Any]:
    return {
        "rounds": len(rounds),
        "abort_rounds": sum(r.abort for r in rounds),
        "requests": sum(r.num_prompts for r in rounds),
        "prefill_tokens": int(sum(r.num_prompts * mean_input(r) for r in rounds)),
        "min_input": min(r.input_range()[0] for r in rounds),
        "max_input": max(r.input_range()[1] for r in rounds),
        "estimate_s": sum(estimate_round_s(r, model) for r in rounds),
    }


def bench_argv(r: Round, model_dir: str, port: int, output_file: str) -> List[str]:
    """Arguments of `python -m sglang.benchmark.serving` for one round (token ids, exact sampled lengths,
    per-request details in the output line, no warm-up request: the round's requests are all counted)."""
    argv = ["--backend", "sglang", "--host", "127.0.0.1", "--port", str(port), "--model", str(model_dir),
            "--tokenizer", str(model_dir), "--dataset-name", "random-ids", "--tokenize-prompt",
            "--random-input-len", str(r.input_len), "--random-output-len", str(r.output_len),
            "--random-range-ratio", str(r.range_ratio), "--num-prompts", str(r.num_prompts),
            "--max-concurrency", str(r.max_concurrency), "--seed", str(r.seed), "--output-file", str(output_file),
            "--output-details", "--disable-tqdm", "--warmup-requests", "0", "--ready-check-timeout-sec", "60"]
    if r.request_rate:
        argv += ["--request-rate", str(r.request_rate)]
    return argv


def plan_signature(rounds: Sequence[Round], model: str, probe: Dict[str, Any]) -> Dict[str, Any]:
    """What a resumed state must match: the same rounds (ids, sizes, lengths, seeds), model and probes."""
    return {"model": model, "probe": dict(probe),
            "rounds": [[r.id, r.num_prompts, r.input_len, r.output_len, r.range_ratio, r.max_concurrency,
                        r.request_rate, r.abort, r.seed] for r in rounds]}


def fits(est_s: float, left_s: float, reserve_s: float, first: bool) -> bool:
    """soak.py's rule for starting a round: 1.5 x its estimate must fit in what is left before the end reserve;
    the first round of a call only needs 1.0 x (a round whose estimate is pessimistic still gets run)."""
    return left_s - reserve_s >= (1.0 if first else 1.5) * est_s


def pack_shards(estimates: Sequence[float], budget_s: float, fixed_s: float, reserve_s: float) -> List[int]:
    """How many rounds each call runs, in order, when a call has budget_s, spends fixed_s before its first
    round (server start, probes, warm-up) and keeps reserve_s for the end (the `fits` rule).
    ValueError when a round fits no call at all."""
    out: List[int] = []
    i = 0
    while i < len(estimates):
        t, n = fixed_s, 0
        while i < len(estimates) and fits(estimates[i], budget_s - t, reserve_s, first=(n == 0)):
            t += estimates[i]
            i += 1
            n += 1
        if n == 0:
            raise ValueError(f"round {i} (~{estimates[i]:.0f} s) does not fit a call of {budget_s:.0f} s")
        out.append(n)
    return out
