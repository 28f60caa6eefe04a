"""Determinism probes: a fixed set of token-id prompts, each sent alone (one at a time, nothing else running)
to SGLang's native /generate, greedy, a fixed number of new tokens with EOS ignored; the output token ids of
two passes must be identical. The radix cache is flushed (/flush_cache) before a pass so a probe is always
prefilled from scratch, never partly from the cache of an earlier pass.

Prompts: ids drawn from the model folder's tokenizer vocabulary (1,000 ids) with a fixed seed; each prompt
starts with its own first id, so no probe is a prefix of another. Lengths cover a single token, sub-page,
several pages and inputs longer than a default chunked-prefill chunk.
Pure Python (the HTTP call is injectable)."""
from __future__ import annotations

import random
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import soak_http

PROBE_LENS = (1, 7, 100, 511, 2048, 5000, 12000, 20000)
PROBE_NEW_TOKENS = 32
PROBE_SEED = 1234
PROBE_VOCAB = (4, 1000)       # ids 0..3 are the folder tokenizer's special tokens


def probe_spec() -> Dict[str, Any]:
    return {"lens": list(PROBE_LENS), "max_new_tokens": PROBE_NEW_TOKENS, "seed": PROBE_SEED}


def probe_prompts(lens: Sequence[int] = PROBE_LENS, seed: int = PROBE_SEED,
                  vocab: Tuple[int, int] = PROBE_VOCAB) -> List[List[int]]:
    rng = random.Random(seed)
    lo, hi = vocab
    out = []
    for i, n in enumerate(lens):
        first = lo + (i * 97) % (hi - lo)
        out.append([first] + [rng.randrange(lo, hi) for _ in range(n - 1)])
    return out


def generate_payload(ids: List[int], max_new_tokens: int = PROBE_NEW_TOKENS) -> Dict[str, Any]:
    return {"input_ids": ids, "stream": False,
            "sampling_params": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}


def flush_cache(base_url: str, post: Optional[Callable[..., Tuple[int, Any]]] = None, tries: int = 10,
                wait_s: float = 1.0) -> bool:
    """/flush_cache refuses (400) while requests run: retry a few times."""
    post = post or soak_http.post_json
    for _ in range(tries):
        status, _ = post(f"{base_url.rstrip('/')}/flush_cache", {}, 30.0)
        if status == 200:
            return True
        time.sleep(wait_s)
    return False


def run_probes(base_url: str, prompts: Sequence[List[int]], max_new_tokens: int = PROBE_NEW_TOKENS,
               post: Optional[Callable[..., Tuple[int, Any]]] = None, timeout_s: float = 60.0) -> List[Dict[str, Any]]:
    """One result per prompt, in order: {"output_ids": [...], "finish": ...} or {"error": "..."}. After a probe
    that got no answer at all (server gone or hung) the rest are not sent."""
    post = post or soak_http.post_json
    out: List[Dict[str, Any]] = []
    for i, ids in enumerate(prompts):
        if out and out[-1].get("no_answer"):
            out.append({"error": f"not sent: probe {i - 1} got no answer", "no_answer": True})
            continue
        status, body = post(f"{base_url.rstrip('/')}/generate", generate_payload(ids, max_new_tokens), timeout_s)
        if status == 200 and isinstance(body, dict) and isinstance(body.get("output_ids"), list):
            fr = (body.get("meta_info") or {}).get("finish_reason")
            out.append({"output_ids": [int(x) for x in body["output_ids"]],
                        "finish": fr.get("type") if isinstance(fr, dict) else fr})
        else:
            out.append({"error": f"HTTP {status}: {str(body)[:300]}"} | ({"no_answer": True} if status == 0 else {}))
    return out


def compare_probes(ref: Sequence[Dict[str, Any]], got: Sequence[Dict[str, Any]],
                   lens: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Differences between two passes ([] = identical). A probe that errored in either pass is a difference."""
    diffs: List[Dict[str, Any]] = []
    if len(ref) != len(got):
        diffs.append({"probe": None, "why": f"{len(ref)} vs {len(got)} probes"})
    for i, (a, b) in enumerate(zip(ref, got)):
        d: Dict[str, Any] = {"probe": i}
        if lens is not None and i < len(lens):
            d["input_len"] = lens[i]
        if "error" in a or "error" in b:
            d["why"] = "error: " + (a.get("error") or b.get("error"))
        elif a["output_ids"] != b["output_ids"]:
            x, y = a["output_ids"], b["output_ids"]
            pos = next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            d.update(why="output ids differ", first_diff=pos, ref=x[pos:pos + 8], got=y[pos:pos + 8],
                     ref_len=len(x), got_len=len(y))
        else:
            continue
        diffs.append(d)
    return diffs
