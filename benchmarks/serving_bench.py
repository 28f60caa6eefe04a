#!/usr/bin/env python3
"""End-to-end serving benchmark: one real SGLang server per (model, attention backend), driven by SGLang's
own bench_serving (random token ids, exact lengths), stopped cleanly before the next one starts.

    python benchmarks/serving_bench.py                                  # everything (~1 h of GPU: shard it)
    python benchmarks/serving_bench.py --models llama-3.2-1b --backends kvprefetch fa3 --deadline-s 540
    python benchmarks/serving_bench.py --shard 0/4 --deadline-s 540     # 1 of 4 slices of the servers
    python benchmarks/serving_bench.py --large --shard 0/4 --deadline-s 540   # the larger sweep (~83 min: shard it)
    python benchmarks/serving_bench.py --dry-run                        # plan + estimate, no GPU
    python benchmarks/serving_bench.py --render-only                    # md + png from the JSON

Resume is on by default: points already in <out>/serving-<gpu>.json (that ran) are skipped, a server whose
points are all done is not started, and every finished point is saved at once, so a job cut off at its
time limit loses at most the point in flight. Rerun the same command to continue.

Server: python -m sglang.launch_server --model-path DIR --load-format dummy --attention-backend B
    --host 127.0.0.1 --port P --mem-fraction-static 0.8 --cuda-graph-max-bs-decode 64
    --cuda-graph-backend-prefill disabled --disable-radix-cache --page-size N --kv-cache-dtype auto
Client: python -m sglang.benchmark.serving --backend sglang --dataset-name random-ids --random-input-len I
    --random-output-len O --random-range-ratio 1.0 --tokenize-prompt --num-prompts N --max-concurrency C
    --seed S --tokenizer DIR --model DIR --output-file F   (several runs share one Python process:
    serving_client.py; --client-mode per-run starts `python -m sglang.benchmark.serving` each time)
Model folders: kvprefetch.integration.model_folder.write_model_folder(DIR, shape=MODEL) (no weights).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402
import serving_report  # noqa: E402
import serving_rows as sr  # noqa: E402
from serving_procs import (  # noqa: E402  (module globals here, so tests can stand in for them)
    ClientDriver, ServerProcess, backend_unavailable, ensure_model, fallback_line, free_port, gpu_name, read_result,
    run_client_once, server_env,
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None,
                    help=f"model shapes (default {' '.join(sr.MODELS)}; also {' '.join(sr.LARGE_MODELS)} with --large)")
    ap.add_argument("--backends", nargs="+", default=list(sr.BACKENDS), help=f"({' '.join(sr.BACKENDS)})")
    ap.add_argument("--workloads", type=str, default=None,
                    help="INPUT:OUTPUT:CONC,... (default 8K:256:1,8K:256:8,16K:256:1,16K:256:8,1K:128:64; "
                         "CONC U: unbounded)")
    ap.add_argument("--large", action="store_true",
                    help="the larger sweep: models llama-3.1-8b qwen2.5-7b, workloads 32K:256:1,32K:256:8,1K:128:U "
                         "(U: all prompts in flight at once); run it in shards (--shard) that resume")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--num-prompts", type=int, default=None, help="per run (default max(16, 2 x concurrency))")
    ap.add_argument("--page-size", type=int, default=1, help="--page-size of every server (SGLang default 1)")
    ap.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "fp8_e4m3"))
    ap.add_argument("--mem-fraction-static", type=float, default=0.8)
    ap.add_argument("--cuda-graph-max-bs", type=int, default=None,
                    help="--cuda-graph-max-bs-decode (default: the largest concurrency, at least 8)")
    ap.add_argument("--server-args", type=str, default="",
                    help='extra launch_server arguments, one string: --server-args="--max-running-requests 64"')
    ap.add_argument("--backend-name", action="append", default=[], metavar="NAME=ARG",
                    help="--attention-backend value for a backend (default: its own name)")
    ap.add_argument("--shard", type=str, default=None, help="I/N: run servers I, I+N, ... of the (model x backend) list")
    ap.add_argument("--no-resume", action="store_true", help="re-measure points already in the results file")
    ap.add_argument("--deadline-s", type=float, default=0.0,
                    help="do not start a server or point that would end after this many seconds (0: no limit)")
    ap.add_argument("--server-timeout-s", type=float, default=480.0, help="wait this long for /health")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--client-mode", choices=("batched", "per-run"), default="batched")
    ap.add_argument("--model-root", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "kvprefetch-models")
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    ap.add_argument("--log-dir", type=Path, default=None, help="server/client logs (default <out>/../serving-logs)")
    ap.add_argument("--gpu", type=str, default=None, help="results slug (default from nvidia-smi)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--merge-from", type=Path, nargs="+", default=[], metavar="JSON",
                    help="with --render-only: merge these results files (e.g. one per GPU of a campaign, all of one "
                         "commit) into <out>/serving-<gpu>.json, replacing it, then render")
    args = ap.parse_args(argv)
    if args.models is None:
        args.models = list(sr.LARGE_MODELS if args.large else sr.MODELS)
    if args.merge_from and not args.render_only:
        ap.error("--merge-from goes with --render-only")
    bad = [b for b in args.backends if b not in sr.BACKENDS and not any(n.startswith(b + "=") for n in args.backend_name)]
    if bad:
        ap.error(f"unknown backends {bad} (give --backend-name NAME=ARG for others)")
    bad = [m for m in args.models if m not in sr.PREFILL_TOK_S]
    if bad:
        ap.error(f"unknown models {bad}; choose from {sorted(sr.PREFILL_TOK_S)}")
    args.workload_list = sr.parse_workloads(args.workloads, sr.LARGE_WORKLOADS if args.large else sr.WORKLOADS)
    args.shard_tuple = sr.parse_shard(args.shard)
    args.backend_args = dict(n.split("=", 1) for n in args.backend_name)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------- pieces

def server_cmd(server: sr.Server, model_dir: Path, port: int, args: argparse.Namespace) -> List[str]:
    max_bs = args.cuda_graph_max_bs or max([8] + [w.max_concurrency or sr.num_prompts_for(w, args.num_prompts)
                                                  for w in args.workload_list])
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_dir), "--load-format", "dummy",
            "--attention-backend", args.backend_args.get(server.backend, server.backend),
            "--host", "127.0.0.1", "--port", str(port), "--mem-fraction-static", str(args.mem_fraction_static),
            "--cuda-graph-max-bs-decode", str(max_bs), "--cuda-graph-backend-prefill", "disabled",
            "--disable-radix-cache", "--page-size", str(server.page_size), "--kv-cache-dtype", args.kv_cache_dtype,
            ] + shlex.split(args.server_args)


def client_argv(w: sr.Workload, model_dir: Path, port: int, num_prompts: int, seed: int, output_file: Path,
                warmup: int) -> List[str]:
    return ["--backend", "sglang", "--host", "127.0.0.1", "--port", str(port), "--model", str(model_dir),
            "--tokenizer", str(model_dir), "--dataset-name", "random-ids", "--random-input-len", str(w.input_len),
            "--random-output-len", str(w.output_len), "--random-range-ratio", "1.0", "--tokenize-prompt",
            "--num-prompts", str(num_prompts), "--max-concurrency", str(w.max_concurrency or num_prompts), "--seed", str(seed),
            "--output-file", str(output_file), "--disable-tqdm", "--warmup-requests", str(warmup),
            "--ready-check-timeout-sec", "60"]


# ---------------------------------------------------------------------------------------------- main

def result_paths(out: Path, slug: str) -> Dict[str, Path]:
    return {ext: out / f"serving-{slug}.{ext}" for ext in ("json", "md", "png")}


def write_outputs(doc: Dict[str, Any], paths: Dict[str, Path], png: bool = True) -> Optional[str]:
    doc["rows"] = sr.derive(doc.get("rows", []))
    rio.write_json(paths["json"], doc)
    rio.write_text(paths["md"], serving_report.render_md(doc))
    return serving_report.render_png(doc, paths["png"]) if png else None


def merge_files(sources: List[Path], dest: Path) -> Optional[str]:
    """One results doc from several of the same commit and device; the reason when they can't be merged."""
    docs = [rio.load_json(p) for p in sources]
    if any(d is None for d in docs):
        return f"missing or unreadable: {[str(p) for p, d in zip(sources, docs) if d is None]}"
    stamps = {(d.get("device"), d.get("commit"), d.get("dirty")) for d in docs}
    if len(stamps) != 1:
        return f"the files differ in (device, commit, dirty): {sorted(map(str, stamps))}"
    doc = {k: v for k, v in docs[0].items() if k not in ("rows", "runs")}
    doc["runs"], doc["rows"] = [], []
    for p, d in zip(sources, docs):
        doc["runs"] += [dict(r, source=p.parent.name) for r in d.get("runs", [])]
        doc["rows"] = rio.merge_rows(doc["rows"], d.get("rows", []), sr.point_key)
    rio.write_json(dest, doc)
    return None


def render_only(args: argparse.Namespace) -> int:
    if args.merge_from:
        dest = args.out / f"serving-{args.gpu or 'h100'}.json"
        why = merge_files(args.merge_from, dest)
        if why:
            print(f"cannot merge: {why}")
            return 1
        print(f"merged {len(args.merge_from)} files into {dest}")
    jsons = [args.out / f"serving-{args.gpu}.json"] if args.gpu else sorted(args.out.glob("serving-*.json"))
    if not jsons:
        print(f"no serving-*.json in {args.out}")
        return 1
    for j in jsons:
        doc = rio.load_json(j)
        if doc is None:
            print(f"missing {j}")
            return 1
        for r in doc.get("rows", []):  # summaries again from the stored runs (aggregation fixes apply)
            if r.get("runs") and not r.get("skipped"):
                base_note = re.split(r"(?:; )?TPOT/TTFT from", r.get("note") or "")[0] or None
                sr.aggregate(r, r["runs"], r.get("num_prompts") or 0, base_note)
        doc["rows"] = sr.derive(doc.get("rows", []))
        rio.write_json(j, doc)
        why = write_outputs(doc, result_paths(args.out, j.stem[len("serving-"):]))
        print(f"wrote {j.with_suffix('.md')}" + (f"; no png: {why}" if why else f" and {j.with_suffix('.png')}"))
    return 0


def plan_summary(args: argparse.Namespace, done: set) -> Tuple[List[sr.Server], float]:
    kv = sr.kv_dtype_label(args.kv_cache_dtype)
    servers = sr.plan_servers(args.models, args.backends, args.page_size, kv, args.shard_tuple)
    total = 0.0
    for s in servers:
        todo = sr.pending(s, args.workload_list, done)
        est = sr.estimate_server_s(s, todo, args.repeats, args.num_prompts) if todo else 0.0
        total += est
        print(f"  {s.model:13s} {s.backend:10s} page {s.page_size} kv {s.kv_dtype}: {len(todo)} point(s) to run"
              + (f", ~{est / 60:.1f} min" if todo else " (done)"))
    return servers, total


def dry_run(args: argparse.Namespace) -> int:
    slug = args.gpu or "h100"
    doc = rio.load_json(result_paths(args.out, slug)["json"]) or {}
    done = set() if args.no_resume else sr.done_points(doc.get("rows", []))
    print(f"workloads: {[w.label() for w in args.workload_list]}; repeats {args.repeats}")
    _, total = plan_summary(args, done)
    print(f"estimate ~{total / 60:.1f} min (H100; server start-up dominates small runs)")
    return 0


def kvprefetch_env() -> Dict[str, str]:
    """The KVPREFETCH_* knobs the servers inherit: they change what the kvprefetch rows measured."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("KVPREFETCH_")}


def run(args: argparse.Namespace) -> int:
    t_start = time.time()
    name = gpu_name()
    slug = args.gpu or rio.device_slug(name)
    paths = result_paths(args.out, slug)
    log_dir = args.log_dir or (args.out.parent / "serving-logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    old = rio.load_json(paths["json"]) or {}
    doc: Dict[str, Any] = {"device": name, "gpu": slug}
    doc.update(rio.stamp())
    doc["runs"] = list(old.get("runs", [])) + [{"started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                 "argv": sys.argv[1:], "commit": doc["commit"], "dirty": doc["dirty"],
                                                 "kvprefetch_env": kvprefetch_env()}]
    doc["rows"] = list(old.get("rows", []))
    done = set() if args.no_resume else sr.done_points(doc["rows"])
    print(f"serving_bench on {name}; results {paths['json']}; logs {log_dir}")
    servers, total = plan_summary(args, done)
    print(f"estimate ~{total / 60:.1f} min" + (f"; deadline {args.deadline_s:.0f} s" if args.deadline_s else ""),
          flush=True)
    env = server_env()

    def left() -> float:
        return (args.deadline_s - (time.time() - t_start)) if args.deadline_s else float("inf")

    def save(png: bool = False) -> Optional[str]:
        doc["runs"][-1]["wall_s"] = round(time.time() - t_start, 1)
        return write_outputs(doc, paths, png=png)

    def record(rows: List[Dict[str, Any]]) -> None:
        doc["rows"] = rio.merge_rows(doc["rows"], rows, sr.point_key)
        save()

    stopped = None
    for server in servers:
        todo = sr.pending(server, args.workload_list, done)
        if not todo:
            continue
        tag = f"{server.model}/{server.backend}"
        why = backend_unavailable(server.backend)
        if why:
            print(f"[{tag}] skipped: {why}", flush=True)
            record([sr.make_row(server, w, sr.num_prompts_for(w, args.num_prompts), [], skipped=why) for w in todo])
            continue
        first = sr.estimate_server_s(server, todo[:1], args.repeats, args.num_prompts)
        if left() < first:
            stopped = f"deadline: not enough time left ({left():.0f} s) to start {tag} (~{first:.0f} s)"
            break
        model_dir = ensure_model(server.model, args.model_root)
        port = free_port()
        attn = args.backend_args.get(server.backend, server.backend)
        stem = f"{server.model}-{server.backend}-p{server.page_size}-{server.kv_dtype}"
        srv = ServerProcess(server_cmd(server, model_dir, port, args), port, log_dir / f"server-{stem}.log", env)
        print(f"[{tag}] starting: {' '.join(srv.cmd[1:])}", flush=True)
        t0 = time.time()
        srv.start()
        driver = None
        try:
            ok, msg = srv.wait_healthy(min(args.server_timeout_s, max(left(), 1.0)))
            print(f"[{tag}] {msg} ({time.time() - t0:.0f} s)", flush=True)
            if not ok:
                if "no /health" in msg and left() < args.server_timeout_s:
                    stopped = f"deadline while starting {tag}"
                    break
                record([sr.make_row(server, w, sr.num_prompts_for(w, args.num_prompts), [], attention_backend=attn,
                                    skipped=f"server failed to start: {msg}") for w in todo])
                continue
            fb = fallback_line(srv.log_text()) if server.backend == "kvprefetch" else None
            if fb:
                print(f"[{tag}] kvprefetch FELL BACK: {fb}", flush=True)
                record([sr.make_row(server, w, sr.num_prompts_for(w, args.num_prompts), [], attention_backend=attn,
                                    skipped=f"kvprefetch fell back to Triton: {fb}") for w in todo])
                continue
            client_log = log_dir / f"client-{stem}.log"
            if args.client_mode == "batched":
                driver = ClientDriver(client_log, env)
                ok, msg = driver.ready()
                if not ok:
                    print(f"[{tag}] batched client failed to start ({msg}); using one process per run", flush=True)
                    driver.close()
                    driver = None
            for w in todo:
                n = sr.num_prompts_for(w, args.num_prompts)
                est = sr.estimate_point_s(server.model, w, n, args.repeats)
                if left() < est:
                    stopped = f"deadline: {left():.0f} s left, next point {w.label()} needs ~{est:.0f} s"
                    break
                runs, errors = [], []
                t_p = time.time()
                for rep in range(args.repeats):
                    out_file = log_dir / f"bench-{stem}-{w.input_len}-{w.output_len}-{w.max_concurrency}-r{rep}.jsonl"
                    if out_file.exists():
                        out_file.unlink()
                    argv = client_argv(w, model_dir, port, n, args.seed + rep, out_file, 1 if rep == 0 else 0)
                    timeout = 3 * est / args.repeats + 180
                    if driver is not None and driver.alive():
                        ok, msg = driver.run(argv, timeout)
                    else:
                        ok, msg = run_client_once(argv, client_log, timeout, env)
                    res = read_result(out_file) if ok else None
                    if res is None:
                        errors.append(msg or "no result line")
                        if not srv.healthy():
                            break
                        continue
                    runs.append(res)
                if runs:
                    row = sr.make_row(server, w, n, runs, attention_backend=attn,
                                      note=("; ".join(errors)[:200] if errors else None))
                    print(f"[{tag}] {w.label()}: {row['output_tok_s']:.1f} tok/s, TPOT p50 {row['tpot_ms_p50']:.2f} ms "
                          f"(spread {100 * (row['tpot_spread'] or 0):.1f}%), TTFT p50 {row['ttft_ms_p50']:.0f} ms, "
                          f"{len(runs)} run(s) in {time.time() - t_p:.0f} s", flush=True)
                else:
                    row = sr.make_row(server, w, n, [], attention_backend=attn,
                                      skipped=f"no run completed: {'; '.join(errors)[:300]}")
                    print(f"[{tag}] {w.label()}: FAILED {row['skipped']}", flush=True)
                record([row])
                if not srv.healthy():
                    print(f"[{tag}] server no longer healthy: {srv.log_tail()}", flush=True)
                    break
        finally:
            if driver is not None:
                driver.close()
            srv.stop()
            print(f"[{tag}] stopped; {time.time() - t_start:.0f} s elapsed", flush=True)
        if stopped:
            break

    doc["runs"][-1]["stopped"] = stopped
    why = save(png=True)
    print(f"wrote {paths['json']} and {paths['md']}" + (f"; no png ({why})" if why else f" and {paths['png']}"))
    if stopped:
        print(f"STOPPED: {stopped}. Rerun the same command to continue (finished points are kept).")
    print(f"wall time {time.time() - t_start:.0f} s")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return render_only(args)
    if args.dry_run:
        return dry_run(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
