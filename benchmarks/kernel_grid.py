"""What the kernel benchmark measures: the (batch, ctx) grid, the head shapes, dtypes and page sizes
selected by the command-line flags, the byte count of one decode-attention call, how many layers of KV
fit, and a wall-time estimate. Pure Python (no torch)."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

K = 1024

# (batch, ctx) from the issue. ctx is tokens per request (all requests of a shape have the same ctx).
GRID: Tuple[Tuple[int, int], ...] = (
    (1, 1 * K), (1, 4 * K), (1, 16 * K), (1, 64 * K), (1, 128 * K),
    (4, 4 * K), (8, 2 * K), (8, 16 * K), (16, 1 * K), (32, 4 * K), (32, 16 * K),
    (64, 512), (128, 4 * K), (256, 1 * K),
)
QUICK_GRID: Tuple[Tuple[int, int], ...] = ((1, 1 * K), (1, 16 * K), (8, 2 * K), (64, 512), (32, 16 * K))


def parse_shapes(spec: str) -> List[Tuple[int, int]]:
    """'1x16384,8x2K' -> [(1, 16384), (8, 2048)]."""
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        b, _, c = part.lower().partition("x")
        try:
            ctx = int(c[:-1]) * 1024 if c.endswith("k") else int(c)
            out.append((int(b), ctx))
        except ValueError:
            raise ValueError(f"--shapes: expected BATCHxCTX items, got {part!r}") from None
    if not out:
        raise ValueError("--shapes: empty")
    return out


# name -> (num_qo_heads, num_kv_heads, head_dim)
HEAD_SHAPES: Dict[str, Tuple[int, int, int]] = {
    "llama3_8b": (32, 8, 128),   # default: Llama-3-8B / 3.1-8B attention
    "group7": (28, 4, 128),      # --group7 (Qwen2-7B-like: 7 q heads per kv head)
    "hd64": (32, 8, 64),         # --hd64 (Llama-3.2-1B-like head_dim 64)
}

KV_DTYPES = {"bf16": 2, "fp8_e4m3": 1}   # bytes per element
Q_DTYPE = "bf16"

KVPREFETCH_KERNELS = ("kvprefetch", "kvprefetch_d0")
PEER_KERNELS = ("flashinfer_cc", "flashinfer_tc", "flashinfer_cudnn", "xqa", "sglang_triton", "fa3")
READ_BOUND = "read_bound"
ALL_KERNELS = KVPREFETCH_KERNELS + PEER_KERNELS + (READ_BOUND,)


def variant_name(stages: Optional[int] = None, pdl: Optional[bool] = None, fp8_q: bool = False,
                 splits: Optional[int] = None, f16_math: bool = False, lazy_rescale: bool = False,
                 grid: Optional[int] = None, two_blocks: bool = False, late_trigger: Optional[bool] = None,
                 cluster_merge: bool = False, page_prefetch: bool = False, tma: bool = False,
                 early_kv: bool = False, adaptive_release: Optional[bool] = None,
                 pid_ahead: Optional[bool] = None, old_loads: Optional[bool] = None,
                 short_blocks: Optional[int] = None, swap_ab: Optional[bool] = None) -> str:
    """Kernel name of a kvprefetch experiment variant (kernel_bench --stages / --pdl / --fp8-q / --f16-math /
    --lazy-rescale / --two-blocks / --late-trigger / --cluster-merge / --variant ..._pp / ..._tma / ..._ek /
    --splits / --grid-splits: ``_x<splits>g<grid>``; --pdl / --no-pdl: ``_pdl`` / ``_nopdl``; late_trigger True / False:
    ``_lt`` / ``_et`` (the release after the loop / at the start); adaptive_release False: ``_nar`` (no late release
    for small batch-1 grids); ``_pa`` / ``_npa``: page ids four iterations ahead / one; None keeps the product default;
    ``_ol`` / ``_nol``: the tile copy as before experiment 47 / after it; ``_sb<n>``: short requests' splits planned for
    n blocks per SM instead of SHORT_BLOCKS_PER_SM, experiment 48; ``_sw`` / ``_nsw``: tokens as the mma's M side or
    the heads, experiment 50)."""
    pdl_tag = {True: "_pdl", False: "_nopdl"}.get(pdl, "")
    return ("kvprefetch" + (f"_s{stages}" if stages else "") + pdl_tag + ("_q8" if fp8_q else "")
            + ("_h16" if f16_math else "") + ("_lr" if lazy_rescale else "") + ("_b2" if two_blocks else "")
            + {True: "_lt", False: "_et"}.get(late_trigger, "") + ("_cm" if cluster_merge else "") + ("_pp" if page_prefetch else "")
            + ("_tma" if tma else "") + ("_ek" if early_kv else "") + ("_nar" if adaptive_release is False else "")
            + {True: "_pa", False: "_npa"}.get(pid_ahead, "") + {True: "_ol", False: "_nol"}.get(old_loads, "")
            + {True: "_sw", False: "_nsw"}.get(swap_ab, "") + (f"_sb{short_blocks}" if short_blocks else "")
            + (f"_x{splits}" if splits else "")
            + (f"g{grid}" if splits and grid else ""))


_VARIANT = re.compile(r"kvprefetch(?:_s(\d+))?(_pdl|_nopdl)?(_q8)?(_h16)?(_lr)?(_b2)?(_lt|_et)?(_cm)?(_pp)?(_tma)?(_ek)?(_nar)?"
                      r"(_pa|_npa)?(_ol|_nol)?(_sw|_nsw)?(?:_sb(\d+))?(?:_x(\d+)(?:g(\d+))?)?")


def parse_variant(name: str) -> Optional[Dict[str, Any]]:
    """variant_name's inverse: 'kvprefetch_s6_pdl' -> {stages: 6, pdl: True, fp8_q: False, splits: None};
    'kvprefetch' / 'kvprefetch_d0' -> {}; anything else -> None."""
    if name in KVPREFETCH_KERNELS:
        return {}
    m = _VARIANT.fullmatch(name)
    if m is None or not any(m.groups()):
        return None
    return {"stages": int(m.group(1)) if m.group(1) else None,
            "pdl": {"_pdl": True, "_nopdl": False}.get(m.group(2)), "fp8_q": bool(m.group(3)),
            "f16_math": bool(m.group(4)), "lazy_rescale": bool(m.group(5)), "two_blocks": bool(m.group(6)),
            "late_trigger": {"_lt": True, "_et": False}.get(m.group(7)), "cluster_merge": bool(m.group(8)),
            "page_prefetch": bool(m.group(9)), "tma": bool(m.group(10)), "early_kv": bool(m.group(11)),
            "adaptive_release": False if m.group(12) else None, "pid_ahead": {"_pa": True, "_npa": False}.get(m.group(13)),
            "old_loads": {"_ol": True, "_nol": False}.get(m.group(14)),
            "swap_ab": {"_sw": True, "_nsw": False}.get(m.group(15)), "short_blocks": int(m.group(16)) if m.group(16) else None,
            "splits": int(m.group(17)) if m.group(17) else None, "grid": int(m.group(18)) if m.group(18) else None}


REGIMES = ("in_sequence", "cold")


@dataclass(frozen=True)
class Config:
    """One (page size, heads, dtype) combination; every grid shape is run under it."""
    page_size: int
    heads: str
    kv_dtype: str

    @property
    def num_qo_heads(self) -> int:
        return HEAD_SHAPES[self.heads][0]

    @property
    def num_kv_heads(self) -> int:
        return HEAD_SHAPES[self.heads][1]

    @property
    def head_dim(self) -> int:
        return HEAD_SHAPES[self.heads][2]

    def label(self) -> str:
        return (f"page {self.page_size}, {self.num_qo_heads}/{self.num_kv_heads} heads, d {self.head_dim}, "
                f"kv {self.kv_dtype}")


@dataclass(frozen=True)
class Shape:
    batch: int
    ctx: int
    page_size: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: str
    q_dtype: str = Q_DTYPE

    @property
    def kv_elem_bytes(self) -> int:
        return KV_DTYPES[self.kv_dtype]

    @property
    def pages_per_request(self) -> int:
        return -(-self.ctx // self.page_size)

    @property
    def num_pages(self) -> int:
        """Pages in one layer's pool: exactly the pages the batch uses (every pool page is read once)."""
        return self.batch * self.pages_per_request

    @property
    def kv_bytes(self) -> int:
        """K and V bytes one call must read (the tokens of every request; pages are full here)."""
        return 2 * self.batch * self.ctx * self.num_kv_heads * self.head_dim * self.kv_elem_bytes

    @property
    def pool_bytes(self) -> int:
        """K and V bytes of one layer's page pool (== kv_bytes when ctx is a multiple of page_size)."""
        return 2 * self.num_pages * self.page_size * self.num_kv_heads * self.head_dim * self.kv_elem_bytes

    @property
    def qo_bytes(self) -> int:
        return 2 * self.batch * self.num_qo_heads * self.head_dim * 2   # q read + o written, bf16

    @property
    def total_bytes(self) -> int:
        """Bytes counted for a kernel row's GB/s: KV + q + o."""
        return self.kv_bytes + self.qo_bytes

    def key(self) -> Tuple:
        return (self.batch, self.ctx, self.page_size, self.num_qo_heads, self.num_kv_heads, self.head_dim,
                self.kv_dtype)

    def as_fields(self) -> Dict:
        d = asdict(self)
        return d


def select_configs(fp8: bool = False, page_size_64: bool = False, group7: bool = False, hd64: bool = False,
                   quick: bool = False, page_sizes: Optional[Sequence[int]] = None) -> List[Config]:
    """The flags replace one dimension of the default run each, and combine:
    default: bf16 KV x page sizes (1, 16) x Llama-3-8B heads;  --quick: page 16 only;
    --fp8: KV fp8_e4m3 instead of bf16;  --page-size-64: page 64 instead;  --group7 / --hd64: those head
    shapes instead of Llama's (both flags: both shapes);  page_sizes (--page-sizes 1,16,64) overrides all."""
    dtypes = ["fp8_e4m3"] if fp8 else ["bf16"]
    if page_sizes:
        pages = list(page_sizes)
    elif page_size_64:
        pages = [64]
    elif quick:
        pages = [16]
    else:
        pages = [1, 16]
    heads = [h for h, on in (("group7", group7), ("hd64", hd64)) if on] or ["llama3_8b"]
    return [Config(p, h, d) for d in dtypes for h in heads for p in pages]


def shapes_for(config: Config, grid: Sequence[Tuple[int, int]]) -> List[Shape]:
    return [Shape(b, c, config.page_size, config.num_qo_heads, config.num_kv_heads, config.head_dim,
                  config.kv_dtype) for b, c in grid]


def plan_layers(set_bytes: int, mem_budget_bytes: int, l2_bytes: int, base_layers: int = 32,
                l2_factor: float = 4.0, max_layers: int = 512) -> Tuple[int, int]:
    """(layers, cold_sets) for one shape.

    layers: how many separate layers' KV (pool K+V, `set_bytes` each) to allocate and run back to back in
    the in_sequence graph: `base_layers` (a model's depth), raised so that all layers together are at
    least l2_factor x L2 (so a graph replay never finds the previous replay's KV still in L2), lowered to
    what fits in mem_budget_bytes. 0 means not even one layer fits (the shape is skipped).
    cold_sets: how many of those layers the cold regime rotates through: enough that the
    (cold_sets - 1) other layers read between two uses of one layer exceed l2_factor x L2, at least 2.
    """
    if set_bytes <= 0:
        raise ValueError("set_bytes must be positive")
    fit = int(mem_budget_bytes // set_bytes)
    need = int(math.ceil(l2_factor * l2_bytes / set_bytes)) + 1
    layers = min(max(base_layers, need), max_layers, fit)
    if layers < 1:
        return 0, 0
    cold = min(layers, max(2, need))
    return layers, cold


def timing_repeats(est_call_s: float, layers: int, target_s: float = 0.08, lo: int = 5, hi: int = 100) -> int:
    """Graph replays to time for one (kernel, shape): about target_s of GPU time, within [lo, hi]."""
    per_replay = max(est_call_s * layers, 1e-7)
    return int(min(hi, max(lo, round(target_s / per_replay))))


def cold_samples(est_call_s: float, cold_sets: int, target_s: float = 0.04, lo: int = 10, hi: int = 60) -> int:
    """Single-call samples for the cold regime: at least one full rotation, about target_s of GPU time."""
    n = int(min(hi, max(lo, round(target_s / max(est_call_s, 1e-7)))))
    return max(n, min(cold_sets, hi))


# Rough per-event costs (seconds) for the estimate; measured numbers will differ.
HBM_BYTES_PER_S = 3.0e12
LAUNCH_FLOOR_S = 6e-6
SHAPE_SETUP_S = 0.5          # allocate + fill the layers, page tables, reference
KERNEL_SETUP_S = 0.12        # plan + correctness call + graph captures + teardown
IMPORT_S = 20.0              # import flashinfer + sglang (Triton decode) + sgl_kernel
JIT_S = {                    # first use of a kernel family per (dtype, heads) on a fresh host; FlashInfer
    # bf16/d128 modules come from the JIT-cache seed; XQA compiles in a background process meanwhile
    "kvprefetch": 40.0, "kvprefetch_d0": 30.0, "flashinfer_cc": 2.0, "flashinfer_tc": 2.0,
    "flashinfer_cudnn": 1.0, "xqa": 20.0, "sglang_triton": 8.0, "fa3": 15.0, READ_BOUND: 2.0,
}


def est_call_s(shape: Shape) -> float:
    return max(LAUNCH_FLOOR_S, shape.total_bytes / HBM_BYTES_PER_S)


def estimate_seconds(configs: Sequence[Config], grid: Sequence[Tuple[int, int]], kernels: Sequence[str],
                     mem_budget_bytes: int = 56 << 30, l2_bytes: int = 50 << 20,
                     jit_cached: bool = False) -> Dict[str, float]:
    """Wall-time estimate (seconds) of a kernel_bench run, by part."""
    gpu = setup = 0.0
    for cfg in configs:
        for shape in shapes_for(cfg, grid):
            layers, cold = plan_layers(shape.pool_bytes, mem_budget_bytes, l2_bytes)
            if layers == 0:
                continue
            t = est_call_s(shape)
            setup += SHAPE_SETUP_S + 2 * layers * shape.pool_bytes / HBM_BYTES_PER_S
            for _ in kernels:
                reps = timing_repeats(t, layers)
                gpu += (reps + 3) * t * layers + cold_samples(t, cold) * (t + 15e-6)
                setup += KERNEL_SETUP_S + cold * 1e-3
    jit = 0.0 if jit_cached else sum(JIT_S.get(k, 5.0) for k in kernels) * max(
        1, len({(c.kv_dtype, c.heads) for c in configs}))
    return {"import_s": IMPORT_S, "jit_s": jit, "gpu_s": gpu, "setup_s": setup,
            "total_s": IMPORT_S + jit + gpu + setup}
