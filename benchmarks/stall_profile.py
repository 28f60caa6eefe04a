#!/usr/bin/env python3
"""Why a decode kernel is slower than the bytes it reads: Nsight Compute's scheduler, warp-state, occupancy and
throughput sections for kvprefetch (and its experiment variants) beside the peers, per shape — issue-slot use,
achieved occupancy, DRAM and SM throughput, and the largest warp stall reasons (clocks not locked).

    python benchmarks/stall_profile.py [--fp8] [--hd64] [--page-size 16] [--shapes 1x1024,8x2048,32x16384]
                                       [--kernels kvprefetch kvprefetch_q8 fa3 xqa] [--out benchmarks/results]
    python benchmarks/stall_profile.py --dry-run        # the plan and the ncu command line; no GPU

The command runs itself (--child) under ncu with ncu_calls.py's NVTX ranges (L2 flushed before every profiled
launch). Per call: metrics weighted by each launch's duration (a split-KV merge is a second launch), durations
summed; the row is the mean of the calls. Writes <out>/stalls-<gpu>.json (every collected metric, rows merged by
(shape, kernel)) and .md (the headline columns).
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_grid as kg  # noqa: E402
import l2_ncu as nc  # noqa: E402
import l2_telemetry as l2  # noqa: E402
import ncu_calls  # noqa: E402
import ncu_rows as nr  # noqa: E402
import results_io as rio  # noqa: E402

SECTIONS = ("SpeedOfLight", "Occupancy", "SchedulerStats", "WarpStateStats", "ComputeWorkloadAnalysis", "LaunchStats")
# counters summed over a call's launches (not duration-weighted): DRAM bytes read, and L2 read sectors with their hits
COUNTERS = ("dram__bytes_read.sum", "lts__t_sectors_srcunit_tex_op_read.sum",
            "lts__t_sectors_srcunit_tex_op_read_lookup_hit.sum")
WARMUP, CALLS = 3, 2
DEFAULT_KERNELS = ("kvprefetch", "fa3", "xqa", "flashinfer_tc")
_STALL = re.compile(r"smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio")
# headline columns of the table: (title, metric-name prefixes tried in order)
HEADLINE = (("issue active %", ("smsp__issue_active.avg.pct_of_peak_sustained_active",)),
            ("warps active %", ("sm__warps_active.avg.pct_of_peak_sustained_active",)),
            ("DRAM % of peak", ("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
                                "dram__throughput.avg.pct_of_peak_sustained_elapsed")),
            ("SM % of peak", ("sm__throughput.avg.pct_of_peak_sustained_elapsed",)))
DRAM_PER_KV = "DRAM read / KV bytes"
TOP_STALLS = 4


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT, help="results folder")
    ap.add_argument("--shapes", default="1x1024,8x2048,32x16384", help="batch x ctx list, e.g. 1x1K,8x2K")
    ap.add_argument("--kernels", nargs="+", default=list(DEFAULT_KERNELS),
                    help="peers (" + " ".join(kg.PEER_KERNELS) + "), kvprefetch, kvprefetch_d0 and experiment "
                         "variants kvprefetch[_s<N>][_pdl][_q8][_h16][_lr][_x<splits>]")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--fp8", action="store_true", help="KV cache float8_e4m3fn instead of bf16")
    ap.add_argument("--hd64", action="store_true", help="32 q / 8 kv heads, d 64 instead of 32/8/128")
    ap.add_argument("--ncu", default=None, help="path of ncu (default: $NCU, PATH, /opt/nvidia/nsight-compute, CUDA)")
    ap.add_argument("--timeout-s", type=float, default=480.0, help="limit for ncu + child; rows are still written")
    ap.add_argument("--gpu", default=None, help="results slug (default: from the device name)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the ncu command line; no GPU")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        args.shape_list = kg.parse_shapes(args.shapes)
    except ValueError as e:
        ap.error(str(e))
    bad = [k for k in args.kernels if k not in kg.PEER_KERNELS and kg.parse_variant(k) is None]
    if bad:
        ap.error(f"--kernels: unknown {bad}; expected peers {list(kg.PEER_KERNELS)}, kvprefetch_d0 or "
                 "kvprefetch[_s<N>][_pdl][_q8][_h16][_lr][_x<N>]")
    if args.page_size < 1 or args.page_size & (args.page_size - 1):
        ap.error(f"--page-size: expected a power of two, got {args.page_size}")
    return args


def shape_of(args: argparse.Namespace, batch: int, ctx: int) -> kg.Shape:
    heads = kg.HEAD_SHAPES["hd64" if args.hd64 else "llama3_8b"]
    return kg.Shape(batch, ctx, args.page_size, *heads, "fp8_e4m3" if args.fp8 else "bf16")


def child_argv(args: argparse.Namespace, manifest: Path) -> List[str]:
    flags = (["--fp8"] if args.fp8 else []) + (["--hd64"] if args.hd64 else [])
    return [sys.executable, str(Path(__file__).resolve()), "--child", "--manifest", str(manifest),
            "--shapes", ",".join(f"{b}x{c}" for b, c in args.shape_list), "--page-size", str(args.page_size),
            "--kernels", *args.kernels, "--seed", str(args.seed), *flags]


def collect_args() -> List[str]:
    return [a for s in SECTIONS for a in ("--section", s)] + ["--metrics", ",".join(COUNTERS)]


def child(args: argparse.Namespace) -> int:
    import kernel_peers as kp

    adapters = dict(kp.ADAPTERS)
    for name in args.kernels:
        v = kg.parse_variant(name)
        if name not in adapters and v:
            adapters[name] = kp.variant(**v)
    return ncu_calls.run([shape_of(args, b, c) for b, c in args.shape_list], list(args.kernels), adapters,
                         args.manifest, seed=args.seed, warmup=WARMUP, calls=CALLS, extra={})


# ------------------------------------------------------------------------------------------------ parsing

def launches(text: str) -> List[Dict[str, Any]]:
    """One record per profiled launch inside a call range: its call and every numeric metric column."""
    header, units, rows = nc.read_raw(text)
    out = []
    for r in rows:
        call = nc.call_of(r, header)
        if call is None:
            continue
        metrics = {h: nc.number(r.get(h)) for h in header if "__" in h}
        metrics = {h: v for h, v in metrics.items() if v is not None}
        dur = nc.to_us(metrics.pop(nc.DURATION, None), units.get(nc.DURATION, ""))
        out.append({**call, "name": r.get("Kernel Name", "?"), "duration_us": dur, "metrics": metrics})
    return out


def aggregate(records: List[Dict[str, Any]]) -> Dict[Tuple[int, int, str], Dict[str, Any]]:
    """(batch, ctx, kernel) -> {duration_us, metrics, kernels_per_call, calls, kernel_names}: per call, each metric
    weighted by its launches' durations (COUNTERS summed) and durations summed; then the mean over calls."""
    calls: Dict[Tuple, Dict[int, List[Dict[str, Any]]]] = {}
    for r in records:
        calls.setdefault((r["batch"], r["ctx"], r["kernel"]), {}).setdefault(r["call"], []).append(r)
    out = {}
    for key, by_call in calls.items():
        per = []
        for ks in by_call.values():
            dur = sum(k["duration_us"] or 0.0 for k in ks)
            w = [(k["duration_us"] or 0.0) / dur if dur > 0 else 1.0 / len(ks) for k in ks]
            names = {m for k in ks for m in k["metrics"]}
            per.append((dur, {m: sum((1.0 if m in COUNTERS else wi) * k["metrics"].get(m, 0.0) for wi, k in zip(w, ks))
                              for m in names}))
        names = {m for _, ms in per for m in ms}
        out[key] = {"duration_us": sum(d for d, _ in per) / len(per),
                    "metrics": {m: sum(ms.get(m, 0.0) for _, ms in per) / len(per) for m in sorted(names)},
                    "kernels_per_call": sorted({len(ks) for ks in by_call.values()}), "calls": len(per),
                    "kernel_names": sorted({k["name"] for ks in by_call.values() for k in ks})}
    return out


def headline(metrics: Dict[str, float], kv_bytes: float) -> Dict[str, Optional[float]]:
    """HEADLINE's columns, and DRAM bytes read per KV byte (over 1: bytes fetched beyond the KV, e.g. whole sectors
    or rows for partial ones; the q, page-table and partials' bytes are under 1 %)."""
    out = {title: next((metrics[p] for p in prefixes if p in metrics), None) for title, prefixes in HEADLINE}
    dram = metrics.get(COUNTERS[0])
    out[DRAM_PER_KV] = dram / kv_bytes if dram is not None and kv_bytes > 0 else None
    return out


def top_stalls(metrics: Dict[str, float], n: int = TOP_STALLS) -> List[Tuple[str, float]]:
    """The n largest stall reasons (warps stalled per issued instruction), e.g. [('long_scoreboard', 3.1), ...]."""
    stalls = [(m.group(1), v) for k, v in metrics.items() for m in [_STALL.fullmatch(k)] if m]
    return sorted(stalls, key=lambda s: -s[1])[:n]


# ------------------------------------------------------------------------------------------------ parent

def build_rows(args: argparse.Namespace, man: Dict[str, Any], measured: Dict[Tuple, Dict[str, Any]],
               missing_reason: str) -> List[Dict[str, Any]]:
    entries = {(e["batch"], e["ctx"], e["kernel"]): e for e in man.get("entries", [])}
    rows = []
    for batch, ctx in args.shape_list:
        s = shape_of(args, batch, ctx)
        for name in args.kernels:
            e = entries.get((batch, ctx, name), {})
            m = measured.get((batch, ctx, name)) if not e.get("skipped") else None
            row: Dict[str, Any] = {"shape": nr.shape_fields(s, with_dtype=True), "kernel": name,
                                   "kv_mb": s.kv_bytes / 1e6, "duration_us": None, "skipped": None}
            if m:
                row.update(m, max_rel_err=e.get("max_rel_err"), headline=headline(m["metrics"], s.kv_bytes),
                           top_stalls=top_stalls(m["metrics"]))
            else:
                row["skipped"] = nr.skip_reason(e, missing_reason)
            rows.append(row)
    return rows


def render_md(doc: Dict[str, Any]) -> str:
    v = doc.get("versions") or {}
    out = [f"# Warp stalls and issue use — {doc.get('device', '?')}\n",
           f"commit `{doc.get('commit')}`{' (dirty)' if doc.get('dirty') else ''}; ncu {doc.get('ncu_version')}; "
           f"torch {v.get('torch')}, FlashInfer {v.get('flashinfer')}, sgl-kernel {v.get('sglang_kernel')}; "
           f"sections {', '.join(SECTIONS)}; clocks not locked, L2 flushed before each profiled launch. Stalls: "
           "warps stalled per issued instruction, by reason (largest first).\n"]
    titles = [t for t, _ in HEADLINE]
    for heading, rows in nr.by_shape(doc.get("rows", [])):
        out.append(heading)
        table = []
        for r in rows:
            if r["skipped"] is not None:
                table.append([r["kernel"], "", *([""] * (len(HEADLINE) + 1)), f"skipped: {r['skipped']}"])
                continue
            h = r["headline"]
            table.append([r["kernel"], rio.fmt_num(r["duration_us"]),
                          *(rio.fmt_num(h[t]) if h.get(t) is not None else "—" for t in (*titles, DRAM_PER_KV)),
                          ", ".join(f"{name} {val:.2f}" for name, val in r["top_stalls"]) or "—"])
        out.append(rio.md_table(["kernel", "µs per call", *titles, DRAM_PER_KV, "top stalls"], table,
                                ["l", "r", *(["r"] * (len(HEADLINE) + 1)), "l"]))
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    ncu = nc.find(args.ncu)
    man: Dict[str, Any] = {}
    measured: Dict[Tuple, Dict[str, Any]] = {}
    version = cmd = None
    if ncu is None:
        reason = "Nsight Compute (ncu) not found (looked at --ncu, $NCU, PATH, /opt/nvidia/nsight-compute, CUDA)"
    else:
        version = nc.version(ncu)
        print(f"stall_profile: {ncu} ({version}); {len(args.shape_list)} shapes x {args.kernels}", flush=True)
        rc, text, man, cmd = nc.profiled(ncu, lambda manifest: child_argv(args, manifest), args.timeout_s,
                                         collect_args())
        try:
            measured = aggregate(launches(text))
        except ValueError as e:
            text += f"\n==ERROR== ncu CSV not understood: {e}"
        reason = nc.unmeasured_reason(text, rc)
    name = man.get("device") or l2.device_name()
    slug = args.gpu or rio.device_slug(name)
    json_path, md_path = args.out / f"stalls-{slug}.json", args.out / f"stalls-{slug}.md"
    doc: Dict[str, Any] = {"device": name, "gpu": slug, "capability": man.get("capability")}
    doc.update(rio.stamp({"cuda": man.get("cuda")}))
    doc.update(ncu_version=version, ncu_command=shlex.join(cmd) if cmd else None, sections=list(SECTIONS))
    rows = build_rows(args, man, measured, reason)
    return nr.write(doc, rows, json_path, md_path, render_md)


def dry_run(args: argparse.Namespace) -> int:
    s = shape_of(args, *args.shape_list[0])
    print(f"shapes: {[f'{b}x{rio.fmt_tokens(c)}' for b, c in args.shape_list]} (page {s.page_size}, "
          f"{s.num_qo_heads}/{s.num_kv_heads} heads, d {s.head_dim}, {s.kv_dtype})")
    print(f"kernels: {args.kernels}; {WARMUP} warm-up + {CALLS} profiled calls each; sections {list(SECTIONS)}")
    print(nc.describe_command(args.ncu, lambda manifest: child_argv(args, manifest), collect_args()))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    return dry_run(args) if args.dry_run else run(args)


if __name__ == "__main__":
    sys.exit(main())
