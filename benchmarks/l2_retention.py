#!/usr/bin/env python3
"""Does L2 keep a layer's prefetched KV through a weight stream? (experiment 39's direct probe)

    python benchmarks/l2_retention.py                    # 8B-shaped layer at 8K, page 16, bf16
    python benchmarks/l2_retention.py --weights-mb 0 256 --samples 10

Per sample: ``prefetch_l2`` of one layer's KV (a pool other than the last samples', so it starts cold), then a
batch-1 GEMV that streams W MB of weights, then that layer's attention, timed alone by CUDA events (eager launches
queue behind the GEMV, so the start event fires when it ends). Variants: ``none`` (no prefetch: the cold time),
``normal``, ``evict_last`` (no set-aside), ``evict_last_aside`` (the card's largest persisting set-aside), and
``evict_last_aside_b132`` (132 prefetch blocks). Also the prefetch kernel's own time, by graph replay, per block
count. Writes <out>/l2-retention-<gpu>.json and .md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402

VARIANTS = ("none", "normal", "evict_last", "evict_last_aside", "evict_last_aside_b132")
HIDDEN = 4096


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--hkv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128, choices=(64, 128))
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--weights-mb", type=int, nargs="+", default=[0, 32, 128, 256, 512])
    ap.add_argument("--pools", type=int, default=8, help="KV pools rotated so each sample's starts cold")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--prefetch-blocks", type=int, nargs="+", default=[8, 32, 132])
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    ap.add_argument("--gpu", default=None)
    args = ap.parse_args(argv)
    if args.context < 1 or args.pools < 2 or args.samples < 1 or any(w < 0 for w in args.weights_mb):
        ap.error("--context, --samples: expected >= 1; --pools >= 2; --weights-mb >= 0")
    return args


def parse_variant(name: str) -> Dict[str, Any]:
    """'evict_last_aside_b132' -> {'prefetch': True, 'evict_last': True, 'aside': True, 'blocks': 132}."""
    if name == "none":
        return {"prefetch": False, "evict_last": False, "aside": False, "blocks": None}
    rest, blocks = name, None
    if rest.rpartition("_b")[2].isdigit():
        rest, _, n = rest.rpartition("_b")
        blocks = int(n)
    aside = rest.endswith("_aside")
    rest = rest[: -len("_aside")] if aside else rest
    if rest not in ("normal", "evict_last"):
        raise ValueError(f"variant: expected none or (normal|evict_last)[_aside][_b<N>], got {name!r}")
    return {"prefetch": True, "evict_last": rest == "evict_last", "aside": aside, "blocks": blocks}


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    import graph_timing as gt
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache
    from paged_inputs import make_paged_inputs

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    hq, d = 4 * args.hkv, args.head_dim
    base = make_paged_inputs([args.context], hq=hq, hkv=args.hkv, d=d, page_size=args.page_size,
                             dtype=torch.bfloat16)
    pools = [(base.k, base.v)] + [(torch.randn_like(base.k), torch.randn_like(base.v)) for _ in range(args.pools - 1)]
    w = BatchDecodeWithPagedKVCache(hq, args.hkv, d, page_size=args.page_size, q_dtype=torch.bfloat16,
                                    kv_dtype=torch.bfloat16, device=dev, max_batch_size=1).load()
    w.plan(base.indptr, base.indices, base.last_len)
    aside_max = w.set_persisting_l2(1 << 40)
    w.set_persisting_l2(0)
    big = max(args.weights_mb) * 2**20 // 2 + HIDDEN * 1024
    weights = torch.empty(big, dtype=torch.bfloat16, device=dev).normal_(0, 0.02)
    x = torch.randn(1, HIDDEN, dtype=torch.bfloat16, device=dev)
    out = torch.empty_like(base.q)
    kv_bytes = 2 * args.context * args.hkv * d * 2  # K and V, bf16
    doc: Dict[str, Any] = {"device": name, "gpu": args.gpu or rio.device_slug(name), **rio.stamp(),
                           "hbm_copy_gbps": gt.hbm_copy_gbps(dev), "context": args.context, "hkv": args.hkv,
                           "head_dim": d, "page_size": args.page_size, "kv_bytes": kv_bytes,
                           "persisting_l2_max_bytes": aside_max, "rows": [], "prefetch_kernel": []}

    def gemv(mb: int, offset: int):
        n = mb * 2**20 // (2 * HIDDEN)
        if n:
            start = (offset * 7919 * HIDDEN) % (weights.numel() - n * HIDDEN + 1)
            x @ weights[start: start + n * HIDDEN].view(HIDDEN, n)

    for blocks in args.prefetch_blocks:  # the prefetch kernel alone, graph-replayed over the pools
        def issue():
            for k, v in pools:
                w.prefetch_l2(k, v, max_bytes=aside_max, blocks=blocks)
        issue()
        g = gt.capture(issue)
        us = gt.time_graph_replays(g, 20)
        doc["prefetch_kernel"].append({"blocks": blocks, "us_per_call": statistics.median(us) / len(pools)})
        print(f"prefetch kernel, {blocks} blocks: {statistics.median(us) / len(pools):.1f} us per call", flush=True)

    i = 0
    for v in VARIANTS:
        spec = parse_variant(v)
        w.set_persisting_l2(aside_max if spec["aside"] else 0)
        for mb in args.weights_mb:
            times = []
            for s in range(args.samples + 3):
                k, vv = pools[i % len(pools)]
                i += 1
                if spec["prefetch"]:
                    w.prefetch_l2(k, vv, max_bytes=aside_max, evict_last=spec["evict_last"], blocks=spec["blocks"])
                gemv(mb, i)
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                w.run(base.q, k, vv, out=out)
                e1.record()
                e1.synchronize()
                if s >= 3:
                    times.append(1000 * e0.elapsed_time(e1))
            med = statistics.median(times)
            doc["rows"].append({"variant": v, "weights_mb": mb, "attention_us": med, "us_min": min(times),
                                "us_max": max(times), "samples": len(times)})
            print(f"{v:<24} after {mb:>4} MB of weights: attention {med:6.1f} us (min {min(times):.1f})", flush=True)
        w.set_persisting_l2(0)
    return doc


def render_md(doc: Dict[str, Any]) -> str:
    mbs = sorted({r["weights_mb"] for r in doc["rows"]})
    by = {(r["variant"], r["weights_mb"]): r["attention_us"] for r in doc["rows"]}
    variants = list(dict.fromkeys(r["variant"] for r in doc["rows"]))
    out = [f"# L2 retention of a prefetched layer through a weight stream — {doc['device']}\n",
           f"commit `{doc['commit']}`{' (dirty)' if doc.get('dirty') else ''}; one layer's KV "
           f"({doc['kv_bytes'] / 2**20:.1f} MiB: {doc['context']} tokens, {doc['hkv']} kv heads × {doc['head_dim']}, "
           f"page {doc['page_size']}, bf16); persisting set-aside at most "
           f"{doc['persisting_l2_max_bytes'] / 2**20:.1f} MiB; copy bandwidth {doc['hbm_copy_gbps']:,.0f} GB/s. "
           "Median attention µs (CUDA events) after a GEMV streaming W MB.\n",
           rio.md_table(["variant", *[f"W = {mb} MB" for mb in mbs]],
                        [[v, *[rio.fmt_num(by.get((v, mb))) for mb in mbs]] for v in variants]),
           "\nThe prefetch kernel alone (graph replay): " +
           ", ".join(f"{p['blocks']} blocks {p['us_per_call']:.1f} µs" for p in doc["prefetch_kernel"]) + ".\n"]
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    doc = measure(args)
    rio.write_report(args.out, f"l2-retention-{doc['gpu']}", doc, render_md(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
