"""Shared by the GPU end-to-end tests (imported by name): run one sglang.Engine per subprocess
(gpu_engine_worker.py), cache each configuration's result for the pytest session, and compare
per-token logprobs with a tolerance calibrated on the stock backends (see test_gpu_engine.py)."""

import itertools
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "gpu_engine_worker.py")
MAX_SLACK_NATS, MEAN_SLACK_NATS = 0.02, 0.005  # on top of 2x the stock backends' own spread
TIE_NATS = 0.1
_cache = {}
_run_ids = itertools.count()


def _print_kvprefetch_lines(opts, log):
    """Echo the backend's own log lines (start-up time, modules, workspace, fallbacks) into pytest -s output."""
    for line in log.splitlines():
        if "kvprefetch" in line and ("ready" in line or "CUDA-graph" in line or "unavailable" in line
                                     or "unusable" in line or "cannot be loaded" in line):
            print(f"  [{opts}] {line.strip()}")


def run_engine(model, tmp_dir, env=None, **opts):
    """Run the worker once per (model, options); returns (results dict, combined log).
    ``env`` (a whole environment) runs it uncached: a deliberately broken machine is a one-off."""
    key = (model, tuple(sorted(opts.items())))
    if env is None and key in _cache:
        return _cache[key]
    run = os.path.join(tmp_dir, f"engine-run{next(_run_ids)}")
    out, log_path = run + ".json", run + ".log"  # the log streams to a file: it survives a killed pytest
    cmd = [sys.executable, WORKER, "--model", model, "--out", out]
    for k, v in sorted(opts.items()):
        flag = "--" + k.replace("_", "-")
        if v is True:
            cmd.append(flag)
        elif v not in (None, False):
            cmd += [flag, str(v)]
    with open(log_path, "w") as log_file:
        log_file.write(" ".join(cmd) + "\n")
        log_file.flush()
        p = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, timeout=900, env=env)
    with open(log_path, errors="replace") as log_file:
        log = log_file.read()
    assert p.returncode == 0 and os.path.exists(out), f"worker failed ({' '.join(cmd)}):\n{log[-6000:]}"
    with open(out) as f:
        res = json.load(f)
    _print_kvprefetch_lines(opts, log)
    if env is None:
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


def assert_matches_flashinfer(model, tmp, got, **opts):
    """kvprefetch's run ``got`` against FlashInfer's under the calibrated bound; returns the numbers for a print."""
    ref, bound, stock = stock_bound(model, tmp, **opts)
    # compare at least half as many tokens as the stock pair shared (fp8 KV makes even those part early)
    mx, mean = compare(ref, got, bound=bound, tie=bound[0], min_fraction=0.5 * stock[2])
    return (f"kvprefetch vs flashinfer max |dlogprob| {mx:.4f}, mean {mean:.4f}; "
            f"triton vs flashinfer {stock[0]:.4f} / {stock[1]:.4f} over {stock[2]:.0%} of the tokens")
