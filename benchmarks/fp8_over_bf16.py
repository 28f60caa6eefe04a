"""fp8 KV against the best bf16 peer: issue 5's "≥ 1.8× on the pairs whose bf16 KV is ≥ 0.5 GB".

    python benchmarks/fp8_over_bf16.py FP8_KERNEL_JSON BF16_KERNEL_JSON --out DIR [--stem NAME]

Reads two kernel_bench result files (the fp8 grid and the bf16 grid) and, for every (batch, context, page size, L2
regime) both hold, divides the best bf16 peer's time by kvprefetch's fp8 time. Refuses files from different cards:
the ratio is a same-card claim. Files from different commits or calls are allowed and say so in the report.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grid_targets as gt  # noqa: E402
import kernel_rows as kr  # noqa: E402
import results_io as rio  # noqa: E402

HALF_GB = 0.5e9


def bf16_kv_bytes(r: Dict[str, Any]) -> int:
    return gt.kv_bytes(r, "bf16")


def compare(fp8: Dict[str, Any], bf16: Dict[str, Any], kernel: str = "kvprefetch") -> List[Dict[str, Any]]:
    """One row per shape both grids ran: fp8 kvprefetch µs, the best bf16 peer and its µs, their ratio."""
    if fp8.get("device") != bf16.get("device"):
        raise ValueError(f"fp8 and bf16 files: expected one card, got {fp8.get('device')!r} and {bf16.get('device')!r}")
    key = lambda r: (r["batch"], r["ctx"], r["page_size"], r["l2"])  # noqa: E731
    ours = {key(r): r for r in fp8["rows"] if r["kernel"] == kernel and r["kv_dtype"].startswith("fp8") and kr.ran(r)}
    peers: Dict[Any, Dict[str, Any]] = {}
    for r in bf16["rows"]:
        if r["kv_dtype"] == "bf16" and kr.is_peer(r["kernel"]) and kr.ran(r) and r.get("correct") is not False:
            if key(r) not in peers or r["us"] < peers[key(r)]["us"]:
                peers[key(r)] = r
    rows = []
    for k in sorted(set(ours) & set(peers)):
        mine, best = ours[k], peers[k]
        rows.append({"batch": k[0], "ctx": k[1], "page_size": k[2], "l2": k[3], "bf16_kv_bytes": bf16_kv_bytes(mine),
                     "fp8_us": mine["us"], "best_bf16_peer": best["kernel"], "best_bf16_peer_us": best["us"],
                     "fp8_over_best_bf16_peer": best["us"] / mine["us"], "target_shape": bf16_kv_bytes(mine) >= HALF_GB})
    return rows


def render_md(doc: Dict[str, Any]) -> str:
    same = doc["fp8_commit"] == doc["bf16_commit"]
    head = (f"# fp8 kvprefetch against the best bf16 peer — {doc['device']}\n\n"
            f"fp8 grid at {doc['fp8_commit'][:7]}, bf16 grid at {doc['bf16_commit'][:7]}"
            f"{'' if same else ' (different commits)'}. Target (issue 5): ≥ 1.8× where bf16 KV ≥ 0.5 GB (marked).\n\n")
    body = rio.md_table(
        ["batch × context", "page", "L2", "bf16 KV MB", "fp8 kvprefetch µs", "best bf16 peer µs", "ratio", "≥ 0.5 GB"],
        [[f"{r['batch']} × {rio.fmt_tokens(r['ctx'])}", r["page_size"], r["l2"], rio.fmt_num(r["bf16_kv_bytes"] / 1e6, 0),
          rio.fmt_num(r["fp8_us"]), f"{r['best_bf16_peer']} {rio.fmt_num(r['best_bf16_peer_us'])}",
          f"{r['fp8_over_best_bf16_peer']:.2f}×", "yes" if r["target_shape"] else ""] for r in doc["rows"]])
    return head + body + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp8", type=Path)
    ap.add_argument("bf16", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stem", default=None, help="file stem (default fp8-over-bf16-<gpu>)")
    args = ap.parse_args()
    fp8, bf16 = rio.load_json(args.fp8), rio.load_json(args.bf16)
    if fp8 is None or bf16 is None:
        raise SystemExit(f"fp8_over_bf16: cannot read {args.fp8 if fp8 is None else args.bf16}")
    doc = {"device": fp8["device"], "gpu": fp8.get("gpu"), "fp8_commit": fp8["commit"], "bf16_commit": bf16["commit"],
           "versions": fp8.get("versions"), "sources": [str(args.fp8), str(args.bf16)], "rows": compare(fp8, bf16)}
    md = render_md(doc)
    rio.write_report(args.out, args.stem or f"fp8-over-bf16-{doc.get('gpu') or 'gpu'}", doc, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
