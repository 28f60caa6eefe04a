"""Run ONE sglang.Engine in this process, generate a fixed workload, write the results as JSON.

Used by test_gpu_engine.py (one subprocess per Engine: one GPU, and a clean shutdown). The
workload covers what the decode backend must get right:
  round 1: four prompts of 23 / 300 / 1100 / 2500 tokens (partial last pages; the long ones
           are split by --chunked-prefill-size 512: chunked prefill, and a mixed batch)
  round 2: prompts that extend round-1 prompts (radix-cache prefix hits) plus a fresh one.
Greedy decoding, ignore_eos, per-token logprobs + top-5 logprobs of every generated token.

    python gpu_engine_worker.py --model DIR --attention-backend kvprefetch --out r.json \
        [--page-size 16] [--kv-cache-dtype fp8_e4m3] [--no-cuda-graph] [--load-format dummy]
        [--prefill-attention-backend X --decode-attention-backend Y] [--tp-size 2]
"""

import argparse
import json
import random
import time


def workload(vocab_lo=10, vocab_hi=900, seed=0):
    rng = random.Random(seed)

    def ids(n):
        return [rng.randrange(vocab_lo, vocab_hi) for _ in range(n)]

    r1 = [ids(23), ids(300), ids(1100), ids(2500)]
    r2 = [r1[2][:1000] + ids(50), r1[3] + ids(7), r1[1] + ids(33), ids(130)]
    return [r1, r2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--attention-backend", default=None)
    ap.add_argument("--prefill-attention-backend", default=None)
    ap.add_argument("--decode-attention-backend", default=None)
    ap.add_argument("--page-size", type=int, default=1)
    ap.add_argument("--kv-cache-dtype", default="auto")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--no-cuda-graph", action="store_true")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--tp-size", type=int, default=1)
    args = ap.parse_args()

    import sglang

    kw = dict(
        model_path=args.model,
        tokenizer_path=args.model,
        load_format=args.load_format,
        page_size=args.page_size,
        kv_cache_dtype=args.kv_cache_dtype,
        mem_fraction_static=0.5,
        chunked_prefill_size=512,
        cuda_graph_max_bs_decode=8,
        cuda_graph_backend_prefill="disabled",  # decode graphs are what we test; keeps start-up short
        random_seed=0,
        log_level="info",
        tp_size=args.tp_size,
    )
    for name in ("attention_backend", "prefill_attention_backend", "decode_attention_backend"):
        if getattr(args, name) is not None:
            kw[name] = getattr(args, name)
    if args.no_cuda_graph:
        kw["cuda_graph_backend_decode"] = "disabled"

    t0 = time.time()
    engine = sglang.Engine(**kw)
    start_s = time.time() - t0
    results = []
    try:
        sp = {"temperature": 0.0, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
        for prompts in workload():
            outs = engine.generate(input_ids=prompts, sampling_params=sp, return_logprob=True, top_logprobs_num=5)
            for o in outs:
                mi = o["meta_info"]
                results.append({
                    "ids": [t[1] for t in mi["output_token_logprobs"]],
                    "lp": [t[0] for t in mi["output_token_logprobs"]],
                    "top": [[[t[0], t[1]] for t in pos] for pos in mi["output_top_logprobs"]],
                    "cached_tokens": mi.get("cached_tokens"),
                })
    finally:
        engine.shutdown()
    with open(args.out, "w") as f:
        json.dump({"config": kw, "start_s": start_s, "results": results}, f)
    print(f"WORKER_DONE {args.out} ({len(results)} requests, engine start {start_s:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
