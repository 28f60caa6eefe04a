"""One specialised decode module per configuration, built through FlashInfer's JIT machinery.

The module name carries a hash of the CUDA sources and the nvcc flags, so a changed kernel never loads a stale
build, and a module compiled elsewhere (e.g. on a CPU machine with nvcc, for sm_90a) can be dropped into
``$KVPREFETCH_PREBUILT_DIR/<name>.so`` and loaded without a compiler. FlashInfer's spec builds under a file
lock, so several processes (SGLang's TP workers) compiling the same module end with one good build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from functools import lru_cache
from pathlib import Path

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
SOURCES = ("paged_decode_binding.cu",)
HEADERS = ("paged_decode.cuh", "ptx.cuh", "l2_prefetch.cuh")
ARCH_FLAGS = {
    "90a": ["-gencode=arch=compute_90a,code=sm_90a"],
    "80": ["-gencode=arch=compute_80,code=sm_80"],  # compile-only check of the non-Hopper prefetch path
}


# the experiments' on/off flags: (field, define when on, module-tag suffix when on), in tag order
_EXPERIMENT_FLAGS = (("pdl", "-DKVP_PDL=1", "_pdl"), ("fp8_q", "-DKVP_FP8_Q=1", "_q8"),
                     ("f16_math", "-DKVP_FP8_F16=1", "_h16"), ("lazy_rescale", "-DKVP_LAZY_RESCALE=1", "_lr"),
                     ("trace", "-DKVP_TRACE=1", "_tr"), ("two_blocks", "-DKVP_TWO_BLOCKS=1", "_b2"),
                     ("late_trigger", "-DKVP_LATE_TRIGGER=1", "_lt"),
                     ("cluster_merge", "-DKVP_CLUSTER_MERGE=1", "_cm"),
                     ("page_prefetch", "-DKVP_PAGE_PREFETCH=1", "_pp"),
                     ("tma", "-DKVP_TMA=1", "_tma"),
                     ("early_kv", "-DKVP_EARLY_KV=1", "_ek"),
                     ("pid_ahead", "-DKVP_PID_AHEAD=4", "_pa"),
                     ("old_loads", "-DKVP_OLD_LOADS=1", "_ol"),
                     ("swap_ab", "-DKVP_SWAP_AB=1", "_sw"))


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    q_dtype: str  # "bf16" | "f16"
    kv_fp8: bool  # KV stored as float8 e4m3 (dequantised with k_scale / v_scale)
    head_dim: int  # 64 | 128 | 256
    stages: int  # cp.async ring depth in shared memory
    prefetch: int  # tiles of 64 tokens requested into L2 ahead of the ring; 0 = no prefetch
    prefetch_bulk: bool = False  # cp.async.bulk.prefetch.L2 per row (copy engine) instead of prefetch.global.L2 per line
    pdl: bool = False  # programmatic dependent launch: start during the previous kernel's tail (experiments 8, 20)
    fp8_q: bool = False  # fp8 KV only: q quantised to e4m3, Q K^T on e4m3 tensor cores (experiment)
    f16_math: bool = False  # fp8 KV, bf16 q: both mma in fp16 (e4m3 -> fp16 is one cvt per pair; experiment 16)
    lazy_rescale: bool = False  # rescale the output accumulators only when a row max grows by > 2^8 (experiment 17)
    trace: bool = False  # every block records its timeline into a buffer set by set_trace (experiment 18)
    two_blocks: bool = False  # launch smem padded so at most two blocks share an SM (experiment 21)
    late_trigger: bool = False  # with pdl: release the next launch after the main loop, not at the start (exp. 23)
    cluster_merge: bool = False  # a request's splits form a cluster and merge through its shared memory (exp. 30)
    page_prefetch: bool = False  # each kv head's block prefetches whole token rows of its share of a tile (exp. 34)
    tma: bool = False  # K/V tiles by TMA where the pool allows it (128-byte rows, page >= 16; experiment 37)
    early_kv: bool = False  # with pdl: the first tiles load before griddepcontrol.wait, but the newest token (exp. 38)
    pid_ahead: bool = False  # the main loop's page ids load four iterations ahead instead of one (experiment 44)
    old_loads: bool = False  # the tile copy as before experiment 47, zero-fill operand on every row (old_loads_default)
    swap_ab: bool = False  # group <= 8, q in 16 bits: tokens as the mma's M side, heads as its N side (exp. 50, 51)

    def defines(self) -> list[str]:
        return [
            f"-DKVP_Q_BF16={int(self.q_dtype == 'bf16')}",
            f"-DKVP_KV_FP8={int(self.kv_fp8)}",
            f"-DKVP_HEAD_DIM={self.head_dim}",
            f"-DKVP_STAGES={self.stages}",
            f"-DKVP_PREFETCH={self.prefetch}",
            f"-DKVP_PREFETCH_BULK={int(self.prefetch_bulk)}",
        ] + [define for field, define, _ in _EXPERIMENT_FLAGS if getattr(self, field)]  # only when on

    @property
    def tag(self) -> str:
        kv = "e4m3" if self.kv_fp8 else self.q_dtype
        mode = "b" if self.prefetch_bulk and self.prefetch else ""
        extra = "".join(suffix for field, _, suffix in _EXPERIMENT_FLAGS if getattr(self, field))
        return f"{self.q_dtype}_{kv}_d{self.head_dim}_s{self.stages}_pf{self.prefetch}{mode}{extra}"


# cp.async ring depth per (head_dim, fp8 KV): about 32 KB of K+V per stage, two blocks per SM where it fits
STAGES = {(64, False): 4, (128, False): 3, (256, False): 2, (64, True): 4, (128, True): 4, (256, True): 2}


def make_config(q_dtype: str, kv_fp8: bool, head_dim: int, prefetch: int, prefetch_bulk: bool = False,
                stages: int | None = None, pdl: bool | None = None, fp8_q: bool = False,
                f16_math: bool | None = None, lazy_rescale: bool | None = None, trace: bool = False,
                two_blocks: bool = False, late_trigger: bool | None = None, gpu_name: str = "",
                cluster_merge: bool = False, page_prefetch: bool = False,
                tma: bool = False, early_kv: bool | None = None, pid_ahead: bool | None = None,
                old_loads: bool | None = None, swap_ab: bool | None = None,
                group: int | None = None) -> DecodeConfig:
    """``stages`` overrides the table; ``pdl`` programmatic dependent launch (None: ``pdl_default``); ``fp8_q``
    quantises q to e4m3 for Q K^T with fp8 KV; ``f16_math`` runs fp8 KV's mma in fp16 with bf16 q (None:
    ``f16_math_default``); ``lazy_rescale`` skips the output rescale while no row max grows by more than 2^8 (None:
    ``lazy_rescale_default``). The benchmark's ``--stages`` / ``--pdl`` / ``--no-pdl`` / ``--fp8-q`` / ``--f16-math`` /
    ``--lazy-rescale`` run them as experiments; ``trace`` builds the block-timeline diagnostic (benchmarks/block_timeline.py); ``two_blocks``
    pads the launch's shared memory so at most two blocks share an SM (``--two-blocks``); ``late_trigger`` (with
    ``pdl``) releases the next launch after the main loop (``--late-trigger``; None: ``late_trigger_default``);
    ``cluster_merge`` launches a request's 2–16 splits as one cluster that merges in shared memory (``--cluster-merge``);
    ``page_prefetch`` has the blocks of a (request, split) prefetch whole token rows, every kv head's, into L2;
    ``tma`` loads
    the K/V tiles with TMA boxes where the pool's rows are 128 bytes and pages hold 16 tokens or more; ``early_kv``
    (with ``pdl``; None: ``early_kv_default``) loads the ring's first tiles, all but each request's newest token,
    before the PDL wait; ``pid_ahead`` (None: ``pid_ahead_default``) loads the main loop's page ids four iterations
    ahead instead of one; ``old_loads`` builds the tile copy as before experiment 47 (None: ``old_loads_default``);
    ``swap_ab`` (GQA group <= 8, q in 16 bits) computes S^T = K Q^T and O^T = V^T P^T, tokens as the mma's M side
    (experiments 50, 51; None: ``swap_ab_default`` for ``group``, the q heads per kv head the module serves, where None
    stands for a group of at most 8, as in every model served here).
    ``gpu_name`` (``torch.cuda.get_device_name``) picks the defaults measured on that card; "" means the H100's."""
    if f16_math is None:
        f16_math = f16_math_default(q_dtype, kv_fp8, head_dim, fp8_q)
    if lazy_rescale is None:
        lazy_rescale = lazy_rescale_default(kv_fp8, head_dim)
    if pdl is None:
        pdl = pdl_default(kv_fp8, head_dim, gpu_name)
    if early_kv is None:
        early_kv = pdl and not tma and early_kv_default(kv_fp8, head_dim, gpu_name)
    if pid_ahead is None:
        pid_ahead = pid_ahead_default(kv_fp8, head_dim, gpu_name, early_kv)
    if old_loads is None:
        old_loads = old_loads_default(kv_fp8, head_dim, pdl)
    if swap_ab is None:
        swap_ab = swap_ab_default(kv_fp8, head_dim, group, fp8_q)
    if late_trigger is None:  # with the early loads, small batch-1 grids release late at run time instead
        late_trigger = pdl and not early_kv and late_trigger_default(kv_fp8, head_dim)
    return DecodeConfig(q_dtype, kv_fp8, head_dim, stages or STAGES[(head_dim, kv_fp8)], prefetch,
                        prefetch_bulk and prefetch > 0, pdl, fp8_q, f16_math, lazy_rescale, trace, two_blocks,
                        late_trigger, cluster_merge, page_prefetch, tma, early_kv, pid_ahead, old_loads, swap_ab)


# The shallower ring of the modules that fit three blocks per SM: it fits four, for grids that fill them (experiment 28)
WIDE_STAGES = {(64, False): 3, (128, True): 3}


def wide_config(cfg: DecodeConfig, gpu_name: str = "") -> DecodeConfig | None:
    """The module the op runs where the batch fills every SM (``BatchDecodeWithPagedKVCache.uses_wide``): ``cfg``
    with the shallower ring, for the table's own ring depth of fp8 KV at head_dim 128 and 16-bit KV at head_dim 64,
    on an H200 (experiments 27, 28: −8 … −31 % at batch ≥ 25, +6 … +10 % at 32 × 512; the H100 is unmeasured).
    None elsewhere, and for the experiments that size the launch themselves (``two_blocks``, ``trace``). The twin
    loads its page ids one iteration ahead: with four blocks per SM the chain ``pid_ahead`` shortens is hidden, and
    the longer lookahead measured +0.4 … +2.4 % on its shapes (experiment 44)."""
    key = (cfg.head_dim, cfg.kv_fp8)
    if key not in WIDE_STAGES or cfg.stages != STAGES[key] or cfg.two_blocks or cfg.trace or "H200" not in gpu_name:
        return None
    return dataclasses.replace(cfg, stages=WIDE_STAGES[key], pid_ahead=False)


def pdl_default(kv_fp8: bool, head_dim: int, gpu_name: str = "") -> bool:
    """On where it measured faster: 16-bit KV at head_dim 128 (two blocks per SM), where the next launch's start and
    page-table walk overlap this one's tail and merge (run 12, experiment 20: geomean −4 … −5 %, −1 … −4 µs per layer
    on every split shape of the H100 grids), and at head_dim 64 with the late release (``late_trigger_default``).
    fp8 KV lost with either release (run 13: up to +14 % at the start, +4 % after the loop) and head_dim 256 is
    unmeasured, so they launch plainly. On an H200 head_dim 64 launched plainly too (the late release cost the
    25-µs class 2–6 %, runs 13e, 13g) until the first tiles moved before the wait (``early_kv_default``), which turns
    PDL on for fp8 at head_dim 128 and 16-bit KV at head_dim 64 there."""
    if early_kv_default(kv_fp8, head_dim, gpu_name):
        return True  # on an H200 these load their first tiles before the wait (experiment 38)
    if kv_fp8 or head_dim not in (64, 128):
        return False
    return head_dim == 128 or "H200" not in gpu_name


def early_kv_default(kv_fp8: bool, head_dim: int, gpu_name: str = "") -> bool:
    """On an H200 for fp8 KV at head_dim 128 and 16-bit KV at head_dim 64 and 128, the three families measured (run
    17g, experiment 38): with the first tiles loaded before the PDL wait, geomean −7.5 % (fp8), −7.3 % (head_dim 64),
    −4.2 % (bf16 head_dim 128) over each family's grid, up to −29 % at batch 1; no shape slower for fp8 and head_dim
    64, +2 … +3 % on bf16's roofline shapes (≥ 8 × 16K). The H100 is unmeasured. Needs PDL (``pdl_default`` turns it
    on with it); SGLang's backend launches without PDL unless KVPREFETCH_PDL asks for it."""
    return "H200" in gpu_name and (head_dim, kv_fp8) in ((128, True), (64, False), (128, False))


def pid_ahead_default(kv_fp8: bool, head_dim: int, gpu_name: str = "", early_kv: bool = False) -> bool:
    """On an H200 where it measured faster (experiment 44): a block's loop no longer waits one page-table round trip
    per tile. With the early loads (``early_kv``): head_dim 64 −10 … −14 % at the latency class (16 × 1K 15.4 → 13.3
    µs), fp8 −3 … −7 % there, bf16 head_dim 128 −2 … −3 % on its long shapes; batch 1 ≤ 4K unchanged. Launched
    plainly (SGLang's default): head_dim 64 −2 … −4 % (1 × 4K +2 %), bf16 head_dim 128 +0 … +2 % (so off), fp8
    unmeasured (off). The H100 is unmeasured; the shallow-ring twin keeps one iteration (``wide_config``)."""
    return "H200" in gpu_name and (early_kv or (head_dim, kv_fp8) == (64, False))


def old_loads_default(kv_fp8: bool, head_dim: int, pdl: bool) -> bool:
    """The tile copy as before experiment 47 for 16-bit KV at head_dim 64 launched plainly: the served 1B's module.
    There, at page 1 (SGLang's default), experiment 47's copy measured +4 … +6 % at the latency class (1 × 16K 18.51
    → 19.59 µs, 4 × 4K 16.98 → 18.05 in the simulated step, one process) and −1 % at large KV; at page 16 −2 … −4 %
    at large KV. Everywhere else it measured level or faster (PDL grids −2 … −8 % on the long shapes, 8B plain −0.5 …
    −2 %), so it is the default there. Measured on an H200; the H100 takes the same rule unmeasured."""
    return head_dim == 64 and not kv_fp8 and not pdl


def swap_ab_default(kv_fp8: bool, head_dim: int, group: int | None = None, fp8_q: bool = False) -> bool:
    """Tokens as the M side of both tensor-core products for 16-bit KV at head_dim 64 and 128 and fp8 KV at head_dim
    128 (q in 16 bits), with a GQA group of at most 8 (``group`` None: such a group). Experiment 50 (H200, 16-bit KV):
    PDL grids geomean 0.973 (bf16), 0.967 (group 7), 0.981 (head_dim 64), no shape slower; the served 1B and 8B steps
    launched plainly −1 … −5 % on every shape. Experiment 51 (H200, fp8 KV): PDL grid geomean 0.921, plain 0.947, no
    shape slower than +0.2 %. The H100 is unmeasured (the saving is instructions per tile); head_dim 256 and fp8 at
    head_dim 64 were tested, not measured."""
    if group is not None and group > 8:
        return False
    return (head_dim == 128 and not fp8_q) if kv_fp8 else head_dim in (64, 128)


def f16_math_default(q_dtype: str, kv_fp8: bool, head_dim: int, fp8_q: bool = False) -> bool:
    """On for fp8 KV with bf16 q at head_dim 128 (experiments 16 and 26): e4m3 -> fp16 is one conversion per pair
    instead of four. −9 … −11 % on the H200's long shapes and −3 … −7 % on its 20-µs class, −1 … −8 % on the
    H100's shapes, geomean 0.94–0.96 on both cards; the one loss is 1 × 4K (+0.3 µs, +2 … +3 %). At head_dim 64
    the H100 lost 5.7 % at 128 × 4K, and head_dim 256 is unmeasured, so they keep the bf16 mma."""
    return kv_fp8 and head_dim == 128 and q_dtype == "bf16" and not fp8_q


def late_trigger_default(kv_fp8: bool, head_dim: int) -> bool:
    """With PDL, release the next launch after the main loop where that measured faster: 16-bit KV at head_dim 64,
    three blocks per SM (run 13, experiment 23: geomean −3.4 … −3.8 % against the plain launch, 1 × 1K −11 %, no shape
    more than 1.05 % slower). Released at the start, such a module lets the next launch's blocks crowd into the slot
    its short plan leaves free. Not with the early loads (``make_config``): there the start release won every shape
    but the small batch-1 grids (experiment 40, H200: 64 × 512 −15 %, 8 × 2K −4 %, 1 × 16K −5 %), which release
    late at run time (``BatchDecodeWithPagedKVCache``'s ``adaptive_release``)."""
    return head_dim == 64 and not kv_fp8


def lazy_rescale_default(kv_fp8: bool, head_dim: int) -> bool:
    """On where run 11 measured it no slower on any shape on both cards: 16-bit KV at head_dim 64 (−0.6 … −1.1 %
    geomean). With fp8 KV it cost up to +2.4 % (head_dim 64, H100) and +4 % (head_dim 128, H200) at large batch."""
    return head_dim == 64 and not kv_fp8


def _source_digest() -> str:
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((CSRC_DIR / name).read_bytes())
    return h.hexdigest()


@lru_cache(maxsize=None)
def module_name(cfg: DecodeConfig, arch: str = "90a") -> str:
    h = hashlib.sha256()
    h.update(_source_digest().encode())
    h.update(" ".join(cfg.defines() + ARCH_FLAGS[arch]).encode())
    return f"kvprefetch_decode_{cfg.tag}_sm{arch}_{h.hexdigest()[:12]}"


def nvcc_flags(cfg: DecodeConfig, arch: str = "90a") -> list[str]:
    return ARCH_FLAGS[arch] + cfg.defines() + ["-lineinfo"]


def gen_spec(cfg: DecodeConfig, arch: str = "90a"):
    """FlashInfer JitSpec for ``cfg``; ``arch`` other than 90a is for compile-only checks."""
    os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", "9.0")  # lets the spec be made on a machine with no GPU
    from flashinfer.jit import gen_jit_spec

    return gen_jit_spec(
        module_name(cfg, arch),
        [CSRC_DIR / s for s in SOURCES],
        extra_cuda_cflags=nvcc_flags(cfg, arch),
        extra_include_paths=[CSRC_DIR],
    )


def prebuilt_path(cfg: DecodeConfig) -> Path | None:
    root = os.environ.get("KVPREFETCH_PREBUILT_DIR")
    if not root:
        return None
    path = Path(root) / f"{module_name(cfg)}.so"
    return path if path.is_file() else None
