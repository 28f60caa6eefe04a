#!/usr/bin/env python3
"""Serving soak: one real SGLang server with --attention-backend kvprefetch (dummy-weight model folder, CUDA
graphs on, radix cache on) under SGLang's own load generator, `python -m sglang.benchmark.serving
--dataset-name random-ids`, 2,400 requests of mixed lengths (inputs 1..32K tokens, skewed short; outputs 1..64)
in 16 rounds, 6 of them with client-side aborts through SGLang's /abort_request; greedy probes before and after.

    python benchmarks/soak.py --dry-run                                  # plan, estimate, calls needed; no GPU
    python benchmarks/soak.py --budget-s 480 --state benchmarks/results/soak-h100.state.json
    python benchmarks/soak.py --scale 0.05 --max-rounds 3 --fresh        # a small trial

One call = one server life (a shard): start the server, probe pass "before", warm-up rounds, memory
baseline, as many pending rounds as --budget-s allows, probe pass "after", stop. Every finished round is saved
at once in the state file; rerun the same command (with the state file copied back when the call ran on
another machine) until the summary says complete. A round cut off by the budget is not counted and reruns.

Outputs: <out>/soak-<gpu>.state.json (resume state; --state to choose) and <out>/soak-<gpu>.json
({device, commit, soak_requests, soak_aborted, failed_requests, gpu_mem_growth_mb, probe_identical, rounds,
shards, ...}); server, client and bench_serving files in --log-dir; SGLang's per-request log (used to count
aborts and failures, see soak_accounting.py) in --request-log-dir.

Failed request: any request not shown to be completed or deliberately aborted (soak_accounting.py). GPU
memory: nvidia-smi memory.used after warm-up and after each round, growth within one server life. Probes:
soak_probes.py (8 prompts, each alone, greedy, 32 tokens), compared with the first pass ever made.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402
import serving_procs as procs  # noqa: E402  (server process, model folder, GPU queries, bench_serving driver)
import soak_plan as sp  # noqa: E402
import soak_probes as probes  # noqa: E402
import soak_state as st  # noqa: E402
from soak_aborter import Aborter  # noqa: E402
from soak_accounting import classify_round  # noqa: E402
from soak_request_log import RequestLog, server_flags  # noqa: E402

MODELS = ("llama-3.2-1b", "llama-3.1-8b")   # shapes whose context holds 32K in + 64 out
END_RESERVE_S = 50.0                         # probe pass "after" + flush + server stop + saving
PROBE_PASS_S = 8.0
READY_MARKER = "kvprefetch decode backend ready"   # the backend's start-up log line (shapes, JIT time)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.2-1b", choices=MODELS, help="model folder shape (dummy weights)")
    ap.add_argument("--attention-backend", default="kvprefetch")
    ap.add_argument("--budget-s", type=float, default=480.0,
                    help="this call ends (server stopped, state saved) within about this many seconds")
    ap.add_argument("--state", type=Path, default=None, help="resume state (default <out>/soak-<gpu>.state.json)")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing state file and start over")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every round's request count (trials)")
    ap.add_argument("--max-rounds", type=int, default=0, help="run at most this many rounds in this call")
    ap.add_argument("--mem-fraction-static", type=float, default=0.8)
    ap.add_argument("--disable-radix-cache", action="store_true")
    ap.add_argument("--server-args", type=str, default="", help="extra launch_server arguments, one string")
    ap.add_argument("--server-timeout-s", type=float, default=480.0)
    ap.add_argument("--model-root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "kvprefetch-models")
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    ap.add_argument("--log-dir", type=Path, default=None, help="default <out>/../soak-logs")
    ap.add_argument("--request-log-dir", type=Path,
                    default=Path(os.environ.get("TMPDIR", "/tmp")) / "kvprefetch-soak-requests")
    ap.add_argument("--gpu", type=str, default=None, help="results slug (default from nvidia-smi)")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    if args.scale <= 0:
        ap.error("--scale must be > 0")
    return args


def server_cmd(args: argparse.Namespace, model_dir: Path, port: int, request_log_dir: Path, max_bs: int) -> List[str]:
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_dir), "--load-format", "dummy",
           "--attention-backend", args.attention_backend, "--host", "127.0.0.1", "--port", str(port),
           "--mem-fraction-static", str(args.mem_fraction_static), "--cuda-graph-max-bs-decode", str(max_bs),
           "--cuda-graph-backend-prefill", "disabled"] + server_flags(request_log_dir)
    if args.disable_radix_cache:
        cmd.append("--disable-radix-cache")
    return cmd + shlex.split(args.server_args)


def fixed_cost_s(model: str, warmup: List[sp.Round], backend: str) -> float:
    """Server start + probe pass + warm-up rounds: what a call spends before its first soak round."""
    return sp.server_start_s(backend) + PROBE_PASS_S + sum(sp.estimate_round_s(w, model) for w in warmup)


def print_plan(plan: List[sp.Round], todo: List[sp.Round], args: argparse.Namespace, fixed_s: float) -> None:
    t = sp.totals(plan, args.model)
    print(f"plan: {t['requests']} requests in {t['rounds']} rounds ({t['abort_rounds']} with aborts), inputs "
          f"{t['min_input']}..{t['max_input']} tokens, ~{t['prefill_tokens'] / 1e6:.2f}M prefill tokens; "
          f"~{t['estimate_s']:.0f} s of load ({args.model}, H100 estimate)")
    for r in todo:
        print(f"  {r.label()}  ~{sp.estimate_round_s(r, args.model):.0f} s")
    if todo:
        try:
            calls = sp.pack_shards([sp.estimate_round_s(r, args.model) for r in todo], args.budget_s, fixed_s,
                                   END_RESERVE_S)
            print(f"{len(todo)} round(s) pending: {len(calls)} call(s) of --budget-s {args.budget_s:.0f} "
                  f"(rounds per call {calls}; each call ~{fixed_s:.0f} s of start-up, probes and warm-up)")
        except ValueError as e:
            print(f"{len(todo)} round(s) pending; {e}")


def run(args: argparse.Namespace) -> int:
    t0 = time.time()

    def left() -> float:
        return args.budget_s - (time.time() - t0)

    name = "unknown" if args.dry_run else procs.gpu_name()
    slug = args.gpu or (rio.device_slug(name) if name != "unknown" else "h100")
    state_path = args.state or (args.out / f"soak-{slug}.state.json")
    result_path = args.out / f"soak-{slug}.json"
    log_dir = args.log_dir or (args.out.parent / "soak-logs")
    plan = sp.plan_rounds(sp.BUCKETS, args.seed, args.scale)
    warmup = sp.plan_warmup(sp.BUCKETS, args.seed)
    plan_ids = [r.id for r in plan]
    signature = sp.plan_signature(plan, args.model, probes.probe_spec())
    state = None if args.fresh else rio.load_json(state_path)
    if state is not None:
        why = st.signature_mismatch(state, signature)
        if why:
            print(f"cannot resume {state_path}: {why}")
            return 2
    else:
        state = st.new_state(signature)
    todo = st.pending(plan, state)
    fixed_s = fixed_cost_s(args.model, warmup, args.attention_backend)
    print(f"soak on {name}; state {state_path}; results {result_path}; budget {args.budget_s:.0f} s")
    print_plan(plan, todo, args, fixed_s)
    if args.dry_run:
        return 0
    header: Dict[str, Any] = {"device": name, "gpu": slug}
    header.update(rio.stamp())
    header.update(model=args.model, attention_backend=args.attention_backend, plan=sp.totals(plan, args.model))

    def save() -> None:
        rio.write_json(state_path, state)
        if state_path.resolve() != (args.out / state_path.name).resolve():
            rio.write_json(args.out / state_path.name, state)   # a copy beside the results (e.g. in $OUT)
        rio.write_json(result_path, st.summary(state, plan_ids, header))

    if not todo:
        save()
        print("soak complete: nothing to run")
        return 0
    if args.max_rounds:
        todo = todo[:args.max_rounds]
    if not sp.fits(sp.estimate_round_s(todo[0], args.model), left() - fixed_s, END_RESERVE_S, first=True):
        print(f"STOPPED: --budget-s {args.budget_s:.0f} cannot hold start-up (~{fixed_s:.0f} s) and round "
              f"{todo[0].id}; no server started")
        return 0
    why = procs.backend_unavailable(args.attention_backend)
    if why:
        print(f"cannot serve {args.attention_backend}: {why}")
        return 1

    log_dir.mkdir(parents=True, exist_ok=True)
    model_dir = procs.ensure_model(args.model, args.model_root)
    port = procs.free_port()
    base = f"http://127.0.0.1:{port}"
    env = procs.server_env()
    shard = st.new_shard(state, {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": name, "gpu": slug,
                                 "commit": header["commit"], "dirty": header["dirty"], "argv": sys.argv[1:],
                                 "budget_s": args.budget_s})
    n = shard["shard"]
    req_dir = args.request_log_dir / f"shard{n}-{int(t0)}"
    shutil.rmtree(req_dir, ignore_errors=True)
    cmd = server_cmd(args, model_dir, port, req_dir, sp.max_concurrency(plan + warmup))
    shard["server_cmd"] = " ".join(cmd[1:])
    srv = procs.ServerProcess(cmd, port, log_dir / f"server-shard{n}.log", env)
    client_log = log_dir / f"client-shard{n}.log"
    prompts = probes.probe_prompts()
    log = RequestLog(req_dir)
    driver = None
    tag = f"[soak {n}]"

    def sample(label: str) -> Optional[int]:
        mib = procs.gpu_memory_used_mib()
        shard["mem_samples"].append({"after": label, "mib": mib, "t_s": round(time.time() - t0, 1)})
        return mib

    def probe_pass(when: str) -> None:
        flushed = probes.flush_cache(base)
        outs = probes.run_probes(base, prompts)
        if state.get("probe_reference") is None and all("error" not in o for o in outs):
            state["probe_reference"] = {"shard": n, "started": shard["started"], "when": when, "outputs": outs}
        ref = state.get("probe_reference")
        diffs = (probes.compare_probes(ref["outputs"], outs, probes.PROBE_LENS) if ref
                 else [{"probe": None, "why": "no reference pass (every first pass had errors)"}])
        rec = {"when": when, "flushed": flushed, "outputs": outs, "diffs": diffs, "identical": not diffs}
        before = next((p for p in shard["probes"] if p["when"] == "before"), None)
        if before is not None:
            rec["diffs_vs_before"] = probes.compare_probes(before["outputs"], outs, probes.PROBE_LENS)
        shard["probes"].append(rec)
        print(f"{tag} probes {when}: {'identical to the reference' if not diffs else f'{len(diffs)} DIFFER'}"
              f"{'' if flushed else ' (cache flush refused)'}", flush=True)

    def run_round(r: sp.Round) -> Optional[Dict[str, Any]]:
        """The round's record, or None when the budget cut it off (not counted; it reruns)."""
        out_file = log_dir / f"bench-shard{n}-{r.id}.jsonl"
        if out_file.exists():
            out_file.unlink()
        argv = sp.bench_argv(r, str(model_dir), port, str(out_file))
        est = sp.estimate_round_s(r, args.model)
        want, cap = 3 * est + 120, left() - END_RESERVE_S
        timeout = max(10.0, min(want, cap))
        log.poll()
        mark = log.mark()
        ab = Aborter(base, log, mark, r.num_prompts, r.max_concurrency, r.seed) if r.abort else None
        t = time.time()
        if ab:
            ab.start()
        try:
            if driver is not None and driver.alive():
                ok, msg = driver.run(argv, timeout)
            else:
                ok, msg = procs.run_client_once(argv, client_log, timeout, env)
        finally:
            if ab:
                ab.stop()
                ab.join(60)
        dur = time.time() - t
        if not ok and "timed out" in msg and cap < want:
            return None
        time.sleep(0.5)
        log.poll()
        received, finished = log.since(mark)
        result = procs.read_result(out_file) if ok else None
        acc = classify_round(r.num_prompts, result, received, finished, ab.aborts_sent if ab else 0)
        rec: Dict[str, Any] = {"id": r.id, "bucket": r.bucket, "kind": r.kind, "shard": n, "abort": r.abort,
                               "input_range": list(r.input_range()), "output_range": list(r.output_range()),
                               "max_concurrency": r.max_concurrency, "request_rate": r.request_rate, "seed": r.seed,
                               "duration_s": round(dur, 2), "estimate_s": round(est, 1), "client_ok": ok,
                               "client_msg": (msg or None) if not ok else None}
        rec.update(acc)
        rec["abort_calls"] = ab.calls if ab else []
        rec["bench"] = ({k: result.get(k) for k in ("completed", "duration", "request_throughput",
                                                    "total_input_tokens", "median_e2e_latency_ms", "median_itl_ms")}
                        if result else None)
        return rec

    print(f"{tag} starting: {shard['server_cmd']}", flush=True)
    t_start = time.time()
    srv.start()
    try:
        ok, msg = srv.wait_healthy(min(args.server_timeout_s, max(left() - END_RESERVE_S, 1.0)))
        shard["server_start_s"] = round(time.time() - t_start, 1)
        print(f"{tag} {msg}", flush=True)
        if not ok:
            shard["error"] = f"server did not start: {msg}"
            return 1
        shard["backend_line"] = next((l.strip()[-300:] for l in srv.log_text().splitlines()
                                      if READY_MARKER in l), None)
        fb = procs.fallback_line(srv.log_text()) if args.attention_backend == "kvprefetch" else None
        if fb:
            shard["error"] = f"kvprefetch fell back to Triton: {fb}"
            print(f"{tag} {shard['error']}", flush=True)
            return 1
        driver = procs.ClientDriver(client_log, env)
        ok, msg = driver.ready()
        if not ok:
            print(f"{tag} batched client failed to start ({msg}); one process per round", flush=True)
            driver.close()
            driver = None
        probe_pass("before")
        for w in warmup:
            rec = run_round(w)
            if rec is not None:
                shard["warmup"].append(rec)
                print(f"{tag} warm-up {w.label()}: {rec['completed']} completed, {rec['failed']} failed "
                      f"in {rec['duration_s']:.1f} s", flush=True)
        base_mib = sample("warmup")
        print(f"{tag} GPU memory after warm-up: {base_mib} MiB", flush=True)
        save()
        for i, r in enumerate(todo):
            est = sp.estimate_round_s(r, args.model)
            if not sp.fits(est, left(), END_RESERVE_S, first=(i == 0)):
                shard["stopped"] = f"budget: {left():.0f} s left, round {r.id} needs ~{est:.0f} s"
                break
            rec = run_round(r)
            if rec is None:
                shard["rounds_incomplete"].append(r.id)
                shard["stopped"] = f"budget: round {r.id} cut off (rerun next call)"
                break
            mib = sample(f"round:{r.id}")
            rec["mem_after_mib"] = mib
            st.record_round(state, rec)
            shard["rounds_done"].append(r.id)
            shard["mem"] = st.mem_growth(shard["mem_samples"])
            save()
            s = st.summary(state, plan_ids, header)
            growth = f"{mib - base_mib:+d}" if (mib is not None and base_mib is not None) else "?"
            print(f"{tag} {len(shard['rounds_done'])}/{len(todo)} {r.label()}: {rec['completed']} completed, "
                  f"{rec['aborted']} aborted ({len(rec['abort_calls'])} abort steps), {rec['failed']} failed, "
                  f"{rec['duration_s']:.1f} s (est {rec['estimate_s']:.0f}); GPU {mib} MiB ({growth} since "
                  f"warm-up); total {s['soak_requests']} sent, {s['soak_aborted']} aborted, "
                  f"{s['failed_requests']} failed; {left():.0f} s left", flush=True)
            if not srv.healthy():
                shard["error"] = f"server no longer healthy after {r.id}: {srv.log_tail()}"
                print(f"{tag} {shard['error']}", flush=True)
                break
        if srv.healthy():
            probe_pass("after")
            sample("end")
    finally:
        shard["mem"] = st.mem_growth(shard["mem_samples"])
        save()
        if driver is not None:
            driver.close()
        srv.stop()
        shard["mem"] = st.mem_growth(shard["mem_samples"])
        shard["wall_s"] = round(time.time() - t0, 1)
        save()
    s = st.summary(state, plan_ids, header)
    print(f"{tag} done in {time.time() - t0:.0f} s: soak {s['soak_requests']} sent, {s['soak_completed']} completed, "
          f"{s['soak_aborted']} aborted, {s['failed_requests']} failed; GPU memory growth after warm-up "
          f"{s['gpu_mem_growth_mb']} MB (final {s['gpu_mem_final_growth_mb']}); probes identical: "
          f"{s['probe_identical']}; rounds {s['rounds_done']}/{s['rounds_planned']}")
    if shard.get("stopped"):
        print(f"STOPPED: {shard['stopped']}")
    print("soak complete" if s["complete"] else "RESUME: rerun the same command (copy the state file back first "
                                               "if this call ran on another machine)")
    return 1 if shard.get("error") else 0


def main(argv: Optional[List[str]] = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
