"""Markdown and PNG renderings of a serving-benchmark results document (serving-<gpu>.json).
Pure Python; the PNG needs matplotlib."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from results_io import fmt_num, md_table
from serving_rows import BACKENDS, Workload


def _workload(r: Dict[str, Any]) -> Workload:
    return Workload(r["input_len"], r["output_len"], r["max_concurrency"])


def _backend_order(rows: List[Dict[str, Any]]) -> List[str]:
    present = {r["backend"] for r in rows}
    return [b for b in BACKENDS if b in present] + sorted(present - set(BACKENDS))


def _x(v: Optional[float]) -> str:
    return f"{v:.2f}x" if v else "—"


def render_md(doc: Dict[str, Any]) -> str:
    rows = doc.get("rows", [])
    v = doc.get("versions", {}) or {}
    out: List[str] = [f"# SGLang serving benchmark — {doc.get('device', '?')}\n"]
    out.append(f"commit `{doc.get('commit', '?')}`{' (dirty)' if doc.get('dirty') else ''}; torch {v.get('torch')}, "
               f"SGLang {v.get('sglang')}, FlashInfer {v.get('flashinfer')}, sgl-kernel {v.get('sglang_kernel')}.\n")
    out.append("`python -m sglang.launch_server --load-format dummy` per backend (dummy weights, real "
               "architecture), driven by SGLang's own `sglang.benchmark.serving` with `--dataset-name random-ids "
               "--random-range-ratio 1 --tokenize-prompt` (exact lengths; EOS ignored). Each point: median of the "
               "repeats; spread = (max - min) / median over repeats. ×fa3 and ×best other: output tok/s ratio to "
               "FA3 (SGLang's default on Hopper) and to the fastest other backend on the same point; \"within spread\": that "
               "ratio is closer to 1 than the larger tok/s spread of the two rows, so it ranks nothing.\n")
    knobs = sorted({f"{k}={v}" for run in doc.get("runs", []) for k, v in (run.get("kvprefetch_env") or {}).items()})
    if knobs:
        out.append(f"kvprefetch knobs set for these runs: `{' '.join(knobs)}`\n")
    if doc.get("server_args"):
        out.append(f"Server flags: `{' '.join(doc['server_args'])}`\n")
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["page_size"], r["kv_dtype"]), []).append(r)
    for (model, page, kv) in sorted(groups):
        grows = groups[(model, page, kv)]
        out.append(f"## {model} — page {page}, KV {kv}\n")
        order = {b: i for i, b in enumerate(_backend_order(grows))}
        table = []
        for r in sorted(grows, key=lambda r: (r["input_len"], r["max_concurrency"], r["output_len"],
                                              order.get(r["backend"], 99))):
            w = _workload(r)
            if r.get("skipped"):
                table.append([w.label(), r["backend"], "skip", "", "", "", "", "", "", "", r["skipped"][:120]])
                continue
            spread = r.get("output_tok_s_spread")
            table.append([w.label(), r["backend"], fmt_num(r.get("output_tok_s"), 1),
                          fmt_num(r.get("tpot_ms_p50"), 2), fmt_num(r.get("tpot_ms_p99"), 2),
                          fmt_num(r.get("ttft_ms_p50"), 0), fmt_num(r.get("itl_ms_p50"), 3),
                          f"{100 * r['tpot_spread']:.1f}% / {100 * spread:.1f}%"
                          if r.get("tpot_spread") is not None and spread is not None else "—",
                          _x(r.get("speedup_vs_fa3")),
                          (_x(r.get("speedup_vs_best_other")) + (f" ({r['best_other']})" if r.get("best_other") else "")
                           + {True: "", False: " within spread", None: ""}[r.get("beyond_spread")]),
                          f"{r.get('num_prompts')} x {r.get('repeats')}" + (f"; {r['note']}" if r.get("note") else "")])
        out.append(md_table(["workload", "backend", "output tok/s", "TPOT p50 ms", "TPOT p99 ms", "TTFT p50 ms",
                             "ITL p50 ms", "spread TPOT / tok/s", "×fa3", "×best other", "prompts x repeats"],
                            table, align=["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "l"]))
    return "\n".join(out) + "\n"


def render_png(doc: Dict[str, Any], path: Path) -> Optional[str]:
    """Output tok/s per backend (bars) per workload, one panel per (model, page, kv dtype)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"matplotlib unavailable ({e.__class__.__name__}: {e})"
    rows = [r for r in doc.get("rows", []) if not r.get("skipped") and r.get("output_tok_s")]
    if not rows:
        return "no rows that ran"
    panels = sorted({(r["model"], r["page_size"], r["kv_dtype"]) for r in rows})
    backends = _backend_order(rows)
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.8 * len(panels)), squeeze=False)
    width = 0.8 / max(len(backends), 1)
    for ax, (model, page, kv) in zip(axes[:, 0], panels):
        sub = [r for r in rows if (r["model"], r["page_size"], r["kv_dtype"]) == (model, page, kv)]
        wls = sorted({_workload(r) for r in sub}, key=lambda w: (w.input_len, w.max_concurrency, w.output_len))
        for j, b in enumerate(backends):
            xs, ys, errs = [], [], []
            for i, w in enumerate(wls):
                r = next((r for r in sub if r["backend"] == b and _workload(r) == w), None)
                if r is None:
                    continue
                xs.append(i + (j - (len(backends) - 1) / 2) * width)
                ys.append(r["output_tok_s"])
                lo = r.get("output_tok_s_min") or r["output_tok_s"]
                hi = r.get("output_tok_s_max") or r["output_tok_s"]
                errs.append((r["output_tok_s"] - lo, hi - r["output_tok_s"]))
            if xs:
                ax.bar(xs, ys, width=width, label=b, color=cmap(j % 10),
                       yerr=[[e[0] for e in errs], [e[1] for e in errs]], capsize=2)
        ax.set_xticks(range(len(wls)))
        ax.set_xticklabels([w.label() for w in wls], fontsize=8)
        ax.set_ylabel("output tok/s")
        ax.set_yscale("log")
        ax.set_title(f"{model}, page {page}, KV {kv}", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"SGLang serving, output tokens/s — {doc.get('device', '?')}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
