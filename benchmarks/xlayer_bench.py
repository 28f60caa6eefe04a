#!/usr/bin/env python3
"""Cross-layer KV prefetch (the paper's computation-load overlap), measured on a simulated decode step before any
serving code is written for it: is there DRAM time left beside a batch-1 layer's weight GEMVs for the next layer's
KV to come in, and does L2 keep it until that layer's attention runs?

    python benchmarks/xlayer_bench.py                       # Llama-3.1-8B sizes, batch 1, 8K and 16K, page 16
    python benchmarks/xlayer_bench.py --contexts 4096 --layers 16 --programs 16 32 --dry-run

One step = one CUDA graph of L layers, each: q/k/v GEMV (batch 1, bf16 weights), kvprefetch attention over the
layer's own KV (pages scattered in its pool), o_proj GEMV, gate/up GEMV, down GEMV. Variants (each its own graph,
same buffers): ``weights`` (no attention: the floor the step can reach), ``baseline``, ``touch_<policy>_p<N>``
(after layer i's attention a side stream reads layer i+1's KV pages with N Triton programs and that L2 eviction
policy while o_proj and the MLP run; joined before layer i+1's attention), and ``attention`` (the L attention calls
alone). Norms, RoPE and the KV write are left out: small next to the GEMVs. A layer's KV was last read one step
(~13 GB of weights) earlier, so every attention call starts from DRAM unless the touch brought its pages in.

Writes <out>/xlayer-<gpu>.json (device, commit, versions, every row) and .md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_rows as kr  # noqa: E402
import results_io as rio  # noqa: E402

HIDDEN, HQ, HKV, D, INTER = 4096, 32, 8, 128, 14336  # Llama-3.1-8B
POLICIES = ("evict_last", "")  # "" = the default policy


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--programs", type=int, nargs="+", default=[16, 64],
                    help="Triton programs of the side-stream page reader (few: it runs beside the GEMVs)")
    ap.add_argument("--repeats", type=int, default=30, help="graph replays timed per variant")
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    ap.add_argument("--gpu", default=None, help="results file slug (default: from the device name)")
    ap.add_argument("--dry-run", action="store_true", help="print the variants and the memory they need, no GPU")
    args = ap.parse_args(argv)
    for name in ("layers", "page_size", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected >= 1")
    if any(c < 1 for c in args.contexts) or any(p < 1 for p in args.programs):
        ap.error("--contexts and --programs: expected positive integers")
    return args


def variants(programs: List[int]) -> List[str]:
    touch = [f"touch_{pol or 'normal'}_p{n}" for pol in POLICIES for n in programs]
    return ["weights", "baseline", *touch, "attention"]


def parse_variant(name: str) -> Dict[str, Any]:
    """'touch_evict_last_p16' -> {'touch': True, 'policy': 'evict_last', 'programs': 16}; others have touch False."""
    if not name.startswith("touch_"):
        return {"touch": False, "attention": name != "weights", "weights": name != "attention"}
    policy, _, n = name[len("touch_"):].rpartition("_p")
    return {"touch": True, "attention": True, "weights": True, "policy": "" if policy == "normal" else policy,
            "programs": int(n)}


def weight_bytes_per_layer() -> int:
    return 2 * HIDDEN * ((HQ + 2 * HKV) * D + HQ * D + 2 * INTER) + 2 * INTER * HIDDEN


def kv_bytes_per_layer(context: int) -> int:
    return 2 * context * HKV * D * 2


def dry_run(args: argparse.Namespace) -> int:
    w = weight_bytes_per_layer() * args.layers
    for c in args.contexts:
        kv = kv_bytes_per_layer(c) * args.layers
        print(f"context {c}: weights {w / 2**30:.1f} GiB + KV {kv / 2**30:.2f} GiB over {args.layers} layers")
    print(f"variants: {variants(args.programs)}; {args.repeats} replays each")
    return 0


class Model:
    """L layers of weights (shared by every context) and the activations one decode step passes along."""

    def __init__(self, layers: int, device):
        import torch

        def w(n_in, n_out):
            return torch.empty(n_in, n_out, dtype=torch.bfloat16, device=device).normal_(0, 0.02)

        self.w = [(w(HIDDEN, (HQ + 2 * HKV) * D), w(HQ * D, HIDDEN), w(HIDDEN, 2 * INTER), w(INTER, HIDDEN))
                  for _ in range(layers)]
        self.x = torch.randn(1, HIDDEN, dtype=torch.bfloat16, device=device)
        self.q = torch.randn(1, HQ, D, dtype=torch.bfloat16, device=device)  # the attention-only variant keeps it
        self.o = torch.randn(1, HQ, D, dtype=torch.bfloat16, device=device)  # the weights-only variant reads it


def build_step(model: "Model", kv, wrapper, toucher: Optional[Any], spec: Dict[str, Any]):
    """The step as a function of no arguments, capturable: spec from parse_variant; toucher(k, v) reads a layer's
    KV pages (every layer has the same page table), used where the variant touches."""
    import torch
    import torch.nn.functional as F

    side = torch.cuda.Stream() if spec["touch"] else None

    def step():
        main = torch.cuda.current_stream()
        x = model.x
        for i, (wqkv, wo, wgu, wd) in enumerate(model.w):
            attn = model.o
            if spec["weights"]:
                qkv = x @ wqkv
                model.q.copy_(qkv[:, : HQ * D].view(1, HQ, D))
            if spec["attention"]:
                if side is not None and i > 0:
                    main.wait_stream(side)
                wrapper.run(model.q, kv[i][0], kv[i][1], out=model.o)
                if side is not None and i + 1 < len(model.w):
                    side.wait_stream(main)
                    with torch.cuda.stream(side):
                        toucher(kv[i + 1][0], kv[i + 1][1])
            if spec["weights"]:
                h = attn.view(1, HQ * D) @ wo
                gu = h @ wgu
                x = (F.silu(gu[:, :INTER]) * gu[:, INTER:]) @ wd
        if side is not None:
            main.wait_stream(side)

    return step


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    import graph_timing as gt
    import l2_touch
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache
    from paged_inputs import make_paged_inputs

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    doc: Dict[str, Any] = {"device": name, "gpu": args.gpu or rio.device_slug(name), **rio.stamp(),
                           "hbm_copy_gbps": gt.hbm_copy_gbps(dev), "layers": args.layers, "page_size": args.page_size,
                           "shape": {"hidden": HIDDEN, "hq": HQ, "hkv": HKV, "d": D, "inter": INTER}, "rows": []}
    model = Model(args.layers, dev)
    page_bytes = args.page_size * HKV * D * 2
    for ctx in args.contexts:
        t0 = time.time()
        base = make_paged_inputs([ctx], hq=HQ, hkv=HKV, d=D, page_size=args.page_size, dtype=torch.bfloat16)
        kv = [(base.k, base.v)] + [(torch.randn_like(base.k), torch.randn_like(base.v)) for _ in range(args.layers - 1)]
        pages = base.indices[: int(base.indptr[1])].contiguous()
        l2_touch.self_test(base.k, base.v, pages, page_bytes)
        wrapper = BatchDecodeWithPagedKVCache(HQ, HKV, D, page_size=args.page_size, q_dtype=torch.bfloat16,
                                              kv_dtype=torch.bfloat16, device=dev, max_batch_size=1).load()
        wrapper.plan(base.indptr, base.indices, base.last_len)
        for v in variants(args.programs):
            spec = parse_variant(v)
            toucher = l2_touch.PageToucher(pages, page_bytes, spec["programs"], spec["policy"]) if spec["touch"] else None
            step = build_step(model, kv, wrapper, toucher, spec)
            step()
            torch.cuda.synchronize()
            g = gt.capture(step)
            us = gt.time_graph_replays(g, args.repeats)
            del g
            t = kr.summarize(us)
            doc["rows"].append({"context": ctx, "variant": v, "step_us": t["us"], "us_p10": t["us_p10"],
                                "us_p90": t["us_p90"], "samples": t["samples"], "kv_bytes_per_layer": kv_bytes_per_layer(ctx),
                                "weight_bytes_per_layer": weight_bytes_per_layer()})
            print(f"ctx {ctx:>6} {v:<24} {t['us']:9.1f} us per step", flush=True)
        del kv, base, wrapper
        torch.cuda.empty_cache()
        print(f"ctx {ctx}: {time.time() - t0:.0f} s", flush=True)
    return doc


def render_md(doc: Dict[str, Any]) -> str:
    out = [f"# Cross-layer KV prefetch on a simulated decode step — {doc['device']}\n",
           f"commit `{doc['commit']}`{' (dirty)' if doc.get('dirty') else ''}; {doc['layers']} layers of Llama-3.1-8B "
           f"sizes, batch 1, page {doc['page_size']}, bf16; HBM copy bandwidth {doc['hbm_copy_gbps']:,.0f} GB/s. "
           "Median µs per step (one CUDA graph); `attention share` = baseline − weights; `gain` = baseline − variant.\n"]
    by_ctx: Dict[int, Dict[str, float]] = {}
    for r in doc["rows"]:
        by_ctx.setdefault(r["context"], {})[r["variant"]] = r["step_us"]
    rows = []
    for ctx, t in sorted(by_ctx.items()):
        base, floor = t.get("baseline"), t.get("weights")
        for v, us in t.items():
            gain = None if base is None or v in ("weights", "attention", "baseline") else base - us
            share = (base - floor) if v == "baseline" and floor is not None else None
            rows.append([rio.fmt_tokens(ctx), v, rio.fmt_num(us), rio.fmt_num(share), rio.fmt_num(gain),
                         rio.fmt_num(100 * gain / base, 2) if gain is not None else "—"])
    out.append(rio.md_table(["context", "variant", "µs per step", "attention share µs", "gain µs", "gain %"], rows))
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    doc = measure(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rio.write_json(args.out / f"xlayer-{doc['gpu']}.json", doc)
    rio.write_text(args.out / f"xlayer-{doc['gpu']}.md", render_md(doc))
    print(f"wrote {args.out}/xlayer-{doc['gpu']}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
