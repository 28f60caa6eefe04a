"""Seeded random decode configurations for the fuzz against the float64 reference (pure Python, no GPU).

``random_case(random.Random(seed))`` is the whole case: the same seed gives the same case on any machine, and the
checker seeds the input tensors with the same number, so one seed reproduces one failure.
"""
from __future__ import annotations

import math
import random
from typing import Any, Dict, Iterable, List, Set

Q_DTYPES = ("bf16", "f16")
HEAD_DIMS = (64, 128, 256)
GROUPS = (1, 2, 4, 7, 8, 16)
PAGE_SIZES = (1, 1, 2, 4, 8, 16, 16, 32, 64, 64, 128)  # weighted toward what servers use (1, 16, 64)
LONG_CTX = 131072
KV_ROW_BUDGET = 400_000  # tokens x (kv heads x head_dim / 64) per case: bounds memory and reference time
MAX_BATCH = 256


def _ragged_lens(rng: random.Random, page: int) -> List[int]:
    if rng.random() < 0.15:  # few requests, long contexts
        n = rng.randint(1, 3)
        return [rng.choice((1, page, LONG_CTX // rng.choice((1, 2, 8)), rng.randint(1, LONG_CTX))) for _ in range(n)]
    batch = rng.choice((1, 2, 3, 8, 16, 33, 64, 128, MAX_BATCH))
    maxlen = rng.choice((16, 300, 2048, 8192))
    lens = [max(1, int(math.exp(rng.uniform(0, math.log(maxlen))))) for _ in range(batch)]
    lens = [n if rng.random() > 0.2 else max(page, n - n % page) for n in lens]  # exact page multiples too
    if batch > 1 and rng.random() < 0.1:  # an empty request among others (the kernel writes zeros, lse -inf)
        lens[rng.randrange(batch)] = 0
    return lens


def random_case(rng: random.Random) -> Dict[str, Any]:
    """One configuration: shapes, dtypes, lengths, kernel options and call arguments (JSON-serialisable)."""
    d = rng.choice(HEAD_DIMS)
    group = rng.choice(GROUPS)
    hkv = 4 if group == 7 else rng.choice((1, 2, 4, 8))
    page = rng.choice(PAGE_SIZES)
    lens = _ragged_lens(rng, page)
    budget = KV_ROW_BUDGET // (hkv * d // 64)
    while sum(lens) > budget and len(lens) > 1:
        lens.pop()
    lens[0] = min(lens[0], budget)
    q_dtype = rng.choice(Q_DTYPES)
    fp8 = rng.random() < 0.3
    if fp8 or rng.random() < 0.15:
        k_scale, v_scale = round(rng.uniform(0.25, 2.0), 4), round(rng.uniform(0.25, 2.0), 4)
    else:
        k_scale = v_scale = 1.0
    r = rng.random()
    cap = 0.0 if r < 0.75 else (30.0 if r < 0.9 else round(rng.uniform(2.0, 50.0), 3))
    sm_scale = 1.0 / math.sqrt(d)
    if rng.random() < 0.3:
        sm_scale *= rng.uniform(0.5, 2.0)
    return dict(
        lens=lens, hq=hkv * group, hkv=hkv, d=d, page=page, q_dtype=q_dtype, fp8=fp8,
        pf=rng.choice((0, 2)), cap=cap, lse=rng.random() < 0.75, k_scale=k_scale, v_scale=v_scale,
        sm_scale=round(sm_scale, 6),
        layout3d=page == 1 and rng.random() < 0.5,  # SGLang's token pool [slots, heads, dim]
        strided=rng.random() < 0.15,  # q and out as head slices of wider buffers (q inside a qkv tensor)
    )


def kv_dtype_name(case: Dict[str, Any]) -> str:
    return "fp8_e4m3" if case["fp8"] else case["q_dtype"]


def module_key(case: Dict[str, Any]) -> tuple:
    """The compiled module a case runs: (q dtype, fp8 KV, head_dim, prefetch distance)."""
    return (case["q_dtype"], case["fp8"], case["d"], case["pf"])


def wrapper_key(case: Dict[str, Any]) -> tuple:
    return (case["hq"], case["hkv"], case["d"], case["page"], case["q_dtype"], case["fp8"], case["pf"])


def active_splits(length: int, num_splits: int, min_chunk: int, short_splits: int | None = None,
                  short_chunk: int | None = None) -> int:
    """Splits that do work for one request: the kernel's own chunking (decode.split_chunk)."""
    from kvprefetch.jit_kernels.decode import SHORT_CHUNK_TOKENS, split_chunk  # torch; only when a case is described

    if length <= 0:
        return 0
    short = num_splits if short_splits is None else short_splits
    return -(-length // split_chunk(length, num_splits, short, min_chunk, short_chunk or SHORT_CHUNK_TOKENS))


def case_traits(case: Dict[str, Any], num_splits: int, min_chunk: int = 128,
                short_splits: int | None = None, short_chunk: int | None = None) -> Set[str]:
    """What a case exercises, for coverage counts; num_splits is the planner's value for this batch."""
    lens, page = case["lens"], case["page"]
    t = {f"q:{case['q_dtype']}", f"kv:{kv_dtype_name(case)}", f"d:{case['d']}", f"group:{case['hq'] // case['hkv']}",
         f"page:{page}", f"pf:{case['pf']}", "lse" if case["lse"] else "no_lse", "cap" if case["cap"] else "no_cap"}
    if 1 in lens:
        t.add("len_1")
    if 0 in lens:
        t.add("len_0")
    if any(n > page and n % page == 0 for n in lens):
        t.add("exact_page_multiple")
    if max(lens) >= LONG_CTX:
        t.add(f"len_{LONG_CTX}")
    if max(lens) >= 65536:
        t.add("long_ctx")
    acts = [active_splits(n, num_splits, min_chunk, short_splits, short_chunk) for n in lens]
    t.add("split" if max(acts) > 1 else "unsplit")
    if any(a == 1 for a in acts) and max(acts) > 1:
        t.add("split_and_unsplit_in_batch")
    for flag in ("layout3d", "strided"):
        if case[flag]:
            t.add(flag)
    if case["fp8"] and (case["k_scale"] != 1.0 or case["v_scale"] != 1.0):
        t.add("fp8_scales")
    return t


def describe(case: Dict[str, Any]) -> str:
    lens = case["lens"]
    shown = ",".join(str(n) for n in lens[:6]) + (",..." if len(lens) > 6 else "")
    kv = kv_dtype_name(case)
    if case["k_scale"] != 1.0 or case["v_scale"] != 1.0:
        kv += f"(ks={case['k_scale']},vs={case['v_scale']})"
    flags = [f for f in ("layout3d", "strided") if case[f]]
    return (f"lens=[{shown}] (batch {len(lens)}, max {max(lens)}, sum {sum(lens)}) hq={case['hq']} hkv={case['hkv']} "
            f"d={case['d']} page={case['page']} q={case['q_dtype']} kv={kv} pf={case['pf']} cap={case['cap']} "
            f"lse={case['lse']} sm_scale={case['sm_scale']}" + (" " + " ".join(flags) if flags else ""))


def cases_for(seeds: Iterable[int]) -> List[tuple]:
    """[(seed, case)] ordered by wrapper so consecutive cases reuse one wrapper (each case is seeded on its own,
    so the order changes nothing but speed)."""
    pairs = [(s, random_case(random.Random(s))) for s in seeds]
    pairs.sort(key=lambda p: (wrapper_key(p[1]), p[0]))
    return pairs
