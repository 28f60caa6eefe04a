"""Batch 1's split plan for requests of a few K tokens (experiment 56): fewer, longer splits than the grid holds."""

from __future__ import annotations

# Measured on an H200 (runs 27a-27d; 16-bit KV at head_dim 128, 8 kv heads), against the planner in the same module:
# (blocks per SM the short request's splits are planned for, the chunk in tokens under which a request counts as
# short), by launch. PDL: 24 splits up to 4,587 tokens; over 3.1K-4.6K a geomean -13 % in sequence and level cold
# (1 x 4K -15 %), but 3.1K-3.6K loses (3200 +12 ... +16 %, 3584 cold +5 ... +6.5 %: a partial third tile where the
# old splits were not many more); a lower length bound would need another launch argument. Launched plainly: 16 splits
# up to 4,125 tokens, -1 ... -9 % at 3K-4K in both regimes; above 4096 the chunk takes a fifth, partial tile (4112 and
# 4224 lost 3-6 %), so the threshold is the smallest that keeps 4096. fp8 KV and head_dim 64 gained in one regime and
# lost in the other.
_BY_PDL = {True: (1.5, 140), False: (1.0, 126)}


def batch1_short_plan(kv_fp8: bool, head_dim: int, num_kv_heads: int, pdl: bool, gpu_name: str,
                      sms: int) -> tuple[int, int] | None:
    """(short splits, short chunk) for a batch of one request, or None where the planner's rule stays (unmeasured
    families, head counts and cards)."""
    if kv_fp8 or head_dim != 128 or num_kv_heads != 8 or "H200" not in gpu_name:
        return None
    per_sm, chunk = _BY_PDL[bool(pdl)]
    return max(1, int(sms * per_sm) // num_kv_heads), chunk
