#!/usr/bin/env python3
"""Decode-attention kernel benchmark: kvprefetch vs FlashInfer (CUDA-core, tensor-core, cuDNN), XQA,
SGLang's Triton decode kernel and FA3, on the same inputs in one process, in two L2 regimes.

    python benchmarks/kernel_bench.py                      # default grid: bf16, page 1 and 16, 32/8 heads, d 128
    python benchmarks/kernel_bench.py --quick              # 5 shapes, page 16
    python benchmarks/kernel_bench.py --fp8 | --page-size-64 | --group7 | --hd64   (variants; they combine)
    python benchmarks/kernel_bench.py --only kvprefetch flashinfer_cc
    python benchmarks/kernel_bench.py --dry-run            # plan + time estimate, no GPU
    python benchmarks/kernel_bench.py --render-only        # md + png again from the JSON (e.g. on a CPU box)

Writes <out>/kernel-<gpu>.json (rows merged with an existing file by (regime, shape, kernel)), .md, .png.
How each regime is timed: see graph_timing.py; the peers and their exact calls: see kernel_peers.py.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_grid as kg  # noqa: E402
import kernel_report  # noqa: E402
import kernel_rows as kr  # noqa: E402
import results_io as rio  # noqa: E402

FATAL_CUDA = ("illegal memory access", "unspecified launch failure", "misaligned address", "device-side assert",
              "illegal instruction", "an illegal", "uncorrectable ecc")
# Failures that will recur for every shape of a config (a JIT build, a missing package, an unsupported
# dtype/size): recorded once, then the kernel is skipped for the rest of that config without retrying.
CONFIG_LEVEL_HINTS = ("ninja", "compil", "nvcc", "build", "unavailable", "not supported", "unsupported",
                      "no kernel", "invalid dtype", "invalid page_size", "invalid head_dim", "only supports",
                      "incompatible", "expected one of", "expected a gqa group")
# Measured order: cheap and seeded first; XQA last so its background build has time to finish.
RUN_ORDER = ("read_bound", "kvprefetch", "kvprefetch_d0", "flashinfer_cc", "flashinfer_tc", "sglang_triton", "fa3",
             "flashinfer_cudnn", "xqa")
WARM_S = 0.3  # GPU-busy seconds before each shape's first timed row (the H200's first-row bias, NOTES run 13i)
MAX_SPLITS_SWEPT = 64  # --splits: the split workspace is sized for the largest batch at that count (64: ~270 MB)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shapes (1,1K) (1,16K) (8,2K) (64,512) (32,16K), page 16")
    ap.add_argument("--shapes", type=str, default=None,
                    help="batch x ctx list instead of the grid, e.g. 32x512,24x2K (targeted experiments)")
    ap.add_argument("--fp8", action="store_true", help="KV cache float8_e4m3fn (scales 1.0) instead of bf16")
    ap.add_argument("--page-size-64", action="store_true", help="page size 64 instead of 1 and 16")
    ap.add_argument("--page-sizes", type=str, default=None, help="explicit page sizes, e.g. 1,16,64")
    ap.add_argument("--group7", action="store_true", help="28 q / 4 kv heads, d 128 instead of 32/8/128")
    ap.add_argument("--hd64", action="store_true", help="32 q / 8 kv heads, d 64 instead of 32/8/128")
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT, help="results folder")
    ap.add_argument("--only", nargs="+", default=None, metavar="KERNEL",
                    help=f"kernels to run (read_bound always runs): {' '.join(kg.ALL_KERNELS)}")
    ap.add_argument("--regimes", nargs="+", default=list(kg.REGIMES), choices=kg.REGIMES)
    ap.add_argument("--layers", type=int, default=32, help="base layer count of the in_sequence graph")
    ap.add_argument("--mem-fraction", type=float, default=0.85, help="of free GPU memory for the layers' KV")
    ap.add_argument("--reserve-gb", type=float, default=4.0, help="GPU memory kept out of the layers' KV")
    ap.add_argument("--deadline-s", type=float, default=0.0,
                    help="stop starting new shapes after this many seconds (0: no limit); results so far are kept")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-prebuild", action="store_true", help="do not compile XQA in a background process")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate; no GPU")
    ap.add_argument("--render-only", action="store_true", help="rewrite .md/.png from the existing JSON")
    ap.add_argument("--gpu", type=str, default=None, help="slug for --render-only/--dry-run (default: all/h100)")
    ap.add_argument("--stages", type=int, nargs="+", default=[], metavar="N",
                    help="also run kvprefetch with an N-deep cp.async ring (kernel kvprefetch_sN; experiments)")
    ap.add_argument("--pdl", action="store_true",
                    help="also run kvprefetch with programmatic dependent launch (kernel kvprefetch_pdl)")
    ap.add_argument("--no-pdl", action="store_true",
                    help="also run kvprefetch without programmatic dependent launch (kernel kvprefetch_nopdl; "
                         "experiment 20's baseline)")
    ap.add_argument("--fp8-q", action="store_true",
                    help="with --fp8: also run kvprefetch with q in e4m3 (kernel kvprefetch_q8; experiment)")
    ap.add_argument("--f16-math", action="store_true",
                    help="with --fp8: also run kvprefetch with fp16 mma (kernel kvprefetch_h16; experiment 16)")
    ap.add_argument("--lazy-rescale", action="store_true",
                    help="also run kvprefetch with lazy output rescaling (kernel kvprefetch_lr, and kvprefetch_h16_lr "
                         "with --f16-math; experiment 17)")
    ap.add_argument("--two-blocks", action="store_true",
                    help="also run kvprefetch with at most two blocks per SM (kernel kvprefetch_b2, and "
                         "kvprefetch_pdl_b2 / kvprefetch_nopdl_b2 with --pdl / --no-pdl; experiment 21)")
    ap.add_argument("--late-trigger", action="store_true",
                    help="also run kvprefetch with PDL released after the main loop (kernel kvprefetch_pdl_lt; "
                         "experiment 23)")
    ap.add_argument("--cluster-merge", action="store_true",
                    help="also run kvprefetch with each request's splits merged in a thread-block cluster (kernel "
                         "kvprefetch_cm, and kvprefetch_cm_x<n> for each --splits n; experiment 30)")
    ap.add_argument("--variant", nargs="+", default=[], metavar="NAME", type=_variant_name,
                    help="also run these kvprefetch variants, named as the flags above name them, in any combination "
                         "(e.g. kvprefetch_s6_pdl_h16_b2; experiment 26)")
    ap.add_argument("--read-bound-last", action="store_true",
                    help="time each shape's read_bound row after the kernels, not before (the H200's first-row check, "
                         "NOTES run 13h)")
    ap.add_argument("--splits", type=int, nargs="+", default=[], metavar="N",
                    help="also run kvprefetch with N KV splits per (request, kv head) instead of the planner's "
                         "(kernel kvprefetch_xN; experiment)")
    ap.add_argument("--grid-splits", nargs="+", default=[], metavar="S:G", type=_split_in_grid,
                    help="also run kvprefetch with S splits per short request in a grid G splits wide, so G - S blocks "
                         "per (request, kv head) exit at once (kernel kvprefetch_xSgG; experiment 15's diagnostic)")
    args = ap.parse_args(argv)
    bad = [n for n in args.stages if not 2 <= n <= 8]
    if bad:
        ap.error(f"--stages: expected values 2..8, got {bad}")
    bad = [n for n in args.splits if not 1 <= n <= MAX_SPLITS_SWEPT]
    if bad:
        ap.error(f"--splits: expected values 1..{MAX_SPLITS_SWEPT}, got {bad}")
    if args.only:
        bad = [k for k in args.only if k not in kg.ALL_KERNELS]
        if bad:
            ap.error(f"unknown kernels {bad}; choose from {list(kg.ALL_KERNELS)}")
    return args


def _split_in_grid(text: str) -> tuple:
    """--grid-splits' 'S:G' -> (S, G) with 1 <= S <= G <= MAX_SPLITS_SWEPT."""
    try:
        s, g = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected S:G (two integers), got {text!r}") from None
    if not 1 <= s <= g <= MAX_SPLITS_SWEPT:
        raise argparse.ArgumentTypeError(f"expected 1 <= S <= G <= {MAX_SPLITS_SWEPT}, got {text!r}")
    return s, g


def _variant_name(text: str) -> str:
    """--variant's NAME: a kvprefetch variant kernel_grid.parse_variant reads (not the default row's own name)."""
    if text in kg.KVPREFETCH_KERNELS or kg.parse_variant(text) is None:
        raise argparse.ArgumentTypeError(f"expected a variant name like kvprefetch_s6_pdl_h16_b2, got {text!r}")
    return text


def experiment_specs(args: argparse.Namespace) -> List[Dict[str, Any]]:
    """The kvprefetch variants asked for with --stages / --pdl / --no-pdl / --fp8-q / --f16-math / --lazy-rescale /
    --two-blocks / --late-trigger / --cluster-merge / --splits / --variant, as kernel_peers.variant() arguments."""
    pdls = [p for p, on in ((True, args.pdl), (False, args.no_pdl)) if on]
    return ([dict(stages=n) for n in args.stages] + [dict(pdl=p) for p in pdls]
            + ([dict(pdl=p, two_blocks=True) for p in pdls or [None]] if args.two_blocks else [])
            + ([dict(pdl=True, late_trigger=True)] if args.late_trigger else [])
            + ([dict(cluster_merge=True)] if args.cluster_merge else [])
            + ([dict(cluster_merge=True, splits=n) for n in args.splits] if args.cluster_merge else [])
            + ([dict(fp8_q=True)] if args.fp8_q else []) + ([dict(f16_math=True)] if args.f16_math else [])
            + ([dict(lazy_rescale=True)] if args.lazy_rescale else [])
            + ([dict(f16_math=True, lazy_rescale=True)] if args.f16_math and args.lazy_rescale else [])
            + [dict(splits=n) for n in args.splits] + [dict(splits=s, grid=g) for s, g in args.grid_splits]
            + [kg.parse_variant(name) for name in args.variant])


def selected(args: argparse.Namespace):
    pages = [int(x) for x in args.page_sizes.split(",")] if args.page_sizes else None
    configs = kg.select_configs(fp8=args.fp8, page_size_64=args.page_size_64, group7=args.group7, hd64=args.hd64,
                                quick=args.quick, page_sizes=pages)
    grid = kg.parse_shapes(args.shapes) if args.shapes else kg.QUICK_GRID if args.quick else kg.GRID
    kernels = [k for k in RUN_ORDER if (args.only is None or k in args.only or k == kg.READ_BOUND)]
    at = max(kernels.index(k) for k in (kg.READ_BOUND, "kvprefetch", "kvprefetch_d0") if k in kernels) + 1
    kernels[at:at] = [kg.variant_name(**s) for s in experiment_specs(args)]
    if args.read_bound_last:
        kernels = [k for k in kernels if k != kg.READ_BOUND] + [kg.READ_BOUND]
    return configs, grid, kernels


def result_paths(out: Path, slug: str) -> Dict[str, Path]:
    return {ext: out / f"kernel-{slug}.{ext}" for ext in ("json", "md", "png")}


def write_outputs(doc: Dict[str, Any], paths: Dict[str, Path], png: bool = True) -> Optional[str]:
    doc["rows"] = kr.derive(doc.get("rows", []), doc.get("hbm_copy_gbps"))
    rio.write_json(paths["json"], doc)
    rio.write_text(paths["md"], kernel_report.render_md(doc))
    if png:
        return kernel_report.render_png(doc, paths["png"])
    return None


def render_only(args: argparse.Namespace) -> int:
    jsons = ([args.out / f"kernel-{args.gpu}.json"] if args.gpu else sorted(args.out.glob("kernel-*.json")))
    if not jsons:
        print(f"no kernel-*.json in {args.out}")
        return 1
    for j in jsons:
        doc = rio.load_json(j)
        if doc is None:
            print(f"missing {j}")
            return 1
        slug = j.stem[len("kernel-"):]
        why = write_outputs(doc, result_paths(args.out, slug))
        print(f"wrote {j.with_suffix('.md')}" + (f"; no png: {why}" if why else f" and {j.with_suffix('.png')}"))
    return 0


def dry_run(args: argparse.Namespace) -> int:
    configs, grid, kernels = selected(args)
    est = kg.estimate_seconds(configs, grid, kernels)
    print(f"configs: {[c.label() for c in configs]}")
    print(f"grid ({len(grid)}): {grid}")
    print(f"kernels: {kernels}; regimes: {args.regimes}")
    print("estimate (H100, 56 GiB for KV): " + ", ".join(f"{k} {v:.0f}" for k, v in est.items()))
    return 0


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    first = msg[0] if msg else ""
    last = msg[-1] if len(msg) > 1 else ""
    txt = f"{type(e).__name__}: {first}" + (f" ... {last}" if last and last != first else "")
    return txt[:400]


def _config_level(e: BaseException, unsupported_type) -> bool:
    if isinstance(e, (ImportError, unsupported_type)):
        return True
    t = f"{type(e).__name__} {e}".lower()
    return any(h in t for h in CONFIG_LEVEL_HINTS)


def run(args: argparse.Namespace) -> int:
    import torch

    if not torch.cuda.is_available():
        print("kernel_bench: no CUDA device (use --dry-run or --render-only on a CPU machine)")
        return 2
    import graph_timing as gt
    import kernel_peers as kp
    import read_bound

    for s in experiment_specs(args):
        kp.ADAPTERS.setdefault(kg.variant_name(**s), kp.variant(**s))

    t_start = time.time()
    dev = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(dev)
    name = torch.cuda.get_device_name(dev)
    slug = args.gpu or rio.device_slug(name)
    cap = torch.cuda.get_device_capability(dev)
    l2_bytes = int(getattr(props, "L2_cache_size", 50 << 20) or (50 << 20))
    sm_count = props.multi_processor_count
    configs, grid, kernels = selected(args)
    paths = result_paths(args.out, slug)
    print(f"kernel_bench on {name} (sm_{cap[0]}{cap[1]}, {sm_count} SMs, L2 {l2_bytes >> 20} MiB, "
          f"{props.total_memory / 2**30:.0f} GiB)", flush=True)
    free0, _ = torch.cuda.mem_get_info(dev)
    budget0 = max(0, int(free0 * args.mem_fraction - args.reserve_gb * 2**30))
    est = kg.estimate_seconds(configs, grid, kernels, mem_budget_bytes=budget0, l2_bytes=l2_bytes)
    print(f"plan: {len(configs)} config(s) x {len(grid)} shapes x {len(kernels)} kernels x {len(args.regimes)} "
          f"regimes; estimate ~{est['total_s'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f}" for k, v in est.items())
          + ")", flush=True)

    prebuild = None
    if "xqa" in kernels and not args.no_prebuild:
        specs = sorted({(c.kv_dtype, c.page_size, c.head_dim, c.num_qo_heads // c.num_kv_heads) for c in configs})
        prebuild_log = str(Path(tempfile.gettempdir()) / "kvprefetch-xqa-prebuild.log")
        prebuild = kp.prebuild_xqa(specs, cap, prebuild_log)
        if prebuild is not None:
            print(f"xqa: compiling {len(specs)} module spec(s) in background pid {prebuild.pid}", flush=True)

    t = time.time()
    hbm = gt.hbm_copy_gbps(dev)
    print(f"HBM copy bandwidth: {hbm:.0f} GB/s ({time.time() - t:.1f} s)", flush=True)
    read_bound.self_test(dev, sm_count)

    old = rio.load_json(paths["json"]) or {}
    doc: Dict[str, Any] = {
        "device": name, "gpu": slug, "capability": f"{cap[0]}.{cap[1]}", "sm_count": sm_count,
        "l2_mb": round(l2_bytes / 2**20, 1), "hbm_copy_gbps": hbm,
    }
    doc.update(rio.stamp({"cuda": torch.version.cuda}))
    doc["method"] = dict(kernel_report.REGIME_TEXT,
                         bytes="gbps counts K+V bytes of the batch + q + o; read_bound rows: the pool bytes read",
                         hbm="hbm_copy_gbps: 1 GiB device-to-device copy, (read + written bytes) / median time",
                         plan="each kernel's plan()/metadata runs once per shape, outside the timed region",
                         correctness=f"max_rel_err vs float32 reference on layer 0, <= 4 requests; "
                                     f"correct = max_rel_err < {kr.REL_ERR_TOL}")
    runs = list(old.get("runs", []))
    this_run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:], "commit": doc["commit"],
                "dirty": doc["dirty"], "configs": [c.label() for c in configs], "hbm_copy_gbps": hbm}
    runs.append(this_run)
    doc["runs"] = runs
    doc["rows"] = list(old.get("rows", []))

    def save(png: bool = False) -> Optional[str]:
        this_run["wall_s"] = round(time.time() - t_start, 1)
        return write_outputs(doc, paths, png=png)

    cache = kp.Cache(dev)
    config_failures: Dict[tuple, str] = {}
    n_shapes = len(configs) * len(grid)
    i_shape = 0
    stopped = None
    fatal = None
    for cfg in configs:
        print(f"\n== {cfg.label()}", flush=True)
        for shape in kg.shapes_for(cfg, grid):
            i_shape += 1
            if args.deadline_s and time.time() - t_start > args.deadline_s:
                stopped = f"deadline {args.deadline_s:.0f} s reached before shape {i_shape}/{n_shapes}"
                break
            new_rows = []
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info(dev)
            budget = max(0, int(free * args.mem_fraction - args.reserve_gb * 2**30))
            layers, cold_sets = kg.plan_layers(shape.pool_bytes, budget, l2_bytes, base_layers=args.layers)
            head = (f"[{i_shape}/{n_shapes}] batch {shape.batch} ctx {rio.fmt_tokens(shape.ctx)} page {shape.page_size}: "
                    f"{shape.pool_bytes / 2**20:.0f} MiB/layer, L={layers}, cold rotation {cold_sets}")
            print(head, flush=True)
            if layers == 0:
                for k in kernels:
                    for l2 in args.regimes:
                        new_rows.append(kr.make_row(shape, l2, k, skipped="one layer's KV does not fit in memory",
                                                    hbm_copy_gbps=hbm))
                doc["rows"] = rio.merge_rows(doc["rows"], new_rows, kr.row_key)
                save()
                continue
            t_shape = time.time()
            try:
                prob = kp.Problem(shape, layers, dev, seed=args.seed)
                rb = read_bound.ReadBound([prob.kv[l] for l in range(layers)], sm_count)
                gt.keep_busy(rb, layers, WARM_S)  # clocks back up after the inputs' build before anything is timed
            except Exception as e:   # e.g. out of memory: this shape's rows say so, the run goes on
                why = f"inputs could not be built: {_reason(e)}"
                print(f"  {why}", flush=True)
                prob = rb = None
                torch.cuda.empty_cache()
                fatal = _cuda_dead(torch)
                doc["rows"] = rio.merge_rows(doc["rows"], [
                    kr.make_row(shape, l2, k, skipped=why, layers=layers, cold_sets=cold_sets, hbm_copy_gbps=hbm)
                    for k in kernels for l2 in args.regimes], kr.row_key)
                save()
                if fatal:
                    break
                continue
            t_call = kg.est_call_s(shape)
            reps = kg.timing_repeats(t_call, layers)
            n_cold = kg.cold_samples(t_call, cold_sets)
            for kname in kernels:
                t_k = time.time()
                ckey = (kname, cfg)
                kern = None
                rel = None
                pd = None
                note = None
                skip = config_failures.get(ckey)
                if kname == kg.READ_BOUND:
                    rb(0)                      # compile/load outside any graph capture
                    torch.cuda.synchronize()
                elif skip is None:
                    try:
                        kern = kp.ADAPTERS[kname](prob, cache)
                        out = kern(0)
                        torch.cuda.synchronize()
                        rel = prob.max_rel_err(out)
                        pd = kern.prefetch_distance
                        note = getattr(kern, "note", None)
                    except Exception as e:  # the kernel cannot run this shape: a row says why
                        skip = str(e)[:400] if isinstance(e, kp.Unsupported) else _reason(e)
                        kern = None
                        if _config_level(e, kp.Unsupported):
                            config_failures[ckey] = skip
                        fatal = _cuda_dead(torch)
                fn = rb if kname == kg.READ_BOUND else kern
                line = [f"  {kname:16s}"]
                for l2 in args.regimes:
                    if fn is None:
                        new_rows.append(kr.make_row(shape, l2, kname, skipped=skip, layers=layers,
                                                    cold_sets=cold_sets, hbm_copy_gbps=hbm))
                        continue
                    try:
                        if l2 == "in_sequence":
                            samples = gt.time_in_sequence(fn, layers, reps)
                        else:
                            samples = gt.time_cold(fn, list(range(cold_sets)), n_cold)
                        row = kr.make_row(shape, l2, kname, timing=kr.summarize(samples), layers=layers,
                                          cold_sets=cold_sets, max_rel_err=rel, prefetch_distance=pd,
                                          hbm_copy_gbps=hbm, note=note)
                        pct = 100.0 * row["bytes"] / (row["us"] * 1e3) / hbm
                        line.append(f"{l2} {row['us']:8.1f} us {pct:5.1f}%")
                    except Exception as e:
                        row = kr.make_row(shape, l2, kname, skipped=f"timing failed: {_reason(e)}", layers=layers,
                                          cold_sets=cold_sets, hbm_copy_gbps=hbm, max_rel_err=rel)
                        fatal = fatal or _cuda_dead(torch)
                    new_rows.append(row)
                if fn is None:
                    line.append(f"skipped: {skip[:110]}")
                elif rel is not None:
                    line.append(f"rel.err {rel:.1e}" + ("  <-- DISAGREES" if rel >= kr.REL_ERR_TOL else ""))
                line.append(f"({time.time() - t_k:.1f} s)")
                print(" | ".join(line), flush=True)
                del kern, fn
                if fatal:
                    break
            prob.free()
            del prob, rb
            doc["rows"] = rio.merge_rows(doc["rows"], new_rows, kr.row_key)
            save()
            print(f"  shape done in {time.time() - t_shape:.1f} s; total {time.time() - t_start:.0f} s", flush=True)
            if fatal:
                break
        if stopped or fatal:
            break

    if prebuild is not None and prebuild.poll() is None:
        kp.stop_prebuild(prebuild)
    if prebuild is not None:
        try:
            prebuild.wait(timeout=10)
            tail = [l for l in Path(prebuild_log).read_text(errors="replace").splitlines() if l.strip()][-4:]
            if tail:
                print("xqa prebuild: " + " / ".join(tail)[:600])
        except Exception:
            pass
    this_run["stopped"] = stopped or fatal
    why = save(png=True)
    summ = kr.summary_by_regime(doc["rows"])
    print("\nsummary (kvprefetch vs best peer, geomean):",
          "; ".join(f"{k}: {rio.fmt_num(v['geomean_speedup_over_best_peer'], 3)}x over {v['compared']} shapes"
                    for k, v in summ.items()))
    print(f"wrote {paths['json']} and {paths['md']}" + (f"; no png ({why}): run --render-only where matplotlib is"
                                                         if why else f" and {paths['png']}"))
    print(f"wall time {time.time() - t_start:.0f} s")
    if stopped:
        print(f"STOPPED: {stopped}; rerun the same command (rows merge) with the remaining selection")
    if fatal:
        print(f"FATAL CUDA error, run aborted after saving: {fatal}")
        return 3
    return 0


def _cuda_dead(torch) -> Optional[str]:
    """A sticky CUDA error (illegal address, ...) kills the context: every later call would fail too."""
    try:
        torch.cuda.synchronize()
        torch.ones(1, device="cuda").add_(1).item()
        return None
    except Exception as e:
        s = str(e)
        if any(f in s.lower() for f in FATAL_CUDA) or "cuda error" in s.lower():
            return _reason(e)
        return None


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return render_only(args)
    if args.dry_run:
        return dry_run(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
