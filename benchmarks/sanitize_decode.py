#!/usr/bin/env python3
"""Small-shape driver for compute-sanitizer: every decode-kernel code path, a few launches each.

    python benchmarks/sanitize_decode.py [--quick] [--out driver.json]     # valid inputs, checked against float64
    python benchmarks/sanitize_decode.py --bad-indices [--out driver.json]  # corrupt page tables, validation off
    python benchmarks/sanitize_decode.py --list [--bad-indices]             # the launches, no GPU

Normally run under benchmarks/gpu_host/sanitize.sh. The launches are listed in sanitize_cases.py. Valid launches
are checked against the reference (poisoned outputs, NaN never passes); with --bad-indices only the requests whose
table entries are intact are checked (the corrupt ones may hold any value, but the launch must stay in bounds, and
a valid launch on the same wrapper afterwards must be right). The JSON says what ran; the exit code is 1 only when
the driver itself failed (an exception: a CUDA error, a refused call), so the sanitizer's verdict stays its own.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sanitize_cases as sc  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bad-indices", action="store_true", help="corrupt page tables (device tensors, validation off)")
    ap.add_argument("--quick", action="store_true", help="9 modules instead of 19")
    ap.add_argument("--out", type=Path, help="driver JSON (what ran, output checks)")
    ap.add_argument("--list", action="store_true", help="print the launches and exit (no GPU)")
    return ap.parse_args(argv)


@contextlib.contextmanager
def _env(name: str, value: Optional[str]):
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


class Driver:
    def __init__(self, device: str = "cuda"):
        import torch

        self.torch, self.device = torch, device
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        self._wrappers: Dict[tuple, Any] = {}
        self.launches = 0
        self.results: List[Dict[str, Any]] = []

    def wrapper(self, ln: sc.Launch, max_batch: int = 8):
        from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

        key = (ln.module, ln.group, ln.hkv, ln.page)
        if key not in self._wrappers:
            q = self.dtype(ln.q_dtype)
            kv = self.torch.float8_e4m3fn if ln.fp8 else q
            with _env("KVPREFETCH_PREFETCH_MODE", "bulk" if ln.bulk else "line"):
                w = BatchDecodeWithPagedKVCache(ln.group * ln.hkv, ln.hkv, ln.head_dim, ln.page, q, kv, self.device,
                                                max_batch_size=max_batch, prefetch_distance=ln.prefetch).load()
            self._wrappers[key] = w
        return self._wrappers[key]

    def dtype(self, name: str):
        return {"bf16": self.torch.bfloat16, "f16": self.torch.float16}[name]

    def inputs(self, ln: sc.Launch, lens, seed: int, spare_pages: int = 3):
        from paged_inputs import make_paged_inputs

        gen = self.torch.Generator(self.device).manual_seed(seed)
        return make_paged_inputs(list(lens), hq=ln.group * ln.hkv, hkv=ln.hkv, d=ln.head_dim, page_size=ln.page,
                                 dtype=self.dtype(ln.q_dtype), kv_fp8=ln.fp8, device=self.device, generator=gen,
                                 spare_pages=spare_pages)

    def launch(self, w, ln: sc.Launch, inp, *, out=None):
        """One kernel launch on poisoned outputs; returns (out, lse or None)."""
        torch = self.torch
        out = torch.full_like(inp.q, math.nan) if out is None else out
        lse = torch.full(inp.q.shape[:2], math.nan, device=self.device) if ln.lse else None
        k, v = (inp.k.squeeze(1), inp.v.squeeze(1)) if ln.layout3d else (inp.k, inp.v)
        scales = (0.75, 1.25) if ln.fp8 else (1.0, 1.0)
        w.run(inp.q, k, v, logits_soft_cap=ln.cap, k_scale=scales[0], v_scale=scales[1], out=out, lse=lse)
        self.launches += 1
        self.sync()
        return out, lse

    def reference(self, ln: sc.Launch, inp, indptr=None, indices=None, last=None):
        from kvprefetch.jit_kernels import paged_decode_reference

        scales = (0.75, 1.25) if ln.fp8 else (1.0, 1.0)
        return paged_decode_reference(inp.q, inp.k, inp.v, inp.indptr if indptr is None else indptr,
                                      inp.indices if indices is None else indices,
                                      inp.last_len if last is None else last, logits_soft_cap=ln.cap,
                                      k_scale=scales[0], v_scale=scales[1])

    def record(self, name: str, ok: bool, err: Optional[float], reason: str = "", **extra):
        self.results.append({"name": name, "ok": ok, "err": err, "reason": reason, **extra})
        print(f"  {name}: {'ok' if ok else 'WRONG: ' + reason} (rel err {err if err is None else format(err, '.2e')})",
              flush=True)

    # ---- valid inputs
    def run_valid(self, ln: sc.Launch, seed: int):
        from fuzz_check import judge

        w = self.wrapper(ln)
        inp = self.inputs(ln, ln.lens, seed)
        w.plan(inp.indptr, inp.indices, inp.last_len)
        out, lse = self.launch(w, ln, inp)
        ref, ref_lse = self.reference(ln, inp)
        v = judge(out, lse, ref, ref_lse, ln.fp8, list(ln.lens))
        self.record(ln.name, v["ok"], v["err"], v["reason"], num_splits=w.num_splits_for(len(ln.lens)))

    def run_graph(self, seed: int):
        from fuzz_check import judge

        torch, ln = self.torch, sc.GRAPH
        w = self.wrapper(ln)
        cap_pages = 1 + max(sum(-(-n // ln.page) for n in lens) for lens in (ln.lens,) + sc.GRAPH_REPLAYS)
        inp = self.inputs(ln, ln.lens, seed, spare_pages=cap_pages)
        batch = len(ln.lens)
        indptr, last = inp.indptr.clone(), inp.last_len.clone()
        indices = torch.zeros(cap_pages, dtype=torch.int32, device=self.device)
        indices[: inp.indices.numel()] = inp.indices
        q, out = inp.q.clone(), torch.empty_like(inp.q)
        lse = torch.empty(batch, ln.group * ln.hkv, device=self.device)
        w.plan(indptr, indices, last)
        w.run(q, inp.k, inp.v, out=out, lse=lse)  # warm-up outside capture
        self.launches += 1
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            w.run(q, inp.k, inp.v, out=out, lse=lse)
        gen = torch.Generator(self.device).manual_seed(seed + 1)
        pool = inp.k.shape[0]
        for step, lens in enumerate(sc.GRAPH_REPLAYS):
            new = self.inputs(ln, lens, seed + 10 + step)
            pages = new.indices.numel()
            perm = torch.randperm(pool, generator=gen, device=self.device)[:pages].to(torch.int32)
            indptr.copy_(new.indptr)
            indices[:pages] = perm
            last.copy_(new.last_len)
            q.copy_(new.q)
            out.fill_(math.nan)
            lse.fill_(math.nan)
            graph.replay()
            self.launches += 1
            torch.cuda.synchronize()
            ref, ref_lse = paged_ref(inp, q, indptr, indices, last)
            v = judge(out, lse, ref, ref_lse, False, list(lens))
            self.record(f"graph_replay_{step}", v["ok"], v["err"], v["reason"])

    # ---- corrupt page tables
    def run_bad(self, ln: sc.Launch, case: sc.BadCase, seed: int):
        from fuzz_check import judge

        w = self.wrapper(ln)
        inp = self.inputs(ln, ln.lens, seed)
        ref, ref_lse = self.reference(ln, inp)  # from the valid table
        indptr, indices, last = corrupt(case.name, inp.indptr.clone(), inp.indices.clone(), inp.last_len.clone(),
                                        pool_pages=inp.k.shape[0], page=ln.page)
        with _env("KVPREFETCH_VALIDATE", None):
            w.plan(indptr, indices, last)
        out, lse = self.launch(w, ln, inp)
        keep = list(case.intact)
        v = judge(out[keep], None if lse is None else lse[keep], ref[keep], ref_lse[keep], ln.fp8,
                  [ln.lens[i] for i in keep])
        self.record(f"{ln.name}:{case.name}", v["ok"], v["err"],
                    v["reason"] and f"intact requests {keep}: {v['reason']}", bad_table=True)

    def run_after_bad(self, ln: sc.Launch, seed: int):
        """A valid launch on the wrapper that just ran corrupt tables: counters and workspace must be sound."""
        self.run_valid(sc.Launch(f"{ln.name}:valid_after_bad", ln.q_dtype, ln.fp8, ln.head_dim, ln.prefetch,
                                 ln.bulk, ln.group, ln.hkv, ln.page, (5, 700, 130), cap=ln.cap, lse=True), seed)


def paged_ref(inp, q, indptr, indices, last):
    from kvprefetch.jit_kernels import paged_decode_reference

    return paged_decode_reference(q, inp.k, inp.v, indptr, indices, last)


def corrupt(name: str, indptr, indices, last, *, pool_pages: int, page: int):
    """Apply BAD_CASES[name] to (indptr, indices, last_len) of the 3-request batch; returns the three tensors."""
    r1 = slice(int(indptr[1]), int(indptr[2]))
    n1 = r1.stop - r1.start
    if name == "page_id_past_pool":
        indices[r1] = pool_pages
        indices[r1.start + n1 // 2: r1.stop] = pool_pages + 1000
    elif name == "page_id_int_max":
        indices[r1] = 2**31 - 1
    elif name == "page_id_negative":
        indices[r1] = -1
        indices[r1.start + n1 // 2: r1.stop] = -(2**31)
    elif name == "indptr_decreasing":
        indptr[2] = indptr[1] - 2
    elif name == "indptr_negative":
        indptr[1] = -7
    elif name == "indptr_past_indices":
        indptr[3] = indices.numel() + 50
    elif name == "last_len_zero":
        last[1] = 0
    elif name == "last_len_over_page":
        last[1] = page + 1
    elif name == "last_len_far_over_page":
        last[1] = 4 * page + 3
    elif name == "last_len_negative":
        last[1] = -5
    else:
        raise ValueError(f"unknown corruption {name!r}")
    return indptr, indices, last


def list_launches(bad: bool, quick: bool) -> None:
    if bad:
        for ln in sc.BAD_LAUNCHES:
            for c in sc.BAD_CASES:
                print(f"{ln.name}:{c.name}  ({c.corrupt}; checked: requests {list(c.intact)})")
            print(f"{ln.name}:valid_after_bad")
        return
    for ln in sc.kernel_launches(quick):
        print(f"{ln.name}  lens={list(ln.lens)} cap={ln.cap} lse={ln.lse} layout3d={ln.layout3d}")
    print(f"{sc.GRAPH.name}  capture lens={list(sc.GRAPH.lens)}, replays {[list(x) for x in sc.GRAPH_REPLAYS]}")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_launches(args.bad_indices, args.quick)
        return 0
    import torch

    import results_io as rio

    t0 = time.perf_counter()
    doc: Dict[str, Any] = {"kind": "sanitize_driver", "mode": "bad_indices" if args.bad_indices else "valid",
                           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                           **rio.stamp(), "completed": False, "exception": None}
    drv = None
    rc = 0
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA GPU")
        drv = Driver()
        if args.bad_indices:
            for i, ln in enumerate(sc.BAD_LAUNCHES):
                for j, case in enumerate(sc.BAD_CASES):
                    drv.run_bad(ln, case, seed=100 * i + j)
                drv.run_after_bad(ln, seed=100 * i + 99)
        else:
            for i, ln in enumerate(sc.kernel_launches(args.quick)):
                drv.run_valid(ln, seed=i)
            try:  # last; a capture the environment refuses (torch's uncached allocator?) is reported, not fatal
                drv.run_graph(seed=1000)
            except Exception as e:
                drv.record("graph_replay", False, None, f"could not run: {type(e).__name__}: {str(e).splitlines()[0]}")
        doc["completed"] = True
    except Exception as e:  # the sanitizer's log says what the kernel did; this says where the driver stopped
        doc["exception"] = f"{type(e).__name__}: {e}".strip()
        traceback.print_exc()
        rc = 1
    finally:
        if drv is not None:
            doc["launches"] = drv.launches
            doc["results"] = drv.results
            doc["wrong_outputs"] = [r for r in drv.results if not r["ok"]]
            doc["bad_tables_tried"] = sum(1 for r in drv.results if r.get("bad_table"))
            doc["modules"] = sorted({c.tag for w in drv._wrappers.values() for c in (w.config, w.wide_config) if c})
        doc["wall_s"] = round(time.perf_counter() - t0, 1)
        if args.out:
            rio.write_json(args.out, doc)
    n_wrong = len(doc.get("wrong_outputs", []))
    print(f"sanitize_decode ({doc['mode']}): {doc.get('launches', 0)} launches, {n_wrong} wrong outputs, "
          f"{'completed' if doc['completed'] else 'STOPPED: ' + str(doc['exception'])}, {doc['wall_s']} s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
