#!/usr/bin/env python3
"""Cross-layer KV prefetch (the paper's computation-load overlap), measured on a simulated decode step before any
serving code uses it: is there DRAM time left beside a batch-1 layer's weight GEMVs for the next layer's KV to come
in, and does L2 keep it until that layer's attention runs?

    python benchmarks/xlayer_bench.py                       # Llama-3.1-8B and -3.2-1B sizes, batch 1, 8K and 16K
    python benchmarks/xlayer_bench.py --models llama-3.2-1b --contexts 4096 --layers 4 --dry-run

One step = one CUDA graph of L layers, each: q/k/v GEMV (batch 1, bf16 weights), kvprefetch attention over the
layer's own KV (pages scattered in its pool), o_proj GEMV, gate/up GEMV, down GEMV. Variants (each its own graph,
same buffers): ``weights`` (no attention: the floor the step can reach), ``baseline``, ``bulk_<policy>[_aside]``
(experiment 39: right after layer i's attention, on the same stream, the op's ``prefetch_l2`` issues bulk L2
prefetches of layer i+1's pages (the last layer: layer 0's, for the next step), tagged evict_last or not, at most
the card's persisting set-aside in bytes; ``_aside`` sets that set-aside for the variant's replays), the older
``touch_<policy>_p<N>`` (experiment 12, with ``--programs``: a side stream reads layer i+1's pages with N Triton
programs while o_proj and the MLP run), and ``attention`` (the L attention calls alone). Norms, RoPE and the KV
write are left out: small next to the GEMVs. A layer's KV was last read one step (GBs of weights) earlier, so
every attention call starts from DRAM unless a prefetch brought its pages in.

Writes <out>/xlayer-<gpu>.json (device, commit, versions, every row) and .md.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kernel_rows as kr  # noqa: E402
import results_io as rio  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    hidden: int
    hq: int
    hkv: int
    d: int
    inter: int
    layers: int


MODELS = {"llama-3.1-8b": Shape(4096, 32, 8, 128, 14336, 32), "llama-3.2-1b": Shape(2048, 32, 8, 64, 8192, 16)}
POLICIES = ("evict_last", "")  # "" = the default policy
# bulk_<policy>[_aside][_side][_b<N>]: _side issues the prefetch on a side stream joined before the next attention;
# _b<N> gives the prefetch kernel N blocks per request
BULK = ("bulk_evict_last_aside", "bulk_evict_last", "bulk_normal", "bulk_evict_last_aside_side",
        "bulk_evict_last_aside_b132", "bulk_evict_last_aside_side_b132", "bulk_normal_side_b132")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--layers", type=int, default=None, help="layers per step (default: the model's)")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--programs", type=int, nargs="*", default=[],
                    help="experiment 12's side-stream page reader with this many Triton programs (its variants run "
                         "only when given)")
    ap.add_argument("--repeats", type=int, default=30, help="graph replays timed per variant")
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    ap.add_argument("--gpu", default=None, help="results file slug (default: from the device name)")
    ap.add_argument("--dry-run", action="store_true", help="print the variants and the memory they need, no GPU")
    args = ap.parse_args(argv)
    for name in ("layers", "page_size", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected >= 1")
    if any(c < 1 for c in args.contexts) or any(p < 1 for p in args.programs):
        ap.error("--contexts and --programs: expected positive integers")
    return args


def variants(programs: List[int]) -> List[str]:
    touch = [f"touch_{pol or 'normal'}_p{n}" for pol in POLICIES for n in programs]
    return ["weights", "baseline", *BULK, *touch, "attention"]


def parse_variant(name: str) -> Dict[str, Any]:
    """'touch_evict_last_p16' -> {'touch': True, 'policy': 'evict_last', 'programs': 16}; 'bulk_evict_last_aside' ->
    {'bulk': True, 'policy': 'evict_last', 'aside': True}; others neither."""
    spec = {"touch": False, "bulk": False, "attention": name != "weights", "weights": name != "attention"}
    if name.startswith("bulk_"):
        rest, blocks = name[len("bulk_"):], None
        if "_b" in rest and rest.rpartition("_b")[2].isdigit():
            rest, _, n = rest.rpartition("_b")
            blocks = int(n)
        side = rest.endswith("_side")
        rest = rest[: -len("_side")] if side else rest
        aside = rest.endswith("_aside")
        policy = rest[: -len("_aside")] if aside else rest
        return {**spec, "bulk": True, "policy": "" if policy == "normal" else policy, "aside": aside,
                "side": side, "blocks": blocks}
    if not name.startswith("touch_"):
        return spec
    policy, _, n = name[len("touch_"):].rpartition("_p")
    return {**spec, "touch": True, "policy": "" if policy == "normal" else policy, "programs": int(n)}


def weight_bytes_per_layer(m: Shape) -> int:
    return 2 * m.hidden * ((m.hq + 2 * m.hkv) * m.d + m.hq * m.d + 2 * m.inter) + 2 * m.inter * m.hidden


def kv_bytes_per_layer(m: Shape, context: int) -> int:
    return 2 * context * m.hkv * m.d * 2


def layers_of(args: argparse.Namespace, m: Shape) -> int:
    return args.layers or m.layers


def dry_run(args: argparse.Namespace) -> int:
    for name in args.models:
        m = MODELS[name]
        n = layers_of(args, m)
        w = weight_bytes_per_layer(m) * n
        for c in args.contexts:
            kv = kv_bytes_per_layer(m, c) * n
            print(f"{name} context {c}: weights {w / 2**30:.1f} GiB + KV {kv / 2**30:.2f} GiB over {n} layers")
    print(f"variants: {variants(args.programs)}; {args.repeats} replays each")
    return 0


class Model:
    """L layers of weights (shared by every context) and the activations one decode step of ``batch`` requests
    passes along (step_context_bench.py uses it at other batches)."""

    def __init__(self, m: Shape, layers: int, device, batch: int = 1):
        import torch

        def w(n_in, n_out):
            return torch.empty(n_in, n_out, dtype=torch.bfloat16, device=device).normal_(0, 0.02)

        self.shape = m
        self.w = [(w(m.hidden, (m.hq + 2 * m.hkv) * m.d), w(m.hq * m.d, m.hidden), w(m.hidden, 2 * m.inter),
                   w(m.inter, m.hidden)) for _ in range(layers)]
        self.x = torch.randn(batch, m.hidden, dtype=torch.bfloat16, device=device)
        # the attention-only variant keeps q; the weights-only variant reads o
        self.q = torch.randn(batch, m.hq, m.d, dtype=torch.bfloat16, device=device)
        self.o = torch.randn(batch, m.hq, m.d, dtype=torch.bfloat16, device=device)


def build_step(model: "Model", kv, wrapper, toucher: Optional[Any], spec: Dict[str, Any], bulk_bytes: int = 0):
    """The step as a function of no arguments, capturable: spec from parse_variant; toucher(k, v) reads a layer's
    KV pages (every layer has the same page table), used where the variant touches; a bulk variant prefetches up to
    ``bulk_bytes`` of the next layer's KV right after each attention call."""
    import torch
    import torch.nn.functional as F

    m = model.shape
    side = torch.cuda.Stream() if spec["touch"] or spec.get("side") else None

    def step():
        main = torch.cuda.current_stream()
        x = model.x
        n = len(model.w)
        for i, (wqkv, wo, wgu, wd) in enumerate(model.w):
            attn = model.o
            if spec["weights"]:
                qkv = x @ wqkv
                model.q.copy_(qkv[:, : m.hq * m.d].view(1, m.hq, m.d))
            if spec["attention"]:
                if side is not None and i > 0:
                    main.wait_stream(side)
                wrapper.run(model.q, kv[i][0], kv[i][1], out=model.o)
                if spec["bulk"]:
                    nxt = kv[(i + 1) % n]
                    if side is not None:
                        side.wait_stream(main)
                    with torch.cuda.stream(side if side is not None else main):
                        wrapper.prefetch_l2(nxt[0], nxt[1], max_bytes=bulk_bytes,
                                            evict_last=spec["policy"] == "evict_last", blocks=spec["blocks"])
                if spec["touch"] and i + 1 < n:
                    side.wait_stream(main)
                    with torch.cuda.stream(side):
                        toucher(kv[i + 1][0], kv[i + 1][1])
            if spec["weights"]:
                h = attn.view(1, m.hq * m.d) @ wo
                gu = h @ wgu
                x = (F.silu(gu[:, : m.inter]) * gu[:, m.inter:]) @ wd
        if side is not None:
            main.wait_stream(side)

    return step


def measure_model(args: argparse.Namespace, name: str, doc: Dict[str, Any], dev) -> None:
    import torch

    import graph_timing as gt
    import l2_touch
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache
    from paged_inputs import make_paged_inputs

    m = MODELS[name]
    model = Model(m, layers_of(args, m), dev)
    page_bytes = args.page_size * m.hkv * m.d * 2
    for ctx in args.contexts:
        t0 = time.time()
        base = make_paged_inputs([ctx], hq=m.hq, hkv=m.hkv, d=m.d, page_size=args.page_size, dtype=torch.bfloat16)
        kv = [(base.k, base.v)] + [(torch.randn_like(base.k), torch.randn_like(base.v)) for _ in model.w[1:]]
        pages = base.indices[: int(base.indptr[1])].contiguous()
        if args.programs:
            l2_touch.self_test(base.k, base.v, pages, page_bytes)
        wrapper = BatchDecodeWithPagedKVCache(m.hq, m.hkv, m.d, page_size=args.page_size, q_dtype=torch.bfloat16,
                                              kv_dtype=torch.bfloat16, device=dev, max_batch_size=1).load()
        wrapper.plan(base.indptr, base.indices, base.last_len)
        aside_max = wrapper.set_persisting_l2(1 << 40)  # the card's maximum set-aside
        wrapper.set_persisting_l2(0)
        doc["persisting_l2_max_bytes"] = aside_max
        for v in variants(args.programs):
            spec = parse_variant(v)
            toucher = l2_touch.PageToucher(pages, page_bytes, spec["programs"], spec["policy"]) if spec["touch"] else None
            step = build_step(model, kv, wrapper, toucher, spec, aside_max)
            wrapper.set_persisting_l2(aside_max if spec.get("aside") else 0)
            step()
            torch.cuda.synchronize()
            g = gt.capture(step)
            us = gt.time_graph_replays(g, args.repeats)
            del g
            wrapper.set_persisting_l2(0)
            t = kr.summarize(us)
            doc["rows"].append({"model": name, "layers": len(model.w), "context": ctx, "variant": v,
                                "step_us": t["us"], "us_p10": t["us_p10"], "us_p90": t["us_p90"],
                                "samples": t["samples"], "kv_bytes_per_layer": kv_bytes_per_layer(m, ctx),
                                "weight_bytes_per_layer": weight_bytes_per_layer(m),
                                "prefetch_bytes_per_layer": min(aside_max, kv_bytes_per_layer(m, ctx)) if spec["bulk"] else 0})
            print(f"{name} ctx {ctx:>6} {v:<24} {t['us']:9.1f} us per step", flush=True)
        del kv, base, wrapper
        torch.cuda.empty_cache()
        print(f"{name} ctx {ctx}: {time.time() - t0:.0f} s", flush=True)


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    import graph_timing as gt

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    doc: Dict[str, Any] = {"device": name, "gpu": args.gpu or rio.device_slug(name), **rio.stamp(),
                           "hbm_copy_gbps": gt.hbm_copy_gbps(dev), "page_size": args.page_size,
                           "models": {n: dataclasses.asdict(MODELS[n]) for n in args.models}, "rows": []}
    for model in args.models:
        measure_model(args, model, doc, dev)
        torch.cuda.empty_cache()
    return doc


def render_md(doc: Dict[str, Any]) -> str:
    out = [f"# Cross-layer KV prefetch on a simulated decode step — {doc['device']}\n",
           f"commit `{doc['commit']}`{' (dirty)' if doc.get('dirty') else ''}; batch 1, page {doc['page_size']}, bf16; "
           f"HBM copy bandwidth {doc['hbm_copy_gbps']:,.0f} GB/s; persisting L2 set-aside at most "
           f"{doc.get('persisting_l2_max_bytes', 0) / 2**20:.1f} MiB. Median µs per step (one CUDA graph); "
           "`attention share` = baseline − weights; `gain` = baseline − variant.\n"]
    by_key: Dict[tuple, Dict[str, float]] = {}
    for r in doc["rows"]:
        key = (r.get("model", "llama-3.1-8b"), r.get("layers", doc.get("layers")), r["context"])
        by_key.setdefault(key, {})[r["variant"]] = r["step_us"]
    rows = []
    for (model, layers, ctx), t in sorted(by_key.items()):
        base, floor = t.get("baseline"), t.get("weights")
        for v, us in t.items():
            gain = None if base is None or v in ("weights", "attention", "baseline") else base - us
            share = (base - floor) if v == "baseline" and floor is not None else None
            rows.append([f"{model} × {layers}", rio.fmt_tokens(ctx), v, rio.fmt_num(us), rio.fmt_num(share),
                         rio.fmt_num(gain), rio.fmt_num(100 * gain / base, 2) if gain is not None else "—"])
    out.append(rio.md_table(["model × layers", "context", "variant", "µs per step", "attention share µs", "gain µs",
                             "gain %"], rows))
    return "\n".join(out) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    doc = measure(args)
    rio.write_report(args.out, f"xlayer-{doc['gpu']}", doc, render_md(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
