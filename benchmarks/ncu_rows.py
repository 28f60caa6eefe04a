"""Rows of the Nsight Compute results files (l2_telemetry.py, stall_profile.py): the shape fields, the merge key,
why a row was not measured, and the markdown grouping by shape."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import kernel_grid as kg
import results_io as rio


def shape_fields(s: kg.Shape, with_dtype: bool = False) -> Dict[str, Any]:
    out = {"batch": s.batch, "ctx": s.ctx, "page_size": s.page_size, "num_qo_heads": s.num_qo_heads,
           "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim}
    return {**out, "kv_dtype": s.kv_dtype} if with_dtype else out


def row_key(r: Dict[str, Any]) -> Tuple:
    return tuple(sorted(r["shape"].items())) + (r["kernel"],)


def skip_reason(entry: Dict[str, Any], missing_reason: str) -> str:
    """The child's own reason for a kernel that could not run, else why ncu measured nothing for it."""
    return entry.get("skipped") or (missing_reason if entry else
                                    f"not reached by the profiled child ({missing_reason})")


def by_shape(rows: List[Dict[str, Any]]) -> List[Tuple[str, List[Dict[str, Any]]]]:
    """[(markdown heading, the shape's rows)] in first-seen order."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r["shape"].values()), []).append(r)
    out = []
    for rs in groups.values():
        s = rs[0]["shape"]
        dtype = f", KV {s['kv_dtype']}" if "kv_dtype" in s else ""
        out.append((f"\n## batch {s['batch']}, ctx {rio.fmt_tokens(s['ctx'])} (page {s['page_size']}, "
                    f"{s['num_qo_heads']}/{s['num_kv_heads']} heads, d {s['head_dim']}{dtype}; KV "
                    f"{rio.fmt_num(rs[0]['kv_mb'])} MB per call)\n", rs))
    return out


def write(doc: Dict[str, Any], rows: List[Dict[str, Any]], json_path, md_path, render) -> int:
    """Merge ``rows`` into the file's earlier rows (by shape and kernel), write the JSON and ``render(doc)`` as
    markdown; exit status 0 when at least one new row was measured."""
    old = rio.load_json(json_path) or {}
    doc["rows"] = rio.merge_rows(old.get("rows", []), rows, row_key)
    rio.write_json(json_path, doc)
    rio.write_text(md_path, render(doc))
    print(f"wrote {json_path} and {md_path}: {sum(r['skipped'] is None for r in rows)}/{len(rows)} rows measured")
    return 0 if any(r["skipped"] is None for r in rows) else 1
