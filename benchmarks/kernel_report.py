"""Markdown and PNG renderings of a kernel-benchmark results document (kernel-<gpu>.json).
Pure Python; the PNG needs matplotlib (absent on the GPU host: render there with --render-only later)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from kernel_grid import ALL_KERNELS, READ_BOUND
from kernel_rows import ran, summary_by_regime
from results_io import fmt_num, fmt_tokens, md_table

REGIME_TEXT = {
    "in_sequence": "in_sequence: L layers' separate KV back to back in one CUDA graph (time per layer = graph "
                   "time / L); L = 32, more when 32 layers' KV is under 4x L2, fewer when memory is short.",
    "cold": "cold: one call at a time (a one-call CUDA graph per layer, CUDA events around each replay, all "
            "replays queued behind a GPU sleep so no launch gap is timed), rotating through enough layers that "
            "each call's KV was evicted from L2 (> 4x L2 read since its last use).",
}


def _kernels_present(rows: Sequence[Dict[str, Any]]) -> List[str]:
    present = {r["kernel"] for r in rows}
    order = [k for k in (READ_BOUND,) + tuple(k for k in ALL_KERNELS if k != READ_BOUND) if k in present]
    order += sorted(k for k in present if k not in order)  # experiment variants, e.g. kvprefetch_s6
    return order + sorted(present - set(order))


def _config_key(r: Dict[str, Any]) -> Tuple:
    return (r["kv_dtype"], r["num_qo_heads"], r["num_kv_heads"], r["head_dim"], r["page_size"], r["l2"])


def _config_title(k: Tuple) -> str:
    kv, hq, hkv, d, page, l2 = k
    return f"KV {kv}, {hq}/{hkv} heads, head_dim {d}, page {page} — {l2}"


def _cell(r: Optional[Dict[str, Any]]) -> str:
    if r is None:
        return ""
    if not ran(r):
        return "skip"
    s = fmt_num(r["us"], 1)
    if r.get("pct_hbm") is not None:
        s += f" ({r['pct_hbm']:.0f}%)"
    if r.get("correct") is False:
        s += " ⚠"
    return s


def render_md(doc: Dict[str, Any]) -> str:
    rows = doc.get("rows", [])
    v = doc.get("versions", {}) or {}
    out: List[str] = []
    out.append(f"# Decode-attention kernel benchmark — {doc.get('device', '?')}\n")
    dirty = doc.get("dirty")
    out.append(f"commit `{doc.get('commit', '?')}`{' (dirty)' if dirty else ''}; torch {v.get('torch')}, "
               f"FlashInfer {v.get('flashinfer')}, SGLang {v.get('sglang')}, sgl-kernel {v.get('sglang_kernel')}, "
               f"CUDA {v.get('cuda')}. Measured HBM copy bandwidth (device-to-device copy, bytes read + written "
               f"/ time): **{fmt_num(doc.get('hbm_copy_gbps'), 0)} GB/s**. L2 {doc.get('l2_mb', '?')} MB.\n")
    out.append("Each cell: median µs per call (in_sequence: per layer) and, in brackets, KV+q+o bytes / time as % of "
               "the measured copy bandwidth. `read_bound` is a Triton kernel streaming the same KV bytes "
               "(8 blocks per SM). ⚠ = output differs from the float32 reference by ≥ 2e-2 (relative). "
               "`skip` = could not run that shape (reason below). Pages of every request are scattered at "
               "random in the pool.\n")
    for l2 in ("in_sequence", "cold"):
        out.append(f"- {REGIME_TEXT[l2]}")
    out.append("")

    summ = summary_by_regime(rows)
    if any(s["shapes"] for s in summ.values()):
        out.append("## Summary (kvprefetch)\n")
        out.append(md_table(
            ["regime", "shapes", "geomean speedup over best peer", "wins / compared", "mean % HBM"],
            [[l2, s["shapes"], fmt_num(s["geomean_speedup_over_best_peer"], 3), f"{s['wins']} / {s['compared']}",
              fmt_num(s["mean_pct_hbm"], 1)] for l2, s in summ.items()]))

    configs: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        configs.setdefault(_config_key(r), []).append(r)
    regime_order = {"in_sequence": 0, "cold": 1}
    for ck in sorted(configs, key=lambda k: (k[0], k[1], k[2], k[3], k[4], regime_order.get(k[5], 9))):
        crow = configs[ck]
        kernels = _kernels_present(crow)
        shapes = sorted({(r["batch"], r["ctx"]) for r in crow})
        by = {(r["batch"], r["ctx"], r["kernel"]): r for r in crow}
        headers = ["batch", "ctx", "L"] + kernels + ["best peer", "kvprefetch vs best", "kvprefetch / read bound"]
        table = []
        for b, c in shapes:
            layers = next((r["layers"] for r in crow if (r["batch"], r["ctx"]) == (b, c) and r.get("layers")), None)
            kv = by.get((b, c, "kvprefetch"))
            table.append([b, fmt_tokens(c), layers if layers is not None else "—"]
                         + [_cell(by.get((b, c, k))) for k in kernels]
                         + [((kv or {}).get("best_peer") or "—") + (" ⚠" if (kv or {}).get("best_peer_flagged") else ""),
                            fmt_num((kv or {}).get("speedup_over_best_peer"), 2) + "x"
                            if (kv or {}).get("speedup_over_best_peer") else "—",
                            fmt_num((kv or {}).get("us_over_read_bound"), 2) if kv else "—"])
        out.append(f"## {_config_title(ck)}\n")
        out.append(md_table(headers, table, align=["r"] * len(headers)))

    skipped: Dict[Tuple[str, str], List[str]] = {}
    for r in rows:
        if r.get("skipped"):
            skipped.setdefault((r["kernel"], r["skipped"]), []).append(
                f"{r['batch']}x{fmt_tokens(r['ctx'])}/p{r['page_size']}/{r['kv_dtype']}/{r['l2']}")
    flagged = [r for r in rows if r.get("correct") is False]
    if skipped or flagged:
        out.append("## Skipped and flagged\n")
        if skipped:
            out.append(md_table(["kernel", "rows", "reason"],
                                [[k, len(v), reason] for (k, reason), v in sorted(skipped.items())],
                                align=["l", "r", "l"]))
        if flagged:
            by_kernel: Dict[str, List[Dict[str, Any]]] = {}
            for r in flagged:
                by_kernel.setdefault(r["kernel"], []).append(r)
            out.append("Flagged (output differs from the float32 reference by ≥ 2e-2; timings kept and still "
                       "eligible as best peer):\n")
            out.append(md_table(
                ["kernel", "rows", "worst rel. err", "shapes"],
                [[k, len(v), f"{max(r['max_rel_err'] for r in v):.2e}",
                  ", ".join(sorted({f"{r['batch']}x{fmt_tokens(r['ctx'])}/p{r['page_size']}/{r['kv_dtype']}"
                                    for r in v}))[:300]] for k, v in sorted(by_kernel.items())],
                align=["l", "r", "r", "l"]))
    return "\n".join(out) + "\n"


def render_png(doc: Dict[str, Any], path: Path) -> Optional[str]:
    """% of HBM bandwidth per shape (x: batch x ctx, ordered by batch then ctx) per kernel; one panel per
    (KV dtype, heads, page size) x regime. Returns None when written, else the reason it was not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # matplotlib is not on the GPU host
        return f"matplotlib unavailable ({e.__class__.__name__}: {e})"
    rows = [r for r in doc.get("rows", []) if ran(r) and r.get("pct_hbm") is not None]
    if not rows:
        return "no rows with % HBM"
    cfgs = sorted({(r["kv_dtype"], r["num_qo_heads"], r["num_kv_heads"], r["head_dim"], r["page_size"]) for r in rows})
    regimes = [l2 for l2 in ("in_sequence", "cold") if any(r["l2"] == l2 for r in rows)]
    kernels = _kernels_present(rows)
    cmap = plt.get_cmap("tab10")
    colors = {k: cmap(i % 10) for i, k in enumerate(kernels)}
    fig, axes = plt.subplots(len(cfgs), len(regimes), figsize=(7.5 * len(regimes), 3.6 * len(cfgs)),
                             squeeze=False, sharey=True)
    for i, cfg in enumerate(cfgs):
        for j, l2 in enumerate(regimes):
            ax = axes[i][j]
            sub = [r for r in rows if (r["kv_dtype"], r["num_qo_heads"], r["num_kv_heads"], r["head_dim"],
                                       r["page_size"]) == cfg and r["l2"] == l2]
            shapes = sorted({(r["batch"], r["ctx"]) for r in sub})
            xi = {s: n for n, s in enumerate(shapes)}
            for k in kernels:
                pts = sorted((xi[(r["batch"], r["ctx"])], r["pct_hbm"]) for r in sub if r["kernel"] == k)
                if not pts:
                    continue
                style = dict(color=colors[k], marker="o", markersize=3.5, linewidth=1.2)
                if k == READ_BOUND:
                    style.update(color="black", linestyle="--", marker=None, linewidth=1.0)
                elif k.startswith("kvprefetch"):
                    style.update(linewidth=2.2 if k == "kvprefetch" else 1.4, marker="s")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, **style)
            ax.set_xticks(range(len(shapes)))
            ax.set_xticklabels([f"{b}x{fmt_tokens(c)}" for b, c in shapes], rotation=60, fontsize=7)
            kv, hq, hkv, d, page = cfg
            ax.set_title(f"{l2}: KV {kv}, {hq}/{hkv}x{d}, page {page}", fontsize=9)
            ax.grid(True, alpha=0.3)
            if j == 0:
                ax.set_ylabel("% of HBM copy bandwidth")
            ax.set_ylim(bottom=0)
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for row in axes:
        for ax in row:
            for h, l in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(l, h)
    fig.legend(list(seen.values()), list(seen.keys()), loc="upper center", ncol=min(len(seen), 5), fontsize=8,
               bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(f"Decode attention, % of measured HBM bandwidth — {doc.get('device', '?')}", y=1.0 + 0.03)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return None
