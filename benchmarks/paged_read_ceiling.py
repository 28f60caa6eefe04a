#!/usr/bin/env python3
"""Experiment 33's ceiling: how far ahead of the best peer any kernel that reads the KV through the page table could be.

    python benchmarks/paged_read_ceiling.py KERNEL_JSON PAGED_READ_JSON [--max-kv-mib 256] [--out FILE.md]

KERNEL_JSON is a kernel_bench result (every peer, in-sequence), PAGED_READ_JSON a paged_read_bench result of the same
card and page size. Per shape the floor is the faster of the two paged reads (per head, whole pages): a kernel that
only reads the batch's KV through its page table, with no q, no math and no merge. best peer / floor is the largest
speedup such a kernel could show; the issue's geomean target is set against its geomean over the shapes with KV <=
--max-kv-mib.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402


def ceiling(kernel_doc: dict, paged_doc: dict, max_kv_mib: float = 256.0) -> dict:
    floors = {(r["batch"], r["ctx"]): r for r in paged_doc["rows"]}
    by_shape: dict = {}
    for r in kernel_doc["rows"]:
        if r.get("l2") == "in_sequence" and not r.get("skipped"):
            by_shape.setdefault((r["batch"], r["ctx"]), {})[r["kernel"]] = r
    rows = []
    for key in sorted(set(by_shape) & set(floors)):
        ours = by_shape[key].get("kvprefetch")
        if not ours or not ours.get("best_peer"):
            continue
        peer_us = by_shape[key][ours["best_peer"]]["us"]
        f = floors[key]
        floor = min(f["us"]["paged_read"], f["us"]["paged_read_fused"])
        rows.append({"batch": key[0], "ctx": key[1], "kv_mib": f["kv_mb"], "best_peer": ours["best_peer"],
                     "best_peer_us": peer_us, "read_bound_us": f["us"]["read_bound"], "floor_us": floor,
                     "kvprefetch_us": ours["us"], "ceiling": peer_us / floor, "ours": peer_us / ours["us"],
                     "counted": f["kv_mb"] <= max_kv_mib})
    counted = [r for r in rows if r["counted"]]
    geo = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None  # noqa: E731
    return {"rows": rows, "max_kv_mib": max_kv_mib, "shapes": len(counted),
            "geomean_ceiling": geo([r["ceiling"] for r in counted]), "geomean_ours": geo([r["ours"] for r in counted])}


def render_md(result: dict, kernel_doc: dict, paged_doc: dict) -> str:
    c = paged_doc["config"]
    table = rio.md_table(
        ["batch × ctx", "KV MiB", "best peer", "best peer µs", "read bound µs", "paged floor µs", "ceiling",
         "kvprefetch µs", "kvprefetch speedup"],
        [[f"{r['batch']} × {rio.fmt_tokens(r['ctx'])}", rio.fmt_num(r["kv_mib"], 0) + ("" if r["counted"] else " (not counted)"),
          r["best_peer"], rio.fmt_num(r["best_peer_us"]), rio.fmt_num(r["read_bound_us"]), rio.fmt_num(r["floor_us"]),
          f"{r['ceiling']:.2f}×", rio.fmt_num(r["kvprefetch_us"]), f"{r['ours']:.2f}×"] for r in result["rows"]])
    return (f"# Speedup ceiling of a paged read (experiment 33) — {kernel_doc['device']}\n\n"
            f"Peers: commit `{kernel_doc['commit']}` (copy bandwidth {rio.fmt_num(kernel_doc['hbm_copy_gbps'], 0)} GB/s); "
            f"paged reads: commit `{paged_doc['commit']}`; page {c['page_size']}, KV {c['kv']}, head_dim {c['head_dim']}, "
            f"in-sequence. Floor = the faster paged read (per head or whole pages), no math; ceiling = best peer / floor."
            f"\n\nGeomean over the {result['shapes']} shapes with KV ≤ {result['max_kv_mib']:.0f} MiB: ceiling "
            f"**{result['geomean_ceiling']:.3f}×**, kvprefetch **{result['geomean_ours']:.3f}×**.\n\n" + table + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kernel_json", type=Path)
    ap.add_argument("paged_json", type=Path)
    ap.add_argument("--max-kv-mib", type=float, default=256.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    kdoc, pdoc = (json.loads(p.read_text()) for p in (args.kernel_json, args.paged_json))
    md = render_md(ceiling(kdoc, pdoc, args.max_kv_mib), kdoc, pdoc)
    if args.out:
        rio.write_text(args.out, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
