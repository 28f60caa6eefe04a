#!/usr/bin/env python3
"""Profile served decode steps, backend by backend: one real SGLang server each (serving_bench.py's command line),
long requests one after another, and SGLang's own /start_profile for a fixed number of steps of each: several
without Python stacks (the timing, request by request: run 19f saw whole requests run slower than others) and one
with them (which Python function the CPU time is in). Each trace is reduced by trace_steps.py.

    python benchmarks/serving_profile.py --backends kvprefetch fa3 --models llama-3.2-1b --input-len 16384

Writes <out>/stepprofile-<gpu>.json (device, commit, versions, per backend and mode the step analysis) and .md;
the raw traces stay under <out>/traces/ unless --drop-traces.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402
import serving_bench as sb  # noqa: E402
import serving_rows as sr  # noqa: E402
import trace_steps as ts  # noqa: E402
from serving_procs import ServerProcess, ensure_model, free_port, gpu_name, server_env  # noqa: E402
from soak_http import post_json  # noqa: E402


def modes(requests: int, stack: bool = True) -> List[Tuple[str, bool]]:
    return [(f"nostack{i}", False) for i in range(requests)] + ([("stack", True)] if stack else [])


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", default=["kvprefetch", "fa3"])
    ap.add_argument("--models", nargs="+", default=["llama-3.2-1b"])
    ap.add_argument("--input-len", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=200, help="decode steps per profile")
    ap.add_argument("--requests", type=int, default=4, help="requests profiled without stacks, one after another")
    ap.add_argument("--no-stack", action="store_true", help="skip the profile with Python stacks")
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--server-args", type=str, default="")
    ap.add_argument("--model-root", type=Path, default=Path("/tmp/kvprefetch-models"))
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    ap.add_argument("--drop-traces", action="store_true", help="delete the raw traces after reducing them")
    args = ap.parse_args(argv)
    if args.steps < 3 or args.input_len < 1 or args.requests < 1:
        ap.error("--steps: expected >= 3; --input-len and --requests: expected >= 1")
    return args


def profile_once(port: int, input_len: int, steps: int, trace_dir: Path, prefix: str, with_stack: bool) -> Path:
    """One request long enough to outlast the profile; the profile starts once its prefill is surely done."""
    base = f"http://127.0.0.1:{port}"
    ids = [random.randrange(1000, 100000) for _ in range(input_len)]
    # ~20 steps per profiled step: the profiler stops (and writes its trace) only after `steps` forward steps
    req = {"input_ids": ids, "sampling_params": {"max_new_tokens": 20 * steps + 500, "ignore_eos": True,
                                                  "temperature": 0.0}}
    done: Dict[str, Any] = {}
    t = threading.Thread(target=lambda: done.setdefault("r", post_json(f"{base}/generate", req, 300.0)), daemon=True)
    t.start()
    time.sleep(1.0)  # the prefill (~0.1 s for the 1B at 16K) is done
    trace_dir.mkdir(parents=True, exist_ok=True)
    status, body = post_json(f"{base}/start_profile", {
        "output_dir": str(trace_dir), "num_steps": steps, "activities": ["CPU", "GPU"], "with_stack": with_stack,
        "record_shapes": False, "profile_prefix": prefix}, 120.0)
    if status != 200:
        raise RuntimeError(f"/start_profile answered {status}: {str(body)[:300]}")
    t.join(300.0)
    status, _ = done.get("r", (0, "no answer"))
    if status != 200:
        raise RuntimeError(f"/generate answered {status}")
    t0 = time.time()
    while time.time() - t0 < 120.0:  # the trace is written after the last profiled step, maybe after the request
        found = sorted(trace_dir.glob(f"{prefix}*.trace.json*"), key=lambda p: p.stat().st_mtime)
        if found and time.time() - found[-1].stat().st_mtime > 2.0:
            return found[-1]
        time.sleep(1.0)
    raise RuntimeError(f"no trace named {prefix}* under {trace_dir} after 120 s")


def profile_backend(model: str, backend: str, args: argparse.Namespace, log_dir: Path) -> Dict[str, Any]:
    bargs = sb.parse_args(["--models", model, "--backends", backend, "--workloads", f"{args.input_len}:256:1",
                           "--page-size", str(args.page_size), "--server-args", args.server_args])
    server = sr.Server(model, backend, args.page_size, sr.kv_dtype_label("auto"))
    port = free_port()
    srv = ServerProcess(sb.server_cmd(server, ensure_model(model, args.model_root), port, bargs), port,
                        log_dir / f"server-profile-{model}-{backend}.log", server_env())
    row: Dict[str, Any] = {"model": model, "backend": backend, "input_len": args.input_len,
                           "page_size": args.page_size}
    srv.start()
    try:
        ok, msg = srv.wait_healthy(480.0)
        if not ok:
            row["skipped"] = msg
            return row
        for mode, stack in modes(args.requests, not args.no_stack):
            trace = profile_once(port, args.input_len, args.steps, args.out / "traces", f"{model}-{backend}-{mode}",
                                 stack)
            row[mode] = ts.analyze(ts.load_events(trace))
            row[mode]["trace"] = trace.name
            print(f"[{model}/{backend}/{mode}] period {row[mode].get('period_us_median')} µs, GPU busy "
                  f"{row[mode].get('gpu_busy_us_per_step')} µs per step", flush=True)
    except Exception as e:  # one backend's failure is a row, not the end of the run
        row["error"] = f"{type(e).__name__}: {e}"
    finally:
        srv.stop()
    return row


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    random.seed(1)
    name = gpu_name()
    slug = rio.device_slug(name)
    doc: Dict[str, Any] = {"device": name, "gpu": slug, "argv": sys.argv[1:]}
    doc.update(rio.stamp())
    log_dir = args.out.parent / "serving-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    doc["rows"] = [profile_backend(m, b, args, log_dir) for m in args.models for b in args.backends]
    md = [f"# Served decode steps profiled — {name}, commit {doc['commit']}", ""]
    for r in doc["rows"]:
        for mode, _ in modes(args.requests, not args.no_stack):
            if mode in r:
                md.append(ts.render(f"{r['model']} / {r['backend']} / {mode} ({r['input_len']} in)", r[mode]))
        if "skipped" in r or "error" in r:
            md.append(f"## {r['model']} / {r['backend']}\n\n{r.get('skipped') or r.get('error')}\n")
    rio.write_report(args.out, f"stepprofile-{slug}", doc, "\n".join(md))
    if args.drop_traces:
        shutil.rmtree(args.out / "traces", ignore_errors=True)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
