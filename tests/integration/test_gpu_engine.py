"""GPU end to end: sglang.Engine with --attention-backend kvprefetch against flashinfer.

Every Engine runs in its own subprocess (gpu_engine_worker.py): one GPU, and the process exit
frees everything. Results are cached per configuration for the module, so each reference
runs once. Needs sglang 0.5.17 and the kvprefetch package *installed* (its
``sglang.srt.plugins`` entry point registers the backend in the scheduler process).

Model: the built-in "tiny" Llama (4 layers, head_dim 128, 8 q / 2 kv heads) with seeded
*well-scaled random weights* written next to the config. SGLang's --load-format dummy fills
weights uniformly in [-1e-3, 1e-3]: every attention pattern is then near-uniform and every
next-token distribution near-flat (all logprobs ~ -log(vocab)), so a broken decode kernel
would still "agree" with FlashInfer. With the random weights here attention is peaked and
logits spread over several nats, so attending over wrong or stale pages shows up as O(1)
logprob differences.

Tolerance (per generated token, on the greedy prefix both backends share), calibrated in the
same run: SGLang's own Triton decode backend is compared with FlashInfer on the same prompts,
and kvprefetch may differ from FlashInfer by at most 2x Triton's difference + 0.02 nats (max)
and 2x + 0.005 nats (mean). All three compute the same bf16 model with bf16 rounding inside
attention (relative ~2-4e-3 vs float64 for each kernel, per their own checks); 4 layers of
well-scaled random weights amplify that to ~0.1 nats at the worst token (measured on an H100:
kvprefetch vs flashinfer max 0.106, mean 0.023 nats over 161 tokens). A fixed 0.1/0.02 bound
proved too tight for two correct kernels; a wrong page, stale KV or wrong scale moves logprobs
by whole nats (the weights give peaked distributions: see the first test), far outside 2x the
stock spread. Greedy paths may part at a near-tie; there the test checks, in the reference's
own top-5, that the token we picked is within 0.1 nats of the reference's pick, and stops
comparing that request. Measured on an H100 (9e0f167): Triton and FlashInfer themselves part at
gaps of 0.125 and 0.375 nats, so the near-tie bound is the calibrated max bound too; with fp8 KV
they shared only 45 of 192 greedy tokens (8 of 8 requests parted), so kvprefetch must share at least
half as many tokens as the stock pair did.
"""

import json
import os
import subprocess
import sys

import pytest

from kvp_integration_helpers import SM90_REASON, is_sm90

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not is_sm90(), reason=SM90_REASON)]

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "gpu_engine_worker.py")
MAX_SLACK_NATS, MEAN_SLACK_NATS = 0.02, 0.005  # on top of 2x the stock backends' own spread
TIE_NATS = 0.1
_cache = {}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("sglang")
    from kvprefetch.integration.model_folder import write_model_folder

    path = str(tmp_path_factory.mktemp("models") / "tiny")
    write_model_folder(path, "tiny", weights="random")
    return path


@pytest.fixture(scope="module")
def llama8b_4l_dummy(tmp_path_factory):
    pytest.importorskip("sglang")
    from kvprefetch.integration.model_folder import write_model_folder

    path = str(tmp_path_factory.mktemp("models") / "llama8b-4l")
    write_model_folder(path, "llama-3.1-8b", num_layers=4)
    return path


def run_engine(model, tmp_dir, **opts):
    """Run the worker once per (model, options); returns (results dict, combined log)."""
    key = (model, tuple(sorted(opts.items())))
    if key in _cache:
        return _cache[key]
    out = os.path.join(tmp_dir, f"run{len(_cache)}.json")
    cmd = [sys.executable, WORKER, "--model", model, "--out", out]
    for k, v in sorted(opts.items()):
        flag = "--" + k.replace("_", "-")
        if v is True:
            cmd.append(flag)
        elif v not in (None, False):
            cmd += [flag, str(v)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    log = p.stdout + p.stderr
    assert p.returncode == 0 and os.path.exists(out), f"worker failed ({' '.join(cmd)}):\n{log[-6000:]}"
    with open(out) as f:
        res = json.load(f)
    _cache[key] = (res, log)
    return res, log


def assert_kvprefetch_served(log, graphs=True):
    assert "kvprefetch decode backend ready" in log, log[-4000:]
    assert "falling back to SGLang's Triton" not in log, log[-4000:]
    assert "kvprefetch decode kernel unavailable" not in log, log[-4000:]
    if graphs:
        assert "CUDA-graph decode metadata" in log, log[-4000:]


def compare(ref, got, *, min_fraction=0.5, bound=None, tie=TIE_NATS, stats=None):
    """(max, mean) |delta logprob| over the shared greedy prefix; asserted against ``bound``.
    Where the greedy paths part, the pick must be a near-tie (within ``tie`` nats) in the
    reference's top-5; ``tie=None`` only records the parting (used for calibration)."""
    diffs, parted = [], 0
    total = sum(len(r["ids"]) for r in ref["results"])
    for r, g in zip(ref["results"], got["results"], strict=True):
        assert len(g["ids"]) == len(r["ids"])
        for i, (a, b) in enumerate(zip(r["ids"], g["ids"])):
            if a != b:
                if tie is not None:
                    top = {int(tid): lp for lp, tid in r["top"][i]}
                    assert b in top, f"step {i}: picked {b}, not in the reference's top-5 {top}"
                    assert top[a] - top[b] <= tie, f"step {i}: not a near-tie ({top[a]} vs {top[b]}; tie {tie:.3f})"
                parted += 1
                break
            diffs.append(abs(r["lp"][i] - g["lp"][i]))
    if stats is not None:
        stats["fraction"] = len(diffs) / total
    assert len(diffs) >= min_fraction * total, f"only {len(diffs)}/{total} tokens compared ({parted} parted)"
    mx, mean = max(diffs), sum(diffs) / len(diffs)
    if bound is not None:
        assert mx <= bound[0] and mean <= bound[1], (
            f"max {mx:.4f}, mean {mean:.4f} nats over {len(diffs)}; bound {bound[0]:.4f} / {bound[1]:.4f}")
    return mx, mean


def stock_bound(model, tmp, **opts):
    """The tolerance from two stock backends' own disagreement on the same prompts and options."""
    ref, _ = run_engine(model, tmp, attention_backend="flashinfer", **opts)
    tri, _ = run_engine(model, tmp, attention_backend="triton", **opts)
    stats = {}
    tmx, tmean = compare(ref, tri, tie=None, min_fraction=0.0, stats=stats)
    bound = (2 * tmx + MAX_SLACK_NATS, 2 * tmean + MEAN_SLACK_NATS)
    return ref, bound, (tmx, tmean, stats["fraction"])


def test_weights_make_the_comparison_meaningful(tiny_model, tmp_path_factory):
    ref, _ = run_engine(tiny_model, str(tmp_path_factory.getbasetemp()), attention_backend="flashinfer")
    # peaked next-token distributions: the top-1 logprob is far above -log(vocab) = -9.0
    top1 = [lp for r in ref["results"] for lp in r["lp"]]
    assert sum(top1) / len(top1) > -6.0
    # radix cache: round-2 prompts reuse round-1 prefixes
    assert any((r.get("cached_tokens") or 0) > 0 for r in ref["results"][4:])


@pytest.mark.parametrize("opts", [
    dict(),                                   # page 1, decode CUDA graphs on
    dict(no_cuda_graph=True),                 # eager decode
    dict(page_size=16),
    dict(kv_cache_dtype="fp8_e4m3"),
], ids=["page1-graphs", "page1-eager", "page16-graphs", "fp8-graphs"])
def test_logprobs_match_flashinfer(tiny_model, tmp_path_factory, opts):
    tmp = str(tmp_path_factory.getbasetemp())
    ref_opts = {k: v for k, v in opts.items() if k != "no_cuda_graph"}
    ref, bound, stock = stock_bound(tiny_model, tmp, **ref_opts)
    got, log = run_engine(tiny_model, tmp, attention_backend="kvprefetch", **opts)
    assert_kvprefetch_served(log, graphs=not opts.get("no_cuda_graph"))
    # compare at least half as many tokens as the stock pair shared (fp8 KV makes even those part early)
    mx, mean = compare(ref, got, bound=bound, tie=bound[0], min_fraction=0.5 * stock[2])
    print(f"{opts}: kvprefetch vs flashinfer max |dlogprob| {mx:.4f}, mean {mean:.4f}; "
          f"triton vs flashinfer {stock[0]:.4f} / {stock[1]:.4f} over {stock[2]:.0%} of the tokens")


def test_hybrid_decode_half(tiny_model, tmp_path_factory):
    """--prefill-attention-backend flashinfer --decode-attention-backend kvprefetch: SGLang
    composes the HybridAttnBackend itself; same computation as --attention-backend kvprefetch."""
    tmp = str(tmp_path_factory.getbasetemp())
    full, _ = run_engine(tiny_model, tmp, attention_backend="kvprefetch")
    hyb, log = run_engine(tiny_model, tmp, prefill_attention_backend="flashinfer",
                          decode_attention_backend="kvprefetch")
    assert_kvprefetch_served(log)
    assert "decode half of SGLang's HybridAttnBackend" in log
    mx, _ = compare(full, hyb, min_fraction=0.9)
    assert mx <= 1e-3


def test_hybrid_with_fa3_prefill(tiny_model, tmp_path_factory):
    try:
        import sgl_kernel

        fa3 = os.path.exists(os.path.join(os.path.dirname(sgl_kernel.__file__), "flash_ops.abi3.so"))
    except Exception:
        fa3 = False
    if not fa3:
        pytest.skip("FlashAttention-3 (sgl_kernel/flash_ops.abi3.so) is not staged on this host")
    tmp = str(tmp_path_factory.getbasetemp())
    _, bound, _ = stock_bound(tiny_model, tmp)
    ref, _ = run_engine(tiny_model, tmp, attention_backend="fa3")
    got, log = run_engine(tiny_model, tmp, prefill_attention_backend="fa3", decode_attention_backend="kvprefetch")
    assert_kvprefetch_served(log)
    compare(ref, got, bound=bound, tie=bound[0])


def test_llama8b_shape_dummy_weights_generates(llama8b_4l_dummy, tmp_path_factory):
    """Llama-3.1-8B layer shape (32 q / 8 kv heads, d128), 4 layers, --load-format dummy."""
    got, log = run_engine(llama8b_4l_dummy, str(tmp_path_factory.getbasetemp()), attention_backend="kvprefetch",
                          load_format="dummy", page_size=16)
    assert_kvprefetch_served(log)
    import math

    for r in got["results"]:
        assert len(r["ids"]) == 24 and all(math.isfinite(x) for x in r["lp"])
