"""Issue 5's kernel-grid targets from kernel_bench result files, one line per (family, page size, L2 regime).

    python benchmarks/grid_targets.py RESULT.json [RESULT.json ...] [--out DIR --stem NAME]

For each group of kvprefetch rows: the geometric-mean speedup over the best peer on the shapes whose KV is
≤ 256 MiB per layer (target ≥ 1.3 in sequence), the shapes under 0.98 of the best peer (target: none, both
regimes), and the largest time over the one-kernel streaming read (target ≤ 1.10).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_grid as kg  # noqa: E402
import kernel_rows as kr  # noqa: E402
import results_io as rio  # noqa: E402

GEOMEAN_KV_BYTES = 256 * 2**20
NEVER_BEHIND = 0.98


def kv_bytes(r: Dict[str, Any], kv_dtype: str | None = None) -> int:
    """K + V bytes per layer of a row's shape, in its own KV type or in ``kv_dtype``."""
    return r["batch"] * r["ctx"] * r["num_kv_heads"] * r["head_dim"] * 2 * kg.KV_DTYPES[kv_dtype or r["kv_dtype"]]


def summarize(doc: Dict[str, Any], kernel: str = "kvprefetch") -> List[Dict[str, Any]]:
    """One summary per (kv dtype, head_dim, heads, page size, regime) of ``kernel``'s rows in one result file."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in doc["rows"]:
        if r["kernel"] == kernel and kr.ran(r):
            key = (r["kv_dtype"], r["head_dim"], r["num_qo_heads"], r["num_kv_heads"], r["page_size"], r["l2"])
            groups.setdefault(key, []).append(r)
    out = []
    for (kv, d, hq, hkv, page, l2), rows in sorted(groups.items()):
        rows.sort(key=lambda r: (r["batch"], r["ctx"]))
        small = [r["speedup_over_best_peer"] for r in rows
                 if r.get("speedup_over_best_peer") and kv_bytes(r) <= GEOMEAN_KV_BYTES]
        behind = [f"{r['batch']} × {rio.fmt_tokens(r['ctx'])} {r['speedup_over_best_peer']:.3f} ({r['best_peer']})"
                  for r in rows if r.get("speedup_over_best_peer") and r["speedup_over_best_peer"] < NEVER_BEHIND]
        over_rb = [r for r in rows if r.get("us_over_read_bound")]
        worst = max(over_rb, key=lambda r: r["us_over_read_bound"]) if over_rb else None
        out.append({"family": f"{kv} {hq}/{hkv}/{d}", "page_size": page, "l2": l2, "shapes": len(rows),
                    "geomean_kv_le_256mib": kr.geomean(small), "geomean_shapes": len(small), "under_0.98": behind,
                    "worst_over_read_bound": worst["us_over_read_bound"] if worst else None,
                    "worst_over_read_bound_shape": f"{worst['batch']} × {rio.fmt_tokens(worst['ctx'])}" if worst else None,
                    "commit": doc.get("commit"), "device": doc.get("device")})
    return out


def render_md(summaries: List[Dict[str, Any]]) -> str:
    return rio.md_table(
        ["family", "page", "L2", "geomean (KV ≤ 256 MiB)", "under 0.98 of the best peer", "worst × read bound", "commit"],
        [[s["family"], s["page_size"], s["l2"],
          f"{s['geomean_kv_le_256mib']:.3f} ({s['geomean_shapes']})" if s["geomean_kv_le_256mib"] else "-",
          "; ".join(s["under_0.98"]) or "none",
          f"{s['worst_over_read_bound']:.2f} ({s['worst_over_read_bound_shape']})" if s["worst_over_read_bound"] else "-",
          (s["commit"] or "")[:7]] for s in summaries]) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=None, help="also write <out>/<stem>.json and .md")
    ap.add_argument("--stem", default="grid-targets")
    args = ap.parse_args()
    summaries = []
    for path in args.results:
        doc = rio.load_json(path)
        if doc is None:
            raise SystemExit(f"grid_targets: cannot read {path}")
        summaries += [dict(s, source=str(path)) for s in summarize(doc)]
    md = render_md(summaries)
    if args.out:
        rio.write_report(args.out, args.stem, {"summaries": summaries}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
