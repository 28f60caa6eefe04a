#!/usr/bin/env python3
"""L2 telemetry: L2 hit rate and DRAM traffic of kvprefetch with prefetch off (d0) and on (pf<N>) vs the peers
flashinfer_tc and fa3, from Nsight Compute counters (clocks not locked: --clock-control none).

    python benchmarks/l2_telemetry.py [--out benchmarks/results] [--shapes 1x16384,8x2048,32x16384] [--distance 2]
    python benchmarks/l2_telemetry.py --dry-run          # the plan and the ncu command line; no GPU

The command runs itself (--child) under ncu. The child, per shape and kernel, makes warm-up calls outside any NVTX
range, then CALLS calls each inside the ranges `l2tel` > `l2.<B>x<ctx>.<kernel>.c<i>`; ncu profiles only launches
under `l2tel` and its raw CSV names each launch's range (l2_ncu.py parses it). Cold L2: ncu's
--cache-control all flushes the caches before every profiled launch, and the calls also rotate over separately
allocated KV pools totalling > 4x L2. Writes <out>/l2-<gpu>.json (rows merged by (shape, kernel)) and .md.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_grid as kg  # noqa: E402
import l2_ncu as nc  # noqa: E402
import ncu_calls  # noqa: E402
import ncu_rows as nr  # noqa: E402
import results_io as rio  # noqa: E402

HEADS = kg.HEAD_SHAPES["llama3_8b"]
PAGE_SIZE = 16
KV_DTYPE = "bf16"
WARMUP = 3
CALLS = 2
PEERS = ("flashinfer_tc", "fa3")
DEFAULT_SHAPES = "1x16384,8x2048,32x16384"
METHOD = {
    "ncu": "Nsight Compute, --clock-control none --cache-control all (L2 flushed before every profiled launch, so "
           "a call's second launch, e.g. a split-KV merge, also starts cold), metrics " + ", ".join(nc.METRICS),
    "per_call": f"{CALLS} calls per (shape, kernel) after {WARMUP} unprofiled warm-up calls; per call: durations and "
                "DRAM bytes summed over all its launches, L2 hit rate weighted by L2 sectors (hit_weighting), DRAM % "
                "of peak weighted by duration; the row is the mean of the calls",
    "inputs": "pages of every request scattered at random over the pool (kernel_peers.Problem); calls rotate over "
              "separately allocated KV pools totalling > 4x L2",
    "units": "dram_read_mb, kv_mb: 10^6 bytes; kv_mb = the K+V bytes one call must read",
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT, help="results folder")
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="batch x ctx list, e.g. 1x16384,8x2K")
    ap.add_argument("--distance", type=int, default=2, help="prefetch distance of the kvprefetch_pf<N> row (1..8)")
    ap.add_argument("--ncu", default=None, help="path of ncu (default: $NCU, PATH, /opt/nvidia/nsight-compute, CUDA)")
    ap.add_argument("--timeout-s", type=float, default=480.0, help="limit for ncu + child; rows are still written")
    ap.add_argument("--gpu", default=None, help="results slug (default: from the device name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the ncu command line; no GPU")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 1 <= args.distance <= 8:
        ap.error("--distance: expected 1..8 (distance 0 is the kvprefetch_d0 row)")
    try:
        args.shape_list = kg.parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(str(e))
    return args


def kernels(distance: int) -> List[str]:
    return ["kvprefetch_d0", f"kvprefetch_pf{distance}", *PEERS]


def shape_of(batch: int, ctx: int) -> kg.Shape:
    return kg.Shape(batch, ctx, PAGE_SIZE, *HEADS, KV_DTYPE)


def child_argv(args: argparse.Namespace, manifest: Path) -> List[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", "--manifest", str(manifest),
            "--shapes", ",".join(f"{b}x{c}" for b, c in args.shape_list), "--distance", str(args.distance),
            "--seed", str(args.seed)]


# ------------------------------------------------------------------------------------------------ child (GPU)

def child(args: argparse.Namespace) -> int:
    import kernel_peers as kp

    names = kernels(args.distance)
    adapters = dict(kp.ADAPTERS)
    adapters[names[1]] = type("KvPrefetchPf", (kp.KvPrefetch,), {"name": names[1], "distance": args.distance})
    return ncu_calls.run([shape_of(b, c) for b, c in args.shape_list], names, adapters, args.manifest,
                         seed=args.seed, warmup=WARMUP, calls=CALLS,
                         extra={"prefetch_mode": os.environ.get("KVPREFETCH_PREFETCH_MODE", "line")})


# ------------------------------------------------------------------------------------------------ parent

def device_name() -> str:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30)
        return r.stdout.splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_rows(args: argparse.Namespace, man: Dict[str, Any], measured: Dict[Tuple, Dict[str, Any]],
               missing_reason: str) -> List[Dict[str, Any]]:
    entries = {(e["batch"], e["ctx"], e["kernel"]): e for e in man.get("entries", [])}
    rows = []
    for batch, ctx in args.shape_list:
        s = shape_of(batch, ctx)
        for name in kernels(args.distance):
            key = (batch, ctx, name)
            e = entries.get(key, {})
            m = measured.get(key) if not e.get("skipped") else None
            row: Dict[str, Any] = {
                "shape": nr.shape_fields(s), "kernel": name, "l2_hit_pct": None, "dram_pct_peak": None,
                "dram_read_mb": None, "kv_mb": s.kv_bytes / 1e6, "duration_us": None, "kernels_per_call": None, "skipped": None}
            if name.startswith("kvprefetch"):
                row["prefetch_distance"] = e.get("prefetch_distance", 0 if name.endswith("_d0") else args.distance)
            if m:
                row.update({k: m[k] for k in ("l2_hit_pct", "dram_pct_peak", "dram_read_mb", "duration_us",
                                              "kernels_per_call", "hit_weighting", "kernel_names")})
                row["dram_read_over_kv"] = m["dram_read_mb"] / row["kv_mb"]
                row["max_rel_err"] = e.get("max_rel_err")
            else:
                row["skipped"] = nr.skip_reason(e, missing_reason)
            rows.append(row)
    return rows


def render_md(doc: Dict[str, Any]) -> str:
    v = doc.get("versions") or {}
    out = [f"# L2 telemetry — {doc.get('device', '?')}\n",
           f"commit `{doc.get('commit')}`{' (dirty)' if doc.get('dirty') else ''}; ncu {doc.get('ncu_version')}; "
           f"torch {v.get('torch')}, FlashInfer {v.get('flashinfer')}, sgl-kernel {v.get('sglang_kernel')}, "
           f"CUDA {v.get('cuda')}; L2 {doc.get('l2_mb')} MB.\n"]
    out += [f"- {k}: {t}" for k, t in (doc.get("method") or {}).items()]
    for heading, rows in nr.by_shape(doc.get("rows", [])):
        out.append(heading)
        table = []
        for r in rows:
            ok = r["skipped"] is None
            table.append([r["kernel"], r.get("prefetch_distance", ""),
                          *(rio.fmt_num(r[f]) if ok else "" for f in ("l2_hit_pct", "dram_pct_peak", "dram_read_mb")),
                          rio.fmt_num(r.get("dram_read_over_kv"), 2) if ok else "",
                          rio.fmt_num(r["duration_us"]) if ok else "", r["kernels_per_call"] if ok else "",
                          "" if ok else f"skipped: {r['skipped']}"])
        out.append(rio.md_table(["kernel", "prefetch", "L2 hit %", "DRAM % of peak", "DRAM read MB",
                                 "read / KV", "µs per call", "kernels per call", "note"], table,
                                ["l", "r", "r", "r", "r", "r", "r", "r", "l"]))
        peers = [r for r in rows if r["kernel"] in PEERS and r["skipped"] is None]
        if peers:
            best = min(peers, key=lambda r: r["duration_us"])
            out.append(f"Fastest peer here (under ncu): {best['kernel']}.\n")
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    ncu = nc.find(args.ncu)
    man: Dict[str, Any] = {}
    measured: Dict[Tuple, Dict[str, Any]] = {}
    version = cmd = None
    if ncu is None:
        reason = ("Nsight Compute (ncu) not found (looked at --ncu, $NCU, PATH, /opt/nvidia/nsight-compute/*/ncu, "
                  "/usr/local/cuda*/bin/ncu)")
    else:
        version = nc.version(ncu)
        print(f"l2_telemetry: {ncu} ({version}); plan {len(args.shape_list)} shapes x {kernels(args.distance)}",
              flush=True)
        rc, text, man, cmd = nc.profiled(ncu, lambda manifest: child_argv(args, manifest), args.timeout_s)
        try:
            measured = nc.aggregate(nc.launches(text))
        except ValueError as e:
            text += f"\n==ERROR== ncu CSV not understood: {e}"
        reason = nc.unmeasured_reason(text, rc)
    if not measured:
        print(f"l2_telemetry: nothing measured: {reason}", flush=True)
    name = man.get("device") or device_name()
    slug = args.gpu or rio.device_slug(name)
    json_path, md_path = args.out / f"l2-{slug}.json", args.out / f"l2-{slug}.md"
    doc: Dict[str, Any] = {"device": name, "gpu": slug, "capability": man.get("capability"),
                           "l2_mb": man.get("l2_mb")}
    doc.update(rio.stamp({"cuda": man.get("cuda")}))
    doc.update(ncu_version=version, ncu_command=shlex.join(cmd) if cmd else None,
               prefetch_mode=man.get("prefetch_mode"), method=METHOD)
    rows = build_rows(args, man, measured, reason)
    return nr.write(doc, rows, json_path, md_path, render_md)


def dry_run(args: argparse.Namespace) -> int:
    print(f"shapes: {[f'{b}x{rio.fmt_tokens(c)}' for b, c in args.shape_list]} (page {PAGE_SIZE}, "
          f"{HEADS[0]}/{HEADS[1]} heads, d {HEADS[2]}, {KV_DTYPE})")
    print(f"kernels: {kernels(args.distance)}; {WARMUP} warm-up + {CALLS} profiled calls each")
    print(nc.describe_command(args.ncu, lambda manifest: child_argv(args, manifest)))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    return dry_run(args) if args.dry_run else run(args)


if __name__ == "__main__":
    sys.exit(main())
