#!/usr/bin/env python3
"""The main job: serve a Llama-3.1-8B-shaped model with SGLang's ``--attention-backend kvprefetch``,
generate a few completions, and print decode throughput.

    python benchmarks/main_job.py                          # Llama-3.1-8B shape, 32 layers
    python benchmarks/main_job.py --layers 4               # same per-layer shape, cheaper
    python benchmarks/main_job.py --attention-backend flashinfer   # the same job on a peer backend
    python benchmarks/main_job.py --page-size 16 --kv-cache-dtype fp8_e4m3

It writes the built-in model folder (config + tiny tokenizer, no weights: ``--load-format dummy``),
starts ``sglang.Engine`` in this process, prints a short completion for a few text prompts, then
times a batch of ``--batch-size`` prompts of ``--input-len`` random tokens generating
``--output-len`` tokens each, and prints output tokens/s (end to end) and decode tokens/s (prefill
time subtracted, from a second run that generates one token).

Exit status: 0 done; 2 this machine cannot run it (no CUDA GPU, not sm_90, no nvcc / kernel build
failure, sglang or the kvprefetch package not installed: the message says which); 1 anything else.
The GPU host is offline: HF_HUB_OFFLINE=1 is set unless already set.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNAVAILABLE = 2
SHAPES = ("llama-3.1-8b", "llama-3.2-1b", "qwen2.5-7b", "tiny")


def _fail(msg: str) -> "None":
    print(f"main_job: cannot run here: {msg}", file=sys.stderr, flush=True)
    sys.exit(UNAVAILABLE)


def _model_folder_module():
    try:
        from kvprefetch.integration import model_folder

        return model_folder
    except ImportError:  # running from a checkout without the package installed
        spec = importlib.util.spec_from_file_location("_kvp_model_folder", HERE.parent / "integration" / "model_folder.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def preflight(args, cfg) -> str:
    """Everything that can be checked before starting SGLang; exits with status 2 naming what is
    missing. Returns the GPU's name."""
    try:
        import torch
    except ImportError:
        _fail("torch is not installed")
    if not torch.cuda.is_available():
        _fail("no CUDA GPU is visible to torch (the kvprefetch backend needs an sm_90 GPU: H100 or H200)")
    gpu = torch.cuda.get_device_name(0)
    try:
        import kvprefetch.jit_kernels as jk
    except ImportError as e:
        _fail(f"the kvprefetch package is not importable ({e}); install it: "
              "python3 -m pip install --no-deps --no-index --no-build-isolation --target /tmp/site .")
    ok, reason = jk.is_supported_device(torch.device("cuda", 0))
    if not ok:
        _fail(reason)
    if importlib.util.find_spec("sglang") is None:
        _fail("sglang is not installed (on the GPU host: source benchmarks/gpu_host/setup.sh)")
    if args.attention_backend == "kvprefetch":
        from importlib.metadata import entry_points

        if not any(ep.name == "kvprefetch" for ep in entry_points(group="sglang.srt.plugins")):
            _fail("the kvprefetch package is importable but not installed as a distribution, so SGLang's "
                  "load_plugins() cannot register the backend; install it with pip (see benchmarks/gpu_host/setup.sh)")
        # Build (or load) the decode kernel for this model now: a failure here would otherwise be a
        # quiet fallback to Triton inside the server, and the figure below would not be ours.
        kv_dtype = torch.float8_e4m3fn if args.kv_cache_dtype.startswith("fp8") else torch.bfloat16
        t0 = time.perf_counter()
        try:
            jk.BatchDecodeWithPagedKVCache(
                num_qo_heads=cfg["num_attention_heads"], num_kv_heads=cfg["num_key_value_heads"],
                head_dim=cfg["head_dim"], page_size=args.page_size, q_dtype=torch.bfloat16, kv_dtype=kv_dtype,
                device=torch.device("cuda", 0), max_batch_size=max(args.batch_size, 1),
            ).load()
        except jk.KernelUnavailableError as e:
            _fail(f"the kvprefetch decode kernel is unavailable: {e}")
        print(f"main_job: kvprefetch decode kernel ready in {time.perf_counter() - t0:.1f} s", flush=True)
    return gpu


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-3.1-8b", choices=SHAPES)
    ap.add_argument("--layers", type=int, default=32, help="num_hidden_layers (default 32)")
    ap.add_argument("--model-dir", default=None, help="where to write the model folder (default: a temp dir)")
    ap.add_argument("--attention-backend", default="kvprefetch")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--kv-cache-dtype", default="auto")
    ap.add_argument("--mem-fraction-static", type=float, default=0.8)
    ap.add_argument("--disable-cuda-graph", action="store_true", help="decode CUDA graphs off")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    mf = _model_folder_module()
    cfg = mf.model_config(args.shape, args.layers)
    gpu = preflight(args, cfg)

    model_dir = args.model_dir or os.path.join(tempfile.gettempdir(), f"kvprefetch-{args.shape}-{args.layers}l")
    mf.write_model_folder(model_dir, args.shape, args.layers)
    print(f"main_job: model {args.shape} ({args.layers} layers) at {model_dir}; GPU {gpu}", flush=True)

    import sglang

    engine_kw = dict(
        model_path=model_dir,
        tokenizer_path=model_dir,
        load_format="dummy",
        attention_backend=args.attention_backend,
        page_size=args.page_size,
        kv_cache_dtype=args.kv_cache_dtype,
        mem_fraction_static=args.mem_fraction_static,
        cuda_graph_max_bs_decode=max(args.batch_size, 1),
        cuda_graph_backend_prefill="disabled",
        random_seed=0,
        log_level=args.log_level,
    )
    if args.disable_cuda_graph:
        engine_kw["cuda_graph_backend_decode"] = "disabled"
    t0 = time.perf_counter()
    engine = sglang.Engine(**engine_kw)
    print(f"main_job: engine up in {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        greedy = {"temperature": 0.0, "ignore_eos": True}
        prompts = ["The capital of France is", "def fibonacci(n):", "Paged attention works by", "Hello, my name is"]
        outs = engine.generate(prompts, dict(greedy, max_new_tokens=16))
        for p, o in zip(prompts, outs):  # random weights: the text is noise, the point is that it runs
            print(f"  {p!r} -> {o['text']!r}", flush=True)

        rng = random.Random(0)
        batch = [[rng.randrange(10, 900) for _ in range(args.input_len)] for _ in range(args.batch_size)]
        engine.generate(input_ids=batch, sampling_params=dict(greedy, max_new_tokens=4))  # warm-up

        fresh = [[rng.randrange(10, 900) for _ in range(args.input_len)] for _ in range(args.batch_size)]
        t0 = time.perf_counter()
        engine.generate(input_ids=fresh, sampling_params=dict(greedy, max_new_tokens=1))
        t_prefill = time.perf_counter() - t0

        fresh = [[rng.randrange(10, 900) for _ in range(args.input_len)] for _ in range(args.batch_size)]
        t0 = time.perf_counter()
        outs = engine.generate(input_ids=fresh, sampling_params=dict(greedy, max_new_tokens=args.output_len))
        t_total = time.perf_counter() - t0
    finally:
        engine.shutdown()

    n_out = sum(int(o["meta_info"]["completion_tokens"]) for o in outs)
    e2e = n_out / t_total
    decode_s = t_total - t_prefill
    decode = (n_out - args.batch_size) / decode_s if decode_s > 0 else float("nan")
    print(
        f"MAIN_JOB backend={args.attention_backend} gpu={gpu!r} shape={args.shape} layers={args.layers} "
        f"batch={args.batch_size} input_len={args.input_len} output_len={args.output_len} page_size={args.page_size} "
        f"kv_cache_dtype={args.kv_cache_dtype} cuda_graph={'off' if args.disable_cuda_graph else 'on'} | "
        f"output tokens/s (end to end): {e2e:.1f} | decode tokens/s (prefill subtracted): {decode:.1f} | "
        f"{n_out} tokens in {t_total:.2f} s, prefill+1 token {t_prefill:.2f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
