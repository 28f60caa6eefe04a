#!/usr/bin/env python3
"""What the backend's per-step host work costs (issue 5's "zero per-step host work" lever), two ways:

* metadata: host wall time of ``DecodeKernels.plan_graph`` — all the backend runs before every CUDA-graph replay
  (one Triton page-table launch, then each wrapper's plan: no host copy, no sync) — timed alone (what the CPU
  pays) and to GPU completion, per batch size, on the Llama-3.1-8B head layout at page 16.
* step: SGLang's ``bench_one_batch`` (no overlap scheduler, a sync after every step: host work adds to every step)
  per attention backend, median decode-step latency, on dummy-weight Llama-3.1-8B and Llama-3.2-1B folders.
  Set beside serving TPOT at concurrency 1 (serving-<gpu>.json), where the overlap scheduler hides host work.

    python benchmarks/step_host_cost.py                         # kvprefetch, fa3, flashinfer; 8B and 1B; 8K and 16K
    python benchmarks/step_host_cost.py --backends kvprefetch triton --models llama-3.2-1b --dry-run

Writes <out>/hostcost-<gpu>.json (device, commit, versions, every row) and .md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402
import serving_procs as sp  # noqa: E402

HQ, HKV, D = 32, 8, 128  # Llama-3.1-8B
# bench_one_batch with SGLang's plugin entry points loaded first (it does not load them itself in 0.5.17)
ONE_BATCH = ("from sglang.srt.plugins import load_plugins; load_plugins(); "
             "from sglang.benchmark.one_batch import cli_main; cli_main()")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["kvprefetch", "fa3", "flashinfer"])
    ap.add_argument("--models", nargs="+", default=["llama-3.1-8b", "llama-3.2-1b"])
    ap.add_argument("--input-lens", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--output-len", type=int, default=64, help="decode steps per bench_one_batch run")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 64], help="metadata timing batch sizes")
    ap.add_argument("--calls", type=int, default=300, help="plan_graph calls timed per batch size")
    ap.add_argument("--run-timeout-s", type=float, default=150.0, help="limit per bench_one_batch process")
    ap.add_argument("--deadline-s", type=float, default=None, help="stop starting new runs after this many seconds")
    ap.add_argument("--model-root", type=Path, default=Path("/tmp/kvp-models"))
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    ap.add_argument("--gpu", default=None, help="results file slug (default: from the device name)")
    ap.add_argument("--dry-run", action="store_true", help="print the runs, no GPU")
    args = ap.parse_args(argv)
    if args.output_len < 2:
        ap.error("--output-len: expected >= 2 (bench_one_batch reports the median from the 2nd step)")
    if args.calls < 1 or any(b < 1 for b in args.batch_sizes) or any(n < 1 for n in args.input_lens):
        ap.error("--calls, --batch-sizes and --input-lens: expected positive integers")
    return args


def one_batch_cmd(backend: str, model_dir: Path, args: argparse.Namespace, result_file: Path) -> List[str]:
    return [sys.executable, "-c", ONE_BATCH, "--model-path", str(model_dir), "--load-format", "dummy",
            "--attention-backend", backend, "--batch-size", "1", "--input-len", *map(str, args.input_lens),
            "--output-len", str(args.output_len), "--run-name", backend, "--result-filename", str(result_file)]


def median_us(samples_s: List[float]) -> float:
    return 1e6 * statistics.median(samples_s)


def time_metadata(args: argparse.Namespace) -> List[Dict[str, Any]]:
    import torch

    from kvprefetch.integration.decoder import DecodeKernels

    dev = torch.device("cuda")
    ctx, page = max(args.input_lens), 16
    max_bs = max(args.batch_sizes)
    slots = torch.randperm(max_bs * ctx, device=dev, dtype=torch.int64).to(torch.int32)
    req_to_token = slots.view(max_bs, ctx)
    dk = DecodeKernels(shapes=[(HQ, HKV, D)], page_size=page, q_dtype=torch.bfloat16, kv_dtype=torch.bfloat16,
                       device=dev, req_to_token=req_to_token, max_batch_size=max_bs)
    dk.load()
    dk.init_graph_buffers(max_bs)
    rows = []
    for bs in args.batch_sizes:
        rpi = torch.arange(bs, device=dev, dtype=torch.int64)
        seq = torch.full((bs,), ctx, device=dev, dtype=torch.int64)
        host, done = [], []
        for i in range(args.calls + 20):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dk.plan_graph(rpi, seq, bs)
            t1 = time.perf_counter()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i >= 20:
                host.append(t1 - t0)
                done.append(t2 - t0)
        rows.append({"part": "metadata", "batch": bs, "context": ctx, "page_size": page,
                     "host_us": median_us(host), "to_gpu_done_us": median_us(done), "calls": args.calls})
    return rows


def time_steps(args: argparse.Namespace, started: float, out: Path) -> List[Dict[str, Any]]:
    rows = []
    for model in args.models:
        model_dir = sp.ensure_model(model, args.model_root)
        for backend in args.backends:
            row = {"part": "step", "model": model, "backend": backend}
            why = sp.backend_unavailable(backend)
            if why is None and args.deadline_s is not None and time.time() - started > args.deadline_s:
                why = "deadline reached"
            if why is not None:
                rows.append({**row, "skipped": why})
                continue
            result_file = out / f"one_batch-{model}-{backend}.jsonl"
            result_file.unlink(missing_ok=True)
            log = out / f"one_batch-{model}-{backend}.log"
            t0 = time.time()
            with open(log, "w") as fh:
                try:
                    rc = subprocess.run(one_batch_cmd(backend, model_dir, args, result_file), stdout=fh,
                                        stderr=subprocess.STDOUT, env=sp.server_env(),
                                        timeout=args.run_timeout_s).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            found = [json.loads(x) for x in result_file.read_text().splitlines()] if result_file.exists() else []
            if not found:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                rows.append({**row, "failed": f"exit {rc}: {tail}", "seconds": round(time.time() - t0, 1)})
                continue
            for r in found:
                rows.append({**row, "input_len": r["input_len"], "batch": r["batch_size"],
                             "median_step_ms": 1e3 * r["median_decode_latency"], "seconds": round(time.time() - t0, 1)})
            sp.wait_gpu_idle()
    return rows


def serving_tpot(out: Path, gpu: str) -> Dict[tuple, float]:
    """(model, backend, input_len) -> median TPOT ms at concurrency 1 from the committed serving results."""
    doc = rio.load_json(out / f"serving-{gpu}.json") or rio.load_json(rio.DEFAULT_OUT / f"serving-{gpu}.json") or {}
    found = {}
    for r in doc.get("rows", []):
        if r.get("max_concurrency") == 1 and r.get("tpot_ms_p50") is not None and r.get("page_size", 1) == 1:
            found[(r.get("model"), r.get("backend"), r.get("input_len"))] = r["tpot_ms_p50"]
    return found


def render_md(doc: Dict[str, Any]) -> str:
    out = [f"# Per-step host cost — {doc['device']}, commit {doc['commit']}", ""]
    meta = [r for r in doc["rows"] if r["part"] == "metadata"]
    if meta:
        out += ["Backend metadata before each CUDA-graph replay (`DecodeKernels.plan_graph`, page 16, "
                f"context {rio.fmt_tokens(meta[0]['context'])}), median of {meta[0]['calls']} calls:", ""]
        out.append(rio.md_table(["batch", "host µs (CPU returns)", "µs to GPU done"],
                                [[r["batch"], rio.fmt_num(r["host_us"]), rio.fmt_num(r["to_gpu_done_us"])]
                                 for r in meta]))
        out.append("")
    steps = [r for r in doc["rows"] if r["part"] == "step"]
    if steps:
        out += ["`bench_one_batch` (no overlap scheduler) median decode step, batch 1, beside serving TPOT at "
                "concurrency 1 from serving-*.json (its own commit):", ""]
        rows = []
        for r in steps:
            if "median_step_ms" not in r:
                rows.append([r["model"], r["backend"], "—", r.get("skipped") or r.get("failed"), "—", "—"])
                continue
            t = r.get("serving_tpot_ms")
            rows.append([r["model"], r["backend"], rio.fmt_tokens(r["input_len"]), rio.fmt_num(r["median_step_ms"], 3),
                         rio.fmt_num(t, 3) if t else "—", rio.fmt_num(r["median_step_ms"] - t, 3) if t else "—"])
        out.append(rio.md_table(["model", "backend", "input", "one_batch step ms", "serving TPOT ms",
                                 "difference ms"], rows))
    return "\n".join(out) + "\n"


def dry_run(args: argparse.Namespace) -> int:
    print(f"metadata: plan_graph x {args.calls} at batch {args.batch_sizes}, context {max(args.input_lens)}")
    for model in args.models:
        for b in args.backends:
            cmd = one_batch_cmd(b, args.model_root / model, args, args.out / f"one_batch-{model}-{b}.jsonl")
            print(" ".join(c if c != ONE_BATCH else repr(ONE_BATCH) for c in cmd))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    import torch

    started = time.time()
    name = torch.cuda.get_device_name()
    gpu = args.gpu or rio.device_slug(name)
    args.out.mkdir(parents=True, exist_ok=True)
    doc: Dict[str, Any] = {"device": name, "gpu": gpu, **rio.stamp(), "rows": time_metadata(args)}
    torch.cuda.empty_cache()
    doc["rows"] += time_steps(args, started, args.out)
    tpot = serving_tpot(args.out, gpu)
    for r in doc["rows"]:
        if "median_step_ms" in r:
            r["serving_tpot_ms"] = tpot.get((r["model"], r["backend"], r["input_len"]))
    rio.write_json(args.out / f"hostcost-{gpu}.json", doc)
    rio.write_text(args.out / f"hostcost-{gpu}.md", render_md(doc))
    print(render_md(doc))
    return 0 if all("failed" not in r for r in doc["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
