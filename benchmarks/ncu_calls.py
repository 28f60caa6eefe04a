"""The child process that Nsight Compute profiles, shared by l2_telemetry.py and stall_profile.py: per shape and
kernel, warm-up calls outside any NVTX range, then a few calls each inside `l2tel` > `l2.<B>x<ctx>.<kernel>.c<i>`
(l2_ncu.call_label), so ncu (--nvtx-include "l2tel/") profiles only those and the parser can attribute every
launch. Calls rotate over separately allocated KV pools totalling > 4x L2, so no call starts with its KV in L2.
A manifest (JSON) records, per (shape, kernel), the error against the reference or why the kernel could not run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

import kernel_grid as kg
import l2_ncu as nc
import results_io as rio


def run(shapes: List[kg.Shape], names: List[str], adapters: Dict[str, Callable], manifest: Path, *, seed: int,
        warmup: int, calls: int, extra: Dict[str, Any]) -> int:
    """Profiled calls of every (shape, kernel name); ``adapters[name](problem, cache)`` builds a kernel.
    ``extra`` is merged into the manifest's header. Returns 3 when CUDA died (the rest is not attempted)."""
    import torch

    import kernel_bench as kb
    import kernel_peers as kp

    dev = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(dev)
    l2_bytes = int(getattr(props, "L2_cache_size", 50 << 20) or (50 << 20))
    cap = torch.cuda.get_device_capability(dev)
    man: Dict[str, Any] = {"device": torch.cuda.get_device_name(dev), "capability": f"{cap[0]}.{cap[1]}",
                           "l2_mb": round(l2_bytes / 2**20, 1), "cuda": torch.version.cuda, **extra, "entries": []}
    cache = kp.Cache(dev)
    for shape in shapes:
        torch.cuda.empty_cache()
        pools, _ = kg.plan_layers(shape.pool_bytes, int(torch.cuda.mem_get_info(dev)[0] * 0.8), l2_bytes,
                                  base_layers=1)
        print(f"[ncu] batch {shape.batch} ctx {rio.fmt_tokens(shape.ctx)}: {pools} KV pools of "
              f"{shape.pool_bytes / 2**20:.0f} MiB", flush=True)
        prob, why = None, "one KV pool does not fit in memory"
        try:
            prob = kp.Problem(shape, pools, dev, seed=seed) if pools else None
        except Exception as e:
            why = f"inputs could not be built: {kb._reason(e)}"
        for name in names:
            ent: Dict[str, Any] = {"batch": shape.batch, "ctx": shape.ctx, "kernel": name}
            try:
                if prob is None:
                    raise kp.Unsupported(why)
                kern = adapters[name](prob, cache)
                out = kern(0)
                torch.cuda.synchronize()
                ent.update(max_rel_err=prob.max_rel_err(out),
                           prefetch_distance=getattr(kern, "prefetch_distance", None))
                for i in range(1, warmup):
                    kern(i % pools)
                torch.cuda.synchronize()
                for c in range(calls):
                    with torch.cuda.nvtx.range(nc.TAG), \
                            torch.cuda.nvtx.range(nc.call_label(shape.batch, shape.ctx, name, c)):
                        kern((warmup + c) % pools)
                        torch.cuda.synchronize()
                del kern, out
            except Exception as e:  # the kernel cannot run here: its row says why
                ent["skipped"] = str(e)[:400] if isinstance(e, kp.Unsupported) else kb._reason(e)
            print(f"[ncu]   {name:16s} " + (f"skipped: {ent['skipped'][:120]}" if ent.get("skipped") else
                                            f"profiled (rel.err {ent['max_rel_err']:.1e})"), flush=True)
            man["entries"].append(ent)
            rio.write_json(manifest, man)
            dead = kb._cuda_dead(torch)
            if dead:
                print(f"[ncu] FATAL CUDA error, stopping: {dead}", flush=True)
                return 3
        if prob is not None:
            prob.free()
        del prob
    rio.write_json(manifest, man)
    return 0
