#!/usr/bin/env python3
"""Experiment 33: what the page-table chain and the access pattern cost, apart from any kernel's own work.

    python benchmarks/paged_read_bench.py --kv fp8_e4m3 --shapes 1x1K,4x4K,16x1K,32x4K --out DIR

Per shape, in-sequence (a CUDA graph of L layers' calls, µs per layer, medians), in one process: `read_bound` (the
pool streamed contiguously), `paged_read` (the batch's pages read through the page table, one program per kv head,
request and split: the per-head pattern of every decode kernel measured here), `paged_read_fused` (the same, one
program per request and split reading whole pages), and `kvprefetch` (the product's default). Writes
DIR/paged-read-<gpu>.json and .md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_grid as kg  # noqa: E402
import results_io as rio  # noqa: E402

KERNELS = ("read_bound", "paged_read", "paged_read_fused", "kvprefetch")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1x1K,1x4K,1x16K,4x4K,8x2K,16x1K,64x512,32x4K", help="BATCHxCTX,...")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--kv", choices=sorted(kg.KV_DTYPES), default="bf16")
    ap.add_argument("--head-dim", type=int, choices=(64, 128), default=128)
    ap.add_argument("--layers", type=int, default=32, help="launches per graph (fewer where memory is short)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    args.shape_list = kg.parse_shapes(args.shapes)
    return args


def measure(shape, layers: int, device, sm_count: int, cache) -> dict:
    import graph_timing as gt
    import kernel_peers as kp
    import paged_read as pr
    import read_bound

    prob = kp.Problem(shape, layers, device)
    rb = read_bound.ReadBound([prob.kv[l] for l in range(layers)], sm_count)
    gt.keep_busy(rb, layers, 0.3)
    calls = {"read_bound": rb,
             "paged_read": pr.PagedRead(prob.k, prob.v, prob.kv_indptr, prob.kv_indices, shape.batch, sm_count, False),
             "paged_read_fused": pr.PagedRead(prob.k, prob.v, prob.kv_indptr, prob.kv_indices, shape.batch, sm_count,
                                              True),
             "kvprefetch": kp.ADAPTERS["kvprefetch"](prob, cache)}
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    us = {}
    for name, call in calls.items():
        call(0)
        us[name] = med(gt.time_in_sequence(call, layers, repeats=20))
    splits = {n: calls[n].splits for n in ("paged_read", "paged_read_fused")}
    prob.free()
    return {"shape": f"{shape.batch}x{shape.ctx}", "batch": shape.batch, "ctx": shape.ctx, "layers": layers,
            "kv_mb": shape.pool_bytes / 2**20, "us": us, "splits": splits}


def render_md(doc: dict) -> str:
    c = doc["config"]
    table = rio.md_table(["shape", "KV MiB", *KERNELS, "paged / read", "fused / read", "kvprefetch / paged"],
                         [[r["shape"], rio.fmt_num(r["kv_mb"]), *(rio.fmt_num(r["us"][k]) for k in KERNELS),
                           rio.fmt_num(r["us"]["paged_read"] / r["us"]["read_bound"], 2),
                           rio.fmt_num(r["us"]["paged_read_fused"] / r["us"]["read_bound"], 2),
                           rio.fmt_num(r["us"]["kvprefetch"] / r["us"]["paged_read"], 2)] for r in doc["rows"]])
    return (f"# Paged read bound (experiment 33) — {doc['device']}\n\ncommit `{doc['commit']}`; page {c['page_size']}, "
            f"KV {c['kv']}, head_dim {c['head_dim']}, 32/8 heads; in-sequence, µs per layer (median of 20 graph "
            f"replays).\n\n" + table + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    import torch

    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("paged_read_bench: no CUDA device")
        return 2
    import kernel_peers as kp
    import paged_read as pr

    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    sm_count = props.multi_processor_count
    cache = kp.Cache(device)
    rows = []
    for i, (batch, ctx) in enumerate(args.shape_list):
        shape = kg.Shape(batch, ctx, args.page_size, 32, 8, args.head_dim, args.kv)
        layers = max(2, min(args.layers, int(0.5 * torch.cuda.mem_get_info()[0] // max(shape.pool_bytes, 1))))
        if i == 0:  # every byte read exactly once by both patterns, on this shape's inputs
            probe = kp.Problem(shape, 1, device)
            pr.self_test(probe.k, probe.v, probe.kv_indptr, probe.kv_indices, batch, sm_count)
            probe.free()
        rows.append(measure(shape, layers, device, sm_count, cache))
        print(f"{rows[-1]['shape']}: " + ", ".join(f"{k} {v:.1f}" for k, v in rows[-1]["us"].items()) + " us/layer",
              flush=True)
    slug = rio.device_slug(props.name)
    doc = {"device": props.name, "sms": sm_count, **rio.stamp(),
           "config": {"page_size": args.page_size, "kv": args.kv, "head_dim": args.head_dim}, "rows": rows}
    rio.write_json(args.out / f"paged-read-{slug}.json", doc)
    md = render_md(doc)
    rio.write_text(args.out / f"paged-read-{slug}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
