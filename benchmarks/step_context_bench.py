#!/usr/bin/env python3
"""Each peer's decode attention as a served model runs it: inside a simulated decode step, between the batch's
weight GEMVs (bf16 weights of the model's sizes), so L2 holds weights, not the last layer's KV or page table. The
in-sequence grid times the kernels back to back instead; in serving our kernel ran at its cold-L2 time
(NOTES, run 20e).

One CUDA graph of L layers per kernel: q/k/v GEMV, the kernel's attention over the layer's own KV (kernel_peers'
Problem: pages scattered over the pool), o_proj, gate/up and down GEMVs. Beside them the same graph without
attention (the floor) and each kernel's L calls alone (in sequence). Attention's share of the step is
(step - floor) / L per layer.

    python benchmarks/step_context_bench.py --model llama-3.2-1b --batches 1 --contexts 16384 --page-size 1 \
        --kernels kvprefetch_nopdl fa3 flashinfer_tc

Writes <out>/stepctx-<gpu>.json (device, commit, versions, every row) and .md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_grid as kg  # noqa: E402
import kernel_rows as kr  # noqa: E402
import results_io as rio  # noqa: E402
from xlayer_bench import MODELS, Model  # noqa: E402

# kvprefetch as SGLang's backend launches it (no PDL) first: the row the served model gets
DEFAULT_KERNELS = ["kvprefetch_nopdl", "kvprefetch", "fa3", "flashinfer_cc", "flashinfer_tc", "xqa", "sglang_triton"]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="llama-3.2-1b")
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--contexts", type=int, nargs="+", default=[16384])
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--layers", type=int, default=None, help="layers per step (default: the model's)")
    ap.add_argument("--kernels", nargs="+", default=DEFAULT_KERNELS,
                    help="kernel_peers names or kvprefetch variants (kernel_grid.variant_name)")
    ap.add_argument("--repeats", type=int, default=30, help="graph replays timed per graph")
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    ap.add_argument("--gpu", default=None, help="results file slug (default: from the device name)")
    args = ap.parse_args(argv)
    if min(args.batches + args.contexts + [args.page_size, args.repeats, args.layers or 1]) < 1:
        ap.error("--batches, --contexts, --page-size, --repeats and --layers: expected positive integers")
    bad = [k for k in args.kernels if not known_kernel(k)]
    if bad:
        names = ", ".join(k for k in kg.ALL_KERNELS if known_kernel(k))
        ap.error(f"--kernels: unknown {bad}; expected kernel_peers names ({names}) or kvprefetch variants such as "
                 "kvprefetch_nopdl")
    return args


def known_kernel(name: str) -> bool:
    return name != kg.READ_BOUND and (name in kg.ALL_KERNELS or kg.parse_variant(name) is not None)


def adapter(name: str):
    import kernel_peers as kp

    if name in kp.ADAPTERS:
        return kp.ADAPTERS[name]
    return kp.variant(**kg.parse_variant(name))


def step_fn(wts: Model, prob, kern):
    """The step as a capturable function; kern None: the floor (no attention)."""
    import torch.nn.functional as F

    m, b = wts.shape, wts.x.shape[0]

    def step():
        x = wts.x
        for i, (wqkv, wo, wgu, wd) in enumerate(wts.w):
            qkv = x @ wqkv
            prob.q.copy_(qkv[:, : m.hq * m.d].view(b, m.hq, m.d))
            o = kern(i) if kern is not None else wts.o
            h = o.reshape(b, m.hq * m.d) @ wo
            gu = h @ wgu
            x = (F.silu(gu[:, : m.inter]) * gu[:, m.inter:]) @ wd

    return step


def alone_fn(prob, kern, layers: int):
    def calls():
        for i in range(layers):
            kern(i)

    return calls


def timed(fn, repeats: int) -> Dict[str, float]:
    import torch

    import graph_timing as gt

    fn()
    torch.cuda.synchronize()
    g = gt.capture(fn)
    t = kr.summarize(gt.time_graph_replays(g, repeats))
    del g
    return t


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    import graph_timing as gt
    import kernel_peers as kp

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    m = MODELS[args.model]
    layers = args.layers or m.layers
    doc: Dict[str, Any] = {"device": name, "gpu": args.gpu or rio.device_slug(name), **rio.stamp(),
                           "hbm_copy_gbps": gt.hbm_copy_gbps(dev), "model": args.model, "layers": layers,
                           "page_size": args.page_size, "rows": []}
    cache = kp.Cache(dev)
    for b in args.batches:
        wts = Model(m, layers, dev, batch=b)
        for ctx in args.contexts:
            t0 = time.time()
            shape = kg.Shape(b, ctx, args.page_size, m.hq, m.hkv, m.d, "bf16")
            prob = kp.Problem(shape, layers, dev)
            q0 = prob.q.clone()  # the reference's q: the steps overwrite prob.q with GEMV output
            floor = timed(step_fn(wts, prob, None), args.repeats)
            base = {"model": args.model, "batch": b, "context": ctx, "page_size": args.page_size, "layers": layers,
                    "kv_bytes_per_layer": shape.kv_bytes}
            doc["rows"].append({**base, "kernel": "floor", "step_us": floor["us"], "us_p10": floor["us_p10"],
                                "us_p90": floor["us_p90"]})
            for kname in args.kernels:
                row = {**base, "kernel": kname}
                try:
                    kern = adapter(kname)(prob, cache)
                    prob.q.copy_(q0)
                    row["max_rel_err"] = prob.max_rel_err(kern(0))  # inf on NaN / Inf
                    row["correct"] = bool(row["max_rel_err"] < kr.REL_ERR_TOL)
                    t = timed(step_fn(wts, prob, kern), args.repeats)
                    alone = timed(alone_fn(prob, kern, layers), args.repeats)
                    row.update(step_us=t["us"], us_p10=t["us_p10"], us_p90=t["us_p90"],
                               attention_us_per_layer=(t["us"] - floor["us"]) / layers,
                               alone_us_per_layer=alone["us"] / layers)
                except kp.Unsupported as e:
                    row["skipped"] = str(e)[:300]
                except Exception as e:  # one kernel's failure is a row, not the end of the run
                    row["skipped"] = f"{type(e).__name__}: {e}"[:300]
                doc["rows"].append(row)
                print(f"{args.model} b{b} ctx {ctx} {kname:<24} "
                      + (f"{row['attention_us_per_layer']:7.2f} µs per layer in the step, "
                         f"{row['alone_us_per_layer']:7.2f} alone" if "step_us" in row else row["skipped"]), flush=True)
            prob.free()
            del prob
            torch.cuda.empty_cache()
            print(f"b{b} ctx {ctx}: {time.time() - t0:.0f} s", flush=True)
        del wts
    return doc


def render_md(doc: Dict[str, Any]) -> str:
    out = [f"# Decode attention inside a simulated decode step — {doc['device']}\n",
           f"commit `{doc['commit']}`{' (dirty)' if doc.get('dirty') else ''}; {doc['model']} sizes, "
           f"{doc['layers']} layers, page {doc['page_size']}, bf16; HBM copy bandwidth "
           f"{doc['hbm_copy_gbps']:,.0f} GB/s. Median µs per step (one CUDA graph). `in step` = (step − floor) / "
           "layers: what the kernel adds to a step whose GEMVs stream the weights between its calls; `alone` = its "
           "calls back to back, per call; `× best peer` = the best other kernel's `in step` / this one's; WRONG: "
           f"layer 0's output off the float reference by {kr.REL_ERR_TOL} or more (NaN included).\n"]
    ok = [r for r in doc["rows"] if r["kernel"] != "floor" and "step_us" in r]
    rows = []
    for r in doc["rows"]:
        if r["kernel"] == "floor":
            rows.append([r["batch"], rio.fmt_tokens(r["context"]), "floor (weights only)", rio.fmt_num(r["step_us"]),
                         "—", "—", "—", "—"])
            continue
        if "step_us" not in r:
            rows.append([r["batch"], rio.fmt_tokens(r["context"]), r["kernel"], "skip", "", "", "",
                         r.get("skipped", "")[:100]])
            continue
        others = [o["attention_us_per_layer"] for o in ok if (o["batch"], o["context"]) == (r["batch"], r["context"])
                  and not o["kernel"].startswith("kvprefetch") and o is not r]
        ratio = min(others) / r["attention_us_per_layer"] if others and r["attention_us_per_layer"] > 0 else None
        rows.append([r["batch"], rio.fmt_tokens(r["context"]), r["kernel"], rio.fmt_num(r["step_us"]),
                     rio.fmt_num(r["attention_us_per_layer"], 2), rio.fmt_num(r["alone_us_per_layer"], 2),
                     f"{ratio:.3f}" if ratio else "—",
                     f"{r['max_rel_err']:.1e}" + ("" if r.get("correct", True) else " WRONG")])
    out.append(rio.md_table(["batch", "context", "kernel", "step µs", "in step µs/layer", "alone µs/layer",
                             "× best peer", "max rel err"], rows))
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    doc = measure(args)
    rio.write_report(args.out, f"stepctx-{doc['gpu']}", doc, render_md(doc))
    print(render_md(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
