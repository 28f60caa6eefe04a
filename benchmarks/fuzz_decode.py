#!/usr/bin/env python3
"""Seeded fuzz of the decode kernel against the float64 reference, on an sm_90 GPU.

    python benchmarks/fuzz_decode.py --cases 2000 --out $OUT/fuzz.json   # seeds 0..1999, summary JSON
    python benchmarks/fuzz_decode.py --seed 1234                         # one case again, verbosely
    python benchmarks/fuzz_decode.py --list 20                           # print cases, no GPU

Every case is ``fuzz_cases.random_case(random.Random(seed))`` with input tensors drawn from the same seed, so a
mismatch reported with its seed reproduces with ``--seed``. Cases run grouped by wrapper (same shapes and module
back to back); the summary is rewritten after every chunk, so a run cut short by a deadline still leaves one.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_cases as fc  # noqa: E402
import results_io as rio  # noqa: E402

REPRO = "python benchmarks/fuzz_decode.py --seed {seed}"
MAX_LISTED = 200  # mismatches kept in the JSON (all are counted)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000, help="number of seeds to run (default 2000)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, help="run this one seed verbosely (exit 1 if it fails)")
    ap.add_argument("--out", type=Path, help="summary JSON file, or a folder for fuzz-<gpu>.json "
                                             "(default benchmarks/results/fuzz-<gpu>.json)")
    ap.add_argument("--deadline-s", type=float, default=None, help="stop starting new cases after this many seconds")
    ap.add_argument("--chunk", type=int, default=100, help="cases per progress line / summary rewrite")
    ap.add_argument("--list", type=int, metavar="N", help="print the first N cases from --first-seed and exit (no GPU)")
    return ap.parse_args(argv)


def _worst(rows: Iterable[Dict[str, Any]], key: str) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for r in rows:
        e = r.get("err")
        if e is None or (isinstance(e, float) and math.isnan(e)):
            continue
        k = str(r[key])
        out[k] = max(out.get(k, 0.0), e)
    return dict(sorted(out.items()))


def summarize(results: List[Dict[str, Any]], *, cases_requested: int, first_seed: int, wall_s: float,
              aborted: Optional[str], coverage: Dict[str, int]) -> Dict[str, Any]:
    """The summary JSON body (without the device/commit header) from per-case result dicts."""
    bad = [r for r in results if not r["ok"]]
    finite = [r for r in results if r.get("err") is not None and not math.isnan(r["err"])]
    worst = max(finite, key=lambda r: r["err"], default=None)
    lse_errs = [r["lse_err"] for r in results if r.get("lse_err") is not None and not math.isnan(r["lse_err"])]
    return {
        "configs_fuzzed": len(results),
        "cases_requested": cases_requested,
        "first_seed": first_seed,
        "mismatch_count": len(bad),
        "mismatches": [{"seed": r["seed"], "desc": r["desc"], "err": r.get("err"), "lse_err": r.get("lse_err"),
                        "reason": r["reason"], "repro": REPRO.format(seed=r["seed"])}
                       for r in sorted(bad, key=lambda r: r["seed"])[:MAX_LISTED]],
        "worst_rel_err": {"overall": worst["err"] if worst else None, "by_kv_dtype": _worst(results, "kv"),
                          "by_head_dim": _worst(results, "d")},
        "worst_lse_err": max(lse_errs, default=None),
        "worst_case": {"seed": worst["seed"], "desc": worst["desc"], "err": worst["err"]} if worst else None,
        "tolerance": {"rel_err_bf16_f16_kv": 1e-2, "rel_err_fp8_kv": 3e-2, "lse": 1e-2,
                      "metric": "max over requests of ||out - ref|| / ||ref|| (float64 reference)"},
        "coverage": dict(sorted(coverage.items())),
        "modules": sorted({r["module"] for r in results if r.get("module")}),
        "wall_s": round(wall_s, 1),
        "aborted": aborted,
        "repro": REPRO,
    }


def out_path(arg: Optional[Path], slug: str) -> Path:
    if arg is None:
        return rio.DEFAULT_OUT / f"fuzz-{slug}.json"
    return arg if arg.suffix == ".json" else arg / f"fuzz-{slug}.json"


def _cuda_dead(torch) -> Optional[str]:
    try:
        torch.cuda.synchronize()
        return None
    except Exception as e:  # a sticky error (illegal address): nothing more can run in this process
        return f"{type(e).__name__}: {e}".splitlines()[0]


def run_one_verbose(seed: int) -> int:
    import fuzz_check

    case = fc.random_case(random.Random(seed))
    print(f"seed {seed}: {fc.describe(case)}")
    print(json.dumps(case))
    res = fuzz_check.check_case(case, seed, fuzz_check.WrapperCache(size=1))
    splits = [fc.active_splits(n, res["num_splits"], _min_chunk(), res.get("short_splits"), res.get("short_chunk"))
              for n in case["lens"]]
    print(f"module {res['module']}, planned splits {res['num_splits']}, active splits per request {splits[:16]}"
          f"{'...' if len(splits) > 16 else ''}")
    print(f"rel err {res['err']:.3e}, lse err {res['lse_err'] if res['lse_err'] is None else format(res['lse_err'], '.3e')}"
          f" -> {'ok' if res['ok'] else 'MISMATCH: ' + res['reason']}")
    return 0 if res["ok"] else 1


def _min_chunk() -> int:
    from kvprefetch.jit_kernels.decode import MIN_CHUNK_TOKENS

    return MIN_CHUNK_TOKENS


def run(args: argparse.Namespace) -> int:
    import torch

    import fuzz_check

    t0 = time.perf_counter()
    if not torch.cuda.is_available():
        print("fuzz_decode: no CUDA GPU (run it on the H100/H200 host)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name()
    path = out_path(args.out, rio.device_slug(device))
    header = {"kind": "fuzz", "device": device, **rio.stamp()}
    seeds = range(args.first_seed, args.first_seed + args.cases)
    pairs = fc.cases_for(seeds)
    wrappers = fuzz_check.WrapperCache()
    min_chunk = _min_chunk()
    results: List[Dict[str, Any]] = []
    coverage: Dict[str, int] = {}
    aborted: Optional[str] = None  # the CUDA context died: the rest could not run
    stopped: Optional[str] = None  # the deadline came first

    def save():
        body = summarize(results, cases_requested=args.cases, first_seed=args.first_seed,
                         wall_s=time.perf_counter() - t0, aborted=aborted, coverage=coverage)
        body["stopped_early"] = stopped
        rio.write_json(path, {**header, **body})

    print(f"fuzz: {len(pairs)} cases (seeds {seeds.start}..{seeds.stop - 1}) on {device}, summary -> {path}", flush=True)
    for i, (seed, case) in enumerate(pairs):
        if args.deadline_s is not None and time.perf_counter() - t0 > args.deadline_s:
            stopped = f"deadline {args.deadline_s:.0f} s reached after {len(results)} cases"
            break
        try:
            res = fuzz_check.check_case(case, seed, wrappers)
        except Exception as e:  # a failed launch is a finding, with its seed
            res = {"seed": seed, "ok": False, "err": math.nan, "lse_err": None, "desc": fc.describe(case),
                   "reason": f"exception: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   "kv": fc.kv_dtype_name(case), "d": case["d"], "module": None, "num_splits": None}
            dead = _cuda_dead(torch)
            if dead:
                results.append(res)
                aborted = f"CUDA context lost at seed {seed}: {dead}"
                break
        results.append(res)
        if res.get("num_splits"):
            for t in fc.case_traits(case, res["num_splits"], min_chunk, res.get("short_splits"), res.get("short_chunk")):
                coverage[t] = coverage.get(t, 0) + 1
        if not res["ok"]:
            print(f"  MISMATCH seed {seed}: {res['reason']}: {res['desc']}  repro: {REPRO.format(seed=seed)}", flush=True)
        if (i + 1) % args.chunk == 0 or i + 1 == len(pairs):
            chunk = results[-args.chunk:]
            worst = ", ".join(f"{k} {v:.2e}" for k, v in _worst(chunk, "kv").items())
            print(f"  {len(results)}/{len(pairs)} cases, {time.perf_counter() - t0:.0f} s; "
                  f"worst rel err in chunk: {worst}; "
                  f"mismatches so far {sum(not r['ok'] for r in results)}", flush=True)
            save()
    save()
    body = rio.load_json(path)
    print(f"fuzz: {body['configs_fuzzed']} configs, {body['mismatch_count']} mismatches, worst rel err "
          f"{body['worst_rel_err']}, {body['wall_s']} s" + (f"; ABORTED: {aborted}" if aborted else "")
          + (f"; stopped early: {stopped}" if stopped else ""), flush=True)
    return 0 if body["mismatch_count"] == 0 and not aborted else 1


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.list is not None:
        for s in range(args.first_seed, args.first_seed + args.list):
            print(f"{s}: {fc.describe(fc.random_case(random.Random(s)))}")
        return 0
    if args.seed is not None:
        return run_one_verbose(args.seed)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
