"""The launches the compute-sanitizer driver makes: every kernel code path at small shapes, a few launches each
(pure Python, no GPU; the sanitizer is ~100x slower than the kernel, so every launch counts).

Paths: bf16 and fp16 q; bf16/fp16 and fp8 KV; head_dim 64/128/256; GQA group 1/7/16; page 1/16/128 (and the
3-D token-pool layout at page 1); empty request in a batch, single-split and multi-split-with-merge requests in
one launch (the planner gives a 5-request batch several splits; 900 tokens at >= 128 per split is >= 6 of them);
soft-cap on/off; lse on/off; prefetch 0, 2 (line) and 2 (bulk); a CUDA-graph replay. With ``bad=True``: page
tables with out-of-range values, passed as device tensors with validation off.
"""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

GEOMETRIES = ((1, 4), (7, 2), (16, 1))  # (GQA group, kv heads): q heads 4, 14, 16
PAGES = (1, 16, 128)
MIXED_LENS = (0, 1, 32, 200, 900)  # empty, one token, one page-ish, 2 splits, many splits + merge
LONG_LENS = (1500,)


@dataclasses.dataclass(frozen=True)
class Launch:
    name: str
    q_dtype: str  # "bf16" | "f16"
    fp8: bool
    head_dim: int
    prefetch: int
    bulk: bool
    group: int
    hkv: int
    page: int
    lens: Tuple[int, ...]
    cap: float = 0.0
    lse: bool = True
    layout3d: bool = False

    @property
    def module(self) -> Tuple[str, bool, int, int, bool]:
        return (self.q_dtype, self.fp8, self.head_dim, self.prefetch, self.bulk)


def module_configs(quick: bool = False) -> List[Tuple[str, bool, int, int, bool]]:
    """(q dtype, fp8 KV, head_dim, prefetch distance, bulk prefetch) of every module the driver loads."""
    if quick:
        mods = [("bf16", fp8, d, 0, False) for fp8 in (False, True) for d in (64, 128, 256)]
        return mods + [("f16", False, 128, 0, False), ("bf16", True, 64, 2, False), ("bf16", False, 128, 2, True)]
    mods = [(q, fp8, d, 0, False) for q in ("bf16", "f16") for fp8 in (False, True) for d in (64, 128, 256)]
    mods += [("bf16", fp8, d, 2, False) for fp8 in (False, True) for d in (64, 128, 256)]
    return mods + [("bf16", False, 128, 2, True)]


def kernel_launches(quick: bool = False) -> List[Launch]:
    """Two launches per module: a mixed batch (empty / single-split / multi-split) and one long request. Group and
    page rotate with the module's position among those of the same head_dim, so each head_dim sees every group and
    page size; soft-cap and lse rotate through all four combinations."""
    out: List[Launch] = []
    seen_per_d: dict = {}
    for mod in module_configs(quick):
        q, fp8, d, pf, bulk = mod
        j = seen_per_d.get(d, 0)
        seen_per_d[d] = j + 1
        tag = f"{q}_{'e4m3' if fp8 else q}_d{d}_pf{pf}{'b' if bulk else ''}"
        g1, h1 = GEOMETRIES[j % 3]
        g2, h2 = GEOMETRIES[(j + 1) % 3]
        p1, p2 = PAGES[j % 3], PAGES[(j + 2) % 3]
        cap2, lse2 = ((True, False), (False, False), (True, True), (False, True))[j % 4]
        out.append(Launch(f"{tag}_mixed_g{g1}_p{p1}", q, fp8, d, pf, bulk, g1, h1, p1, MIXED_LENS,
                          cap=30.0 if j % 2 else 0.0, lse=True))
        out.append(Launch(f"{tag}_long_g{g2}_p{p2}", q, fp8, d, pf, bulk, g2, h2, p2, LONG_LENS,
                          cap=30.0 if cap2 else 0.0, lse=lse2, layout3d=p2 == 1))
    return out


# CUDA-graph replay: captured once with the first lengths, replayed with the others through the same buffers
# (what SGLang's decode graphs do): single-split, multi-split and empty requests trade places.
GRAPH = Launch("graph_replay", "bf16", False, 128, 0, False, 4, 2, 16, (300, 17, 64))
GRAPH_REPLAYS = ((1, 2000, 0), (129, 5, 16), (4000, 0, 1))


@dataclasses.dataclass(frozen=True)
class BadCase:
    name: str
    corrupt: str  # what the driver does to the valid table (see sanitize_decode.corrupt)
    intact: Tuple[int, ...]  # requests whose output must still match the reference


BAD_LENS = (40, 900, 70)  # request 1 is the one corrupted unless the case says otherwise; 900 tokens: split + merge
BAD_CASES = (
    BadCase("page_id_past_pool", "indices[r1] = pool pages + 0, + 1000", (0, 2)),
    BadCase("page_id_int_max", "indices[r1] = 2**31 - 1", (0, 2)),
    BadCase("page_id_negative", "indices[r1] = -1, -2**31", (0, 2)),
    BadCase("indptr_decreasing", "indptr[2] = indptr[1] - 2", (0,)),
    BadCase("indptr_negative", "indptr[1] = -7", (2,)),
    BadCase("indptr_past_indices", "indptr[3] = len(indices) + 50", (0, 1)),
    BadCase("last_len_zero", "last_len[1] = 0", (0, 2)),
    BadCase("last_len_over_page", "last_len[1] = page + 1", (0, 2)),
    BadCase("last_len_far_over_page", "last_len[1] = 4 * page + 3", (0, 2)),
    BadCase("last_len_negative", "last_len[1] = -5", (0, 2)),
)
BAD_LAUNCHES = (  # modules from the default set; page sizes 16, 1 and 128; split and unsplit requests
    Launch("bad_bf16_d128_pf0_p16", "bf16", False, 128, 0, False, 4, 2, 16, BAD_LENS),
    Launch("bad_bf16_e4m3_d64_pf2_p1", "bf16", True, 64, 2, False, 7, 2, 1, BAD_LENS, cap=30.0),
    Launch("bad_bf16_d256_pf2_p128", "bf16", False, 256, 2, False, 16, 1, 128, BAD_LENS, lse=False),
)
