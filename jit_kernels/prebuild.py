"""Build decode modules ahead of time, e.g. on a CPU machine with nvcc, and collect them by content hash.

    python -m kvprefetch.jit_kernels.prebuild --out DIR [--set default|tests|all] [--arch 90a]

Each module lands as ``DIR/<module_name>.so``; point ``KVPREFETCH_PREBUILT_DIR`` at DIR on the GPU machine and
the loader uses them without compiling (the name holds the hash of sources and flags, so a stale file is
never picked up). On a machine without a GPU driver the linker gets a stub ``libcuda`` (soname libcuda.so.1,
resolved to the real driver where the module is loaded).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cuda_toolkit import find_cuda_home
from .jit_spec import DecodeConfig, make_config, wide_config


def configs(which: str) -> list[DecodeConfig]:
    """default: what the benchmarks and the 8B/1B serving shapes use; tests: every family the GPU suite runs."""
    if which == "default":
        combos = [("bf16", False, 128), ("bf16", True, 128), ("bf16", False, 64)]
        distances = (0, 2)
    else:
        combos = list(itertools.product(("bf16", "f16"), (False, True), (64, 128, 256)))
        distances = (0, 2) if which == "tests" else (0, 1, 2, 3, 4)
    # the defaults of every card with its own (the H100's and the H200's), launched with PDL where that is the
    # kernel default and plainly (the serving backend's default, KVPREFETCH_PDL=0), for GQA groups of at most 8
    # (the served models') and, for the tests, 16 (the heads as the mma's M side, experiment 50)
    groups = (None,) if which == "default" else (None, 16)
    defaults = [(make_config(q, fp8, d, pf, gpu_name=gpu, pdl=pdl, group=g), gpu) for (q, fp8, d) in combos
                for pf in distances for gpu in ("", "NVIDIA H200") for pdl in (None, False) for g in groups]
    cfgs = [c for c, _ in defaults]
    cfgs += [w for c, gpu in defaults if (w := wide_config(c, gpu)) is not None]  # the large batches' modules
    if which != "default":  # the prefetch ablation of the benchmark: other distances, and the copy-engine mode
        cfgs += [make_config("bf16", False, 128, pf) for pf in (1, 4)]
        cfgs += [make_config("bf16", False, 128, 2, prefetch_bulk=True)]
        # the experiments' modules (kernel_bench --stages 6 / --pdl / --no-pdl / --fp8-q / --f16-math / --lazy-rescale
        # / --two-blocks / --late-trigger, their GPU tests, and block_timeline.py's trace builds with and without PDL)
        base = [("bf16", False, 128), ("bf16", False, 64), ("bf16", True, 128)]
        cfgs += [make_config(q, fp8, d, 0, stages=6) for q, fp8, d in base]
        cfgs += [make_config(q, fp8, d, 0, pdl=p) for q, fp8, d in base for p in (False, True)]
        cfgs += [make_config("bf16", True, d, 0, fp8_q=True) for d in (64, 128, 256)]
        cfgs += [make_config("bf16", True, d, 0, f16_math=True) for d in (64, 128, 256)]
        cfgs += [make_config(q, fp8, d, 0, lazy_rescale=True) for q, fp8, d in base]
        cfgs += [make_config("bf16", True, d, 0, f16_math=True, lazy_rescale=True) for d in (64, 128)]
        # fp8 at head_dim 128 with the bf16 mma (the default before experiment 26; the f16_math tests' baseline)
        cfgs += [make_config("bf16", True, 128, pf, f16_math=False, lazy_rescale=lr) for pf in distances
                 for lr in (False, True) if pf == 0 or not lr]
        cfgs += [make_config(q, fp8, d, 0, trace=True, pdl=p) for q, fp8, d in base for p in (False, True)]
        three = base[1:]  # the modules that fit three blocks per SM (--two-blocks; experiment 21)
        cfgs += [make_config(q, fp8, d, 0, pdl=p, two_blocks=True) for q, fp8, d in three for p in (False, True)]
        cfgs += [make_config(q, fp8, d, 0, trace=True, pdl=True, two_blocks=True) for q, fp8, d in three]
        cfgs += [make_config(q, fp8, d, 0, pdl=True, late_trigger=True, trace=t) for q, fp8, d in three
                 for t in (False, True)]  # --late-trigger (experiment 23)
        # experiment 26 (kernel_bench --variant): two blocks per SM with fp16 mma / e4m3 q, or a 6-deep ring
        cfgs += [make_config("bf16", True, 128, 0, pdl=True, two_blocks=True, f16_math=h, fp8_q=not h)
                 for h in (False, True)]
        cfgs += [make_config(q, fp8, d, 0, stages=6, pdl=p, f16_math=h) for q, fp8, d in three
                 for p in (False, True) for h in (False, True) if fp8 or not h]
        # experiment 27 (kernel_bench --stages 2 3): shallower rings, so more blocks (warps) share an SM
        cfgs += [make_config(q, fp8, d, 0, stages=n, gpu_name=gpu) for q, fp8, d in three for n in (2, 3)
                 for gpu in ("", "NVIDIA H200")]
        # experiment 30 (kernel_bench --cluster-merge and its GPU test): each card's defaults with the cluster merge
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name=gpu, cluster_merge=True) for fp8 in (False, True)
                 for d in (64, 128, 256) for gpu in ("", "NVIDIA H200")]
        # experiment 34 (kernel_bench --variant kvprefetch_pp and its GPU test): whole-token-row L2 prefetch
        cfgs += [make_config(q, fp8, d, 0, gpu_name=gpu, page_prefetch=True) for q, fp8, d in base
                 for gpu in ("", "NVIDIA H200")]
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", page_prefetch=True)
                 for fp8, d in ((True, 64), (False, 256))]  # the GPU test's other families
        # experiment 37 (kernel_bench --variant kvprefetch_tma and its GPU test)
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name=gpu, tma=True)
                 for fp8, d in ((True, 128), (False, 64), (False, 128)) for gpu in ("", "NVIDIA H200")]
        # experiment 38's GPU test on the families whose default has no early loads (fp8 d64, 16-bit d256)
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", pdl=True, early_kv=True)
                 for fp8, d in ((True, 64), (False, 256))]
        # session 16 (kernel_bench --variant ..._pdl_lt_ek): the late PDL release with the early loads (experiment 40)
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", late_trigger=True)
                 for fp8, d in ((True, 128), (False, 128), (False, 64))]
        # session 17's block timelines on the H200 (block_timeline.py: the trace build of each family's default, PDL and
        # plain: --no-pdl, session 24)
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", trace=True, pdl=p)
                 for fp8, d in ((True, 128), (False, 128), (False, 64)) for p in (None, False)]
        # experiment 44 (kernel_bench --variant kvprefetch_npa and the GPU test of pid_ahead): the H200 defaults with
        # one iteration of page-id lookahead, with and without PDL, and the two tested families without the default
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", pid_ahead=False, pdl=p)
                 for fp8, d in ((True, 128), (False, 128), (False, 64)) for p in (None, False)]
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", pid_ahead=True)
                 for fp8, d in ((True, 64), (False, 256))]
        # experiment 46 (step_context_bench --kernels kvprefetch_s<N>_nopdl[_npa]): shallower rings launched plainly, so
        # more blocks share an SM at large KV
        cfgs += [make_config("bf16", False, d, 0, stages=n, gpu_name="NVIDIA H200", pdl=False, pid_ahead=pa)
                 for d, n in ((64, 2), (64, 3), (128, 2)) for pa in (False, True)]
        # experiment 47's A/B (kernel_bench / step_context_bench --kernels kvprefetch_ol, kvprefetch_nopdl_nol, ...):
        # the H200 defaults of the three families with the tile copy before it and after it, with PDL and without
        cfgs += [make_config("bf16", fp8, d, 0, gpu_name="NVIDIA H200", pdl=p, old_loads=ol)
                 for fp8, d in ((True, 128), (False, 128), (False, 64)) for p in (None, False) for ol in (False, True)]
        # session 20's block timelines of experiment 47's two copies (block_timeline.py --no-pdl --copy old|new)
        cfgs += [make_config("bf16", False, 64, 0, gpu_name="NVIDIA H200", pdl=False, trace=True, old_loads=ol)
                 for ol in (False, True)]
        # experiment 48 (step_context_bench --kernels kvprefetch_s3_nopdl_nol_sb<N>): the head_dim 64 4-blocks-per-SM plain
        # module with experiment 47's copy
        cfgs += [make_config("bf16", False, 64, 0, stages=3, gpu_name="NVIDIA H200", pdl=False, old_loads=False)]
        # session 20 (kernel_bench --fp8 --fp8-q): the H200's fp8 default with q in e4m3, beside XQA's e4m3-q path
        cfgs += [make_config("bf16", True, 128, 0, gpu_name="NVIDIA H200", fp8_q=True)]
        # experiment 50 (kernel_bench / step_context_bench --kernels kvprefetch[_nopdl]_nsw, the GPU test of swap_ab):
        # the 16-bit families' H200 defaults with the heads as the mma's M side, and head_dim 256 swapped
        cfgs += [make_config(q, False, d, 0, gpu_name="NVIDIA H200", pdl=p, swap_ab=d == 256)
                 for q in ("bf16", "f16") for d in (64, 128, 256) for p in (None, False)]
        # experiment 51 (kernel_bench --fp8 --variant kvprefetch[_nopdl]_nsw and the GPU test): fp8 KV with the swapped
        # products (the default at head_dim 128 since session 22) and the H200's fp8 default with the heads as M
        cfgs += [make_config(q, True, d, 0, gpu_name="NVIDIA H200", pdl=p, swap_ab=True)
                 for q in ("bf16", "f16") for d in (64, 128, 256) for p in (None, False)]
        cfgs += [make_config("bf16", True, 128, 0, gpu_name="NVIDIA H200", pdl=p, swap_ab=False) for p in (None, False)]
        # on an H200 each of these runs batches that fill every SM on its shallow-ring twin (experiment 28)
        cfgs += [w for c in cfgs if (w := wide_config(c, "NVIDIA H200")) is not None]
    return list(dict.fromkeys(cfgs))  # once each: where an experiment is the default, both lists name its module


def prepare_build_env() -> None:
    """Point FlashInfer's JIT at the toolkit and, with no driver installed, at a stub libcuda for linking."""
    os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "9.0")
    home = find_cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
    have_driver = any(Path(p).exists() for p in ("/usr/lib/x86_64-linux-gnu/libcuda.so", "/usr/lib64/libcuda.so"))
    if home and not have_driver and not list(Path(home).glob("lib*/stubs/libcuda.so")):
        stub_dir = Path(tempfile.gettempdir()) / "kvprefetch-libcuda-stub"
        stub_dir.mkdir(exist_ok=True)
        stub = stub_dir / "libcuda.so"
        if not stub.exists():
            subprocess.run(["cc", "-shared", "-Wl,-soname,libcuda.so.1", "-o", str(stub), "-x", "c", "/dev/null"],
                           check=True)
        flags = f"-L{stub_dir} -L{home}/lib"
        os.environ["FLASHINFER_EXTRA_LDFLAGS"] = (os.environ.get("FLASHINFER_EXTRA_LDFLAGS", "") + " " + flags).strip()


def build(cfgs: list[DecodeConfig], out: Path | None, arch: str = "90a", verbose: bool = False) -> list[Path]:
    prepare_build_env()
    from flashinfer.jit import build_jit_specs

    from .jit_spec import gen_spec

    specs = [gen_spec(c, arch) for c in cfgs]
    build_jit_specs(specs, verbose=verbose, skip_prebuilt=False)
    paths = []
    for spec in specs:
        so = spec.jit_library_path
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy2(so, out / so.name)
            so = out / so.name
        paths.append(so)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder to collect <module_name>.so files in")
    ap.add_argument("--set", dest="which", choices=("default", "tests", "all"), default="default")
    ap.add_argument("--arch", default="90a", choices=("90a", "80"))
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    cfgs = configs(args.which)
    t0 = time.time()
    print(f"building {len(cfgs)} modules for sm_{args.arch} ...", flush=True)
    for p in build(cfgs, args.out, args.arch, args.verbose):
        print(f"  {p}")
    print(f"done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
