#!/usr/bin/env python3
"""Experiment 18: where a decode launch's time goes, block by block, in the in-sequence or the cold regime.

    python benchmarks/block_timeline.py --shapes 1x1K,1x4K,1x16K,16x1K --page-size 16 [--cold] --out DIR

For each shape, one CUDA graph of L layers' kvprefetch calls runs with a `trace=True` module: every block records
when it started, knew its request's length, had its first tile, finished its loop, counted its split and (the last
split) wrote the merge. The table gives each phase's medians over the launches (µs from the launch's first block
start) beside the per-layer time of the default module and of the trace build, measured in the same process.
``--cold`` replays one launch per graph instead, rotating over enough layers that each launch's KV has left L2
(kernel_bench's cold regime): no launch before it to overlap. Writes DIR/timeline-<gpu>.json (every launch's phases)
and .md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graph_timing as gt  # noqa: E402
import kernel_grid as kg  # noqa: E402
import results_io as rio  # noqa: E402
import timeline_stats as ts  # noqa: E402
from kernel_grid import parse_shapes  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1x1K,1x4K,1x16K,4x4K,8x2K,16x1K,64x512,1x64K", help="BATCHxCTX,...")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--kv", choices=sorted(kg.KV_DTYPES), default="bf16")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=32, help="launches per graph (fewer where memory is short)")
    pdl = ap.add_mutually_exclusive_group()
    pdl.add_argument("--pdl", action="store_true", help="both modules with programmatic dependent launch")
    pdl.add_argument("--no-pdl", action="store_true",
                     help="both modules without programmatic dependent launch (default: the product's choice)")
    ap.add_argument("--grid-splits", default=None, metavar="S:G",
                    help="short requests use S splits in a grid G splits wide (kernel_bench's experiment-15 override)")
    ap.add_argument("--two-blocks", action="store_true", help="both modules with at most two blocks per SM (exp. 21)")
    ap.add_argument("--late-trigger", action="store_true",
                    help="with --pdl: release the next launch after the main loop (experiment 23)")
    ap.add_argument("--copy", choices=("old", "new"), default=None,
                    help="both modules with the tile copy before / after experiment 47 (default: the product's)")
    ap.add_argument("--cold", action="store_true",
                    help="one launch per graph, rotating over layers until each one's KV has left L2 (cold regime)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.shape_list = parse_shapes(args.shapes)
    if args.grid_splits:
        from kernel_bench import _split_in_grid

        args.grid_splits = _split_in_grid(args.grid_splits)
    return args


def measure(shape, layers: int, device, pdl: Optional[bool] = None, grid_splits=None, two_blocks: bool = False,
            late_trigger: bool = False, old_loads: Optional[bool] = None, cold_sets: int = 0) -> dict:
    """One shape's timeline: ``layers`` launches back to back in one graph, or with ``cold_sets`` one launch per
    graph over that many layers (each replayed once while traced)."""
    import torch

    from kernel_peers import Q_TORCH, Problem, _fixed_splits
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    cls = _fixed_splits(BatchDecodeWithPagedKVCache, *grid_splits) if grid_splits else BatchDecodeWithPagedKVCache
    prob = Problem(shape, layers, device)
    wrappers = {}
    for trace in (False, True):
        w = cls(shape.num_qo_heads, shape.num_kv_heads, shape.head_dim, shape.page_size, Q_TORCH, prob.kv_dtype, device,
                max_batch_size=256, trace=trace, pdl=pdl, two_blocks=two_blocks, late_trigger=late_trigger or None,
                old_loads=old_loads)
        w.plan(prob.kv_indptr, prob.kv_indices, prob.kv_last_page_len)
        wrappers[trace] = w
    out = torch.empty_like(prob.q)

    def call(w):
        return lambda i: w.run(prob.q, prob.k(i), prob.v(i), sm_scale=prob.sm_scale, k_scale=prob.k_scale,
                               v_scale=prob.v_scale, out=out)

    for w in wrappers.values():
        call(w)(0)
    err = prob.max_rel_err(out)
    if cold_sets:
        us = {t: gt.time_cold(call(w), range(cold_sets), max(cold_sets, 40)) for t, w in wrappers.items()}
    else:
        us = {t: gt.time_in_sequence(call(w), layers, repeats=20) for t, w in wrappers.items()}
    w = wrappers[True]
    blocks = shape.batch * shape.num_kv_heads * w.num_splits_for(shape.batch)
    launches = cold_sets or layers
    buf = torch.zeros(ts.HEADER_WORDS + ts.RECORD_WORDS * blocks * launches, dtype=torch.int64, device=device)
    if cold_sets:
        pool = torch.cuda.graph_pool_handle()
        graphs = [gt.capture(lambda i=i: call(w)(i), pool=pool) for i in range(cold_sets)]
    else:
        graphs = [gt.capture(lambda: [call(w)(i) for i in range(layers)])]
    for _ in range(3):
        for g in graphs:
            g.replay()
    torch.cuda.synchronize()
    w.set_trace(buf)
    for g in graphs:
        g.replay()
    torch.cuda.synchronize()
    w.set_trace(None)
    records = ts.parse(buf.cpu().tolist())
    del graphs
    prob.free()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"shape": f"{shape.batch}x{shape.ctx}", "batch": shape.batch, "ctx": shape.ctx, "layers": launches,
            "regime": "cold" if cold_sets else "in_sequence",
            "splits": w.num_splits_for(shape.batch), "short_splits": w.short_splits_for(shape.batch),
            "short_chunk": w.short_chunk_for(shape.batch),
            "module": w.describe_module(), "pdl": w.config.pdl, "max_rel_err": err,
            "us_per_layer": med(us[False]), "us_per_layer_trace": med(us[True]),
            "records": len(records), "summary": ts.summarize(records)}


def main(argv: Optional[List[str]] = None) -> int:
    import torch

    args = parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    pdl = True if args.pdl else False if args.no_pdl else None  # None: the product default
    old_loads = {"old": True, "new": False}.get(args.copy)
    rows = []
    for batch, ctx in args.shape_list:
        shape = kg.Shape(batch, ctx, args.page_size, 32, 8, args.head_dim, args.kv)
        budget = int(0.6 * torch.cuda.mem_get_info()[0])
        layers = max(2, min(args.layers, budget // max(shape.pool_bytes, 1)))
        cold_sets = 0
        if args.cold:
            layers, cold_sets = kg.plan_layers(shape.pool_bytes, budget, props.L2_cache_size, base_layers=args.layers)
        rows.append(measure(shape, layers, device, pdl, args.grid_splits, args.two_blocks, args.late_trigger, old_loads,
                            cold_sets))
        r = rows[-1]
        print(f"{r['shape']}: {r['us_per_layer']:.1f} us/layer (trace build {r['us_per_layer_trace']:.1f}), "
              f"span {r['summary']['median']['span']:.1f} us, err {r['max_rel_err']:.1e}", flush=True)
    slug = rio.device_slug(props.name)
    doc = {"device": props.name, "sms": props.multi_processor_count, **rio.stamp(),
           "config": {"page_size": args.page_size, "kv": args.kv, "head_dim": args.head_dim,
                      "pdl_flag": {True: "pdl", False: "no_pdl"}.get(pdl), "grid_splits": args.grid_splits,
                      "two_blocks": args.two_blocks, "late_trigger": args.late_trigger, "copy": args.copy,
                      "regime": "cold" if args.cold else "in_sequence"},
           "rows": rows}
    slug += {True: "-pdl", False: "-nopdl"}.get(pdl, "")
    slug += f"-x{args.grid_splits[0]}g{args.grid_splits[1]}" if args.grid_splits else ""
    slug += "-b2" if args.two_blocks else ""
    slug += "-lt" if args.late_trigger else ""
    slug += {"old": "-ol", "new": "-nol"}.get(args.copy, "")
    slug += "-cold" if args.cold else ""
    rio.write_json(args.out / f"timeline-{slug}.json", doc)
    md = (f"# Block timeline (experiment 18) — {props.name}\n\ncommit `{doc['commit']}`; page {args.page_size}, "
          f"KV {args.kv}, head_dim {args.head_dim}, 32/8 heads{ {True: ', PDL', False: ', no PDL'}.get(pdl, '')}"
          f"{', cold (one launch per graph)' if args.cold else ''}; "
          f"medians over the launches after the first, µs from each launch's first block start.\n\n"
          + ts.markdown(rows) + "\n")
    rio.write_text(args.out / f"timeline-{slug}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
