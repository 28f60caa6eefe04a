"""BatchDecodeWithPagedKVCache: plan() once per decode step, run() once per layer (CUDA-graph capturable)."""

from __future__ import annotations

import math
import os

import torch

from .device import is_supported_device
from . import l2_prefetch
from .batch1_plan import batch1_short_plan
from .errors import KernelUnavailableError
from .jit_spec import make_config, wide_config
from .loader import describe_load, load_module
from .validation import check_index_values, check_shape, check_tensor, validation_mode

_Q_DTYPES = {torch.bfloat16: "bf16", torch.float16: "f16"}
_FP8 = torch.float8_e4m3fn
HEAD_DIMS = (64, 128, 256)
MAX_GROUP = 16  # q heads per kv head: the 16 rows of one m16n8k16 tile
MAX_SPLITS = 256  # the kernel's merge keeps MAX_SPLITS x 16 weights in shared memory
MIN_CHUNK_TOKENS = 128  # two 64-token tiles: all four warps busy, and few partials to merge
# Blocks per SM the split count of short requests is planned for (the kernel's split_chunk): modules that fit three
# (fp8, head_dim 64) ran the 25-us class 8-15 % faster with the splits of two (NOTES.md, runs 7 and 8).
SHORT_BLOCKS_PER_SM = 2
DEFAULT_PREFETCH_DISTANCE = 0  # tiles of 64 tokens; on the H100 every distance > 0 measured slower (NOTES.md, run 2)
_LOG2E = 1.4426950408889634


def _env_prefetch_distance() -> int | None:
    raw = os.environ.get("KVPREFETCH_PREFETCH_DISTANCE")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"KVPREFETCH_PREFETCH_DISTANCE: expected an integer 0..8, got {raw!r}") from None


def _env_prefetch_bulk() -> bool:
    mode = os.environ.get("KVPREFETCH_PREFETCH_MODE", "line")
    if mode not in ("line", "bulk"):
        raise ValueError(f"KVPREFETCH_PREFETCH_MODE: expected 'line' or 'bulk', got {mode!r}")
    return mode == "bulk"


def _check_positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"{name}: expected a positive int, got {v!r}")
    return v


def split_count(batch_size: int, num_kv_heads: int, target_blocks: int) -> int:
    """KV splits per (request, kv head), from the batch size alone: as many blocks as fit in one wave
    (a partial second wave would cost a whole extra split's time). Short requests use fewer splits on the
    device (MIN_CHUNK_TOKENS)."""
    return max(1, min(MAX_SPLITS, target_blocks // (max(batch_size, 1) * num_kv_heads)))


SHORT_CHUNK_TOKENS = 512  # the planner's short-chunk threshold (batch 1 may use batch1_plan's)


def split_chunk(length: int, num_splits: int, short_splits: int, min_chunk: int = MIN_CHUNK_TOKENS,
                short_chunk: int = SHORT_CHUNK_TOKENS) -> int:
    """Tokens per split of a request of ``length`` tokens, as the kernel computes it (``split_chunk`` in
    csrc/paged_decode.cuh): ``short_splits`` where ``num_splits`` would give splits under ``short_chunk``."""
    chunk = -(-length // num_splits)
    if chunk < short_chunk:
        chunk = -(-length // max(1, min(short_splits, num_splits)))
    return max((chunk + 15) & ~15, min_chunk)


class BatchDecodeWithPagedKVCache:
    """Decode attention over a paged KV cache in FlashInfer's layout.

    K and V are ``[num_pages, page_size, num_kv_heads, head_dim]`` (or ``[num_slots, num_kv_heads, head_dim]``
    when ``page_size == 1``, SGLang's token pool with no copy); the page table is ``kv_indptr [B+1]``,
    ``kv_indices [nnz_pages]`` and ``kv_last_page_len [B]`` (int32).

    Experiments (the tuned defaults are what the benchmarks report): ``stages`` overrides the cp.async ring depth
    (None: the tuned table, and on an H200 for fp8 KV at head_dim 128 and 16-bit KV at head_dim 64 a shallower twin
    module for the batches that fill every SM, ``uses_wide``; experiment 28);
    ``pdl`` (None: ``pdl_default``, on for 16-bit KV at head_dim 64 and 128, at 64 not on an H200) launches with
    programmatic dependent launch: each block lets the next kernel in the stream launch (at its start, or after its
    main loop with ``late_trigger``), and warms L2 with its first tiles while the previous kernel finishes (it waits
    for that kernel before reading anything it may write);
    ``fp8_q=True`` (fp8 KV only) rounds q to e4m3 and runs Q K^T on e4m3 tensor cores, as SGLang's fa3 backend
    does with fp8 KV (relative error ~3e-2 instead of ~3e-3); ``f16_math=True`` (fp8 KV with bf16 q) converts q to
    fp16 once per block (saturating at +-65504) and runs both mma in fp16, so each e4m3 pair needs one conversion
    instead of four; the default (None) turns it on for fp8 KV with bf16 q at head_dim 128 (experiments 16, 26);
    ``lazy_rescale=True`` rescales the output accumulators only in tiles where a row's running max
    grows by more than 2^8 (P entries stay <= 256; the result is the same up to rounding); the default (None) turns
    it on for 16-bit KV at head_dim 64 only, where it measured faster on both cards (NOTES.md, run 11);
    ``trace=True`` builds the block-timeline diagnostic (``set_trace``; experiment 18); ``two_blocks=True`` pads
    the launch's shared memory so at most two blocks share an SM (the planner then plans for two; experiment 21);
    ``late_trigger=True`` (with PDL) releases the next launch after the main loop, not at the start (experiment 23);
    the default (None) turns it on where PDL is on for 16-bit KV at head_dim 64 (NOTES.md, run 13);
    ``cluster_merge=True`` launches the splits of each (request, kv head) as one thread-block cluster where the split
    count is 2..16, and merges them through distributed shared memory instead of global memory (experiment 30);
    ``page_prefetch=True`` has each kv head's block prefetch into L2 the whole token rows (every kv head's) of its
    share of each tile, so DRAM sees contiguous spans instead of per-head rows (experiment 34);
    ``tma=True`` loads the K/V tiles as TMA boxes (16 tokens of one kv head) where the rows
    are 128 bytes and a page holds 16 tokens or more, with cp.async elsewhere (experiment 37); ``early_kv=True``
    (with PDL) loads the ring's first tiles before the PDL wait, all but each request's newest token, whose rows
    and q are read after it (experiment 38); the default (None) turns it on with PDL where it measured faster
    (``early_kv_default``). Its contract: no kernel that may still run when this launch starts (the one just
    before it in the stream, and those before that which released their dependents early) writes a page-table
    entry or a KV row other than the newest token's. SGLang's KV write before decode attention keeps it: it does
    not release early, so it has finished when this kernel starts, and it writes only the newest token.
    ``adaptive_release`` (with PDL released at the start; None: on where the early loads are) has a batch-1 launch
    whose active blocks are fewer than half the SMs release the next launch after its main loop instead (experiments
    40, 41). ``pid_ahead`` (None: ``pid_ahead_default``: on an H200 with the early loads, and for 16-bit KV at
    head_dim 64) loads the main loop's page ids four iterations before their rows are needed instead of one
    (experiment 44). ``old_loads`` (None: ``old_loads_default``: 16-bit KV at head_dim 64 launched plainly) builds the
    tile copy as before experiment 47. ``swap_ab`` (GQA group <= 8, q in 16 bits; None: ``swap_ab_default``, on for
    16-bit KV at head_dim 64 and 128 and fp8 KV at head_dim 128) makes the tokens the M side of the tensor-core
    products and the heads their N side, halving the padded work per tile (experiments 50, 51).
    """

    def __init__(
        self,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        page_size: int,
        q_dtype: torch.dtype,
        kv_dtype: torch.dtype,
        device: torch.device | str,
        max_batch_size: int = 256,
        prefetch_distance: int | None = None,
        stages: int | None = None,
        pdl: bool | None = None,
        fp8_q: bool = False,
        f16_math: bool | None = None,
        lazy_rescale: bool | None = None,
        trace: bool = False,
        two_blocks: bool = False,
        late_trigger: bool | None = None,
        cluster_merge: bool = False,
        page_prefetch: bool = False,
        tma: bool = False,
        early_kv: bool | None = None,
        adaptive_release: bool | None = None,
        pid_ahead: bool | None = None,
        old_loads: bool | None = None,
        swap_ab: bool | None = None,
    ):
        _check_positive_int("num_qo_heads", num_qo_heads)
        _check_positive_int("num_kv_heads", num_kv_heads)
        _check_positive_int("page_size", page_size)
        _check_positive_int("max_batch_size", max_batch_size)
        if head_dim not in HEAD_DIMS:
            raise ValueError(f"head_dim: expected one of {HEAD_DIMS}, got {head_dim!r}")
        if num_qo_heads % num_kv_heads:
            raise ValueError(
                f"num_qo_heads: expected a multiple of num_kv_heads ({num_kv_heads}), got {num_qo_heads}"
            )
        group = num_qo_heads // num_kv_heads
        if group > MAX_GROUP:
            raise ValueError(
                f"num_qo_heads / num_kv_heads: expected a GQA group size of 1..{MAX_GROUP}, got {group}"
            )
        if page_size & (page_size - 1):
            raise ValueError(f"page_size: expected a power of two, got {page_size}")
        if q_dtype not in _Q_DTYPES:
            raise ValueError(f"q_dtype: expected torch.bfloat16 or torch.float16, got {q_dtype}")
        if kv_dtype not in (q_dtype, _FP8):
            raise ValueError(f"kv_dtype: expected {q_dtype} (same as q) or torch.float8_e4m3fn, got {kv_dtype}")
        if prefetch_distance is None:
            prefetch_distance = _env_prefetch_distance()
        if prefetch_distance is None:
            prefetch_distance = DEFAULT_PREFETCH_DISTANCE
        if isinstance(prefetch_distance, bool) or not isinstance(prefetch_distance, int) or not 0 <= prefetch_distance <= 8:
            raise ValueError(f"prefetch_distance: expected an int 0..8, got {prefetch_distance!r}")

        if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or not 2 <= stages <= 8):
            raise ValueError(f"stages: expected None (the tuned table) or an int 2..8, got {stages!r}")
        if pdl is not None and not isinstance(pdl, bool):
            raise ValueError(f"pdl: expected a bool or None, got {pdl!r}")
        if not isinstance(fp8_q, bool) or (fp8_q and kv_dtype != _FP8):
            raise ValueError(f"fp8_q: expected a bool, True only with kv_dtype torch.float8_e4m3fn; got {fp8_q!r} "
                             f"with kv_dtype {kv_dtype}")
        if not (f16_math is None or isinstance(f16_math, bool)) or (
                f16_math and (kv_dtype != _FP8 or q_dtype != torch.bfloat16 or fp8_q)):
            raise ValueError(f"f16_math: expected a bool or None, True only with kv_dtype torch.float8_e4m3fn, q_dtype "
                             f"torch.bfloat16 and fp8_q=False; got {f16_math!r} with kv_dtype {kv_dtype}, q_dtype "
                             f"{q_dtype}, fp8_q={fp8_q}")
        if lazy_rescale is not None and not isinstance(lazy_rescale, bool):
            raise ValueError(f"lazy_rescale: expected a bool or None, got {lazy_rescale!r}")
        for name, flag in (("trace", trace), ("two_blocks", two_blocks), ("cluster_merge", cluster_merge),
                           ("page_prefetch", page_prefetch), ("tma", tma)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}: expected a bool, got {flag!r}")
        for name, opt in (("pid_ahead", pid_ahead), ("old_loads", old_loads), ("swap_ab", swap_ab)):
            if opt is not None and not isinstance(opt, bool):
                raise ValueError(f"{name}: expected a bool or None, got {opt!r}")
        if swap_ab and (fp8_q or group > 8):
            raise ValueError(f"swap_ab: expected False unless the GQA group is at most 8 (the heads are the mma's "
                             f"8-wide side) and q stays 16-bit (fp8_q=False); got group {group}, fp8_q={fp8_q}")
        if early_kv is not None and not isinstance(early_kv, bool):
            raise ValueError(f"early_kv: expected a bool or None, got {early_kv!r}")
        if late_trigger is not None and not isinstance(late_trigger, bool):
            raise ValueError(f"late_trigger: expected a bool or None, got {late_trigger!r}")

        self.num_qo_heads, self.num_kv_heads, self.group = num_qo_heads, num_kv_heads, group
        self.head_dim, self.page_size = head_dim, page_size
        self.q_dtype, self.kv_dtype = q_dtype, kv_dtype
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_batch_size = max_batch_size
        self.prefetch_distance = prefetch_distance
        kv_fp8 = kv_dtype == _FP8
        on_gpu = self.device.type == "cuda" and torch.cuda.is_available()
        gpu_name = torch.cuda.get_device_name(self.device) if on_gpu else ""  # per-card defaults (jit_spec)
        self._gpu_name = gpu_name
        self.batch1_short = None  # set by load(): batch 1's (short splits, short chunk) where batch1_plan has one
        self.config = make_config(_Q_DTYPES[q_dtype], kv_fp8, head_dim, prefetch_distance, _env_prefetch_bulk(), stages,
                                  pdl, fp8_q, f16_math, lazy_rescale, trace, two_blocks, late_trigger, gpu_name,
                                  cluster_merge, page_prefetch, tma, early_kv, pid_ahead, old_loads, swap_ab, group)
        if early_kv and (not self.config.pdl or tma):
            raise ValueError(f"early_kv: expected False unless the launch uses PDL (pdl resolved to "
                             f"{self.config.pdl}) on the cp.async path (tma={tma})")
        if late_trigger and not self.config.pdl:
            raise ValueError(f"late_trigger: expected False or None unless the launch uses PDL, got pdl={pdl!r}")
        releases_at_start = self.config.pdl and not self.config.late_trigger
        if adaptive_release is not None and (not isinstance(adaptive_release, bool) or
                                             adaptive_release and not releases_at_start):
            raise ValueError(f"adaptive_release: expected None or a bool, True only with PDL released at the start "
                             f"(pdl resolved to {self.config.pdl}, late_trigger to {self.config.late_trigger}); got "
                             f"{adaptive_release!r}")
        if adaptive_release is None:
            adaptive_release = releases_at_start and self.config.early_kv
        self.adaptive_release = adaptive_release
        self.late_release_below = 0  # set by load(): half the SM count where adaptive_release is on
        # with the tuned ring depth, a second module with a shallower ring runs the batches that fill every SM
        self.wide_config = wide_config(self.config, gpu_name) if stages is None else None
        self._module = None
        self._wide = None
        self._plan = None

    # ---- set-up (allocates; call outside CUDA-graph capture)
    def load(self) -> "BatchDecodeWithPagedKVCache":
        """Compile or load the module now and allocate the split workspace; idempotent."""
        if self._module is not None:
            return self
        ok, reason = is_supported_device(self.device)
        if not ok:
            raise KernelUnavailableError(reason)
        mod = load_module(self.config)
        with torch.cuda.device(self.device):
            blocks_per_sm = int(mod.blocks_per_sm())
        if blocks_per_sm < 1:
            raise KernelUnavailableError(f"{self.config.tag}: no block fits on an SM (shared memory)")
        sms = torch.cuda.get_device_properties(self.device).multi_processor_count
        # below half the SMs: 64 active blocks (1 x 1K) gained 5-7 %, 128 (1 x 2K) lost 3-4 % (experiment 41)
        self.late_release_below = sms // 2 if self.adaptive_release else 0
        self.target_blocks = sms * blocks_per_sm
        self.short_target_blocks = sms * min(blocks_per_sm, SHORT_BLOCKS_PER_SM)
        self.batch1_short = batch1_short_plan(self.kv_dtype == _FP8, self.head_dim, self.num_kv_heads,
                                              self.config.pdl, self._gpu_name, sms)
        self._load_wide(sms, blocks_per_sm)
        rows = max(b * self.num_kv_heads * self.num_splits_for(b) for b in range(1, self.max_batch_size + 1))
        rows *= self.group
        self._part_o = torch.empty(rows * self.head_dim, dtype=torch.float32, device=self.device)
        self._part_lse = torch.empty(rows, dtype=torch.float32, device=self.device)
        self._counters = torch.zeros(self.max_batch_size * self.num_kv_heads, dtype=torch.int32, device=self.device)
        self.workspace_bytes = sum(t.numel() * t.element_size() for t in (self._part_o, self._part_lse, self._counters))
        self._module = mod
        return self

    def _load_wide(self, sms: int, blocks_per_sm: int) -> None:
        """The shallow-ring twin, where a batch this op may plan reaches it and it fits more blocks per SM."""
        self._wide, self.wide_target_blocks = None, 0
        if self.wide_config is not None and self.max_batch_size >= self._first_wide_batch():
            wide = load_module(self.wide_config)
            with torch.cuda.device(self.device):
                wide_blocks_per_sm = int(wide.blocks_per_sm())
            if wide_blocks_per_sm > blocks_per_sm:
                self._wide, self.wide_target_blocks = wide, sms * wide_blocks_per_sm
        if self._wide is None:
            self.wide_config = None

    def set_trace(self, buf: torch.Tensor | None) -> None:
        """Experiment 18 (``trace=True`` only): later launches append one record per block to ``buf`` (int64 on the
        device; word 0 counts records, which the caller zeroes); None turns tracing off."""
        if not self.config.trace:
            raise ValueError("set_trace: the wrapper was built without trace=True")
        self.load()
        if buf is not None:
            check_tensor("buf", buf, dtype=torch.int64, ndim=1, device=self.device)
        self._module.set_trace(buf if buf is not None else torch.empty(0, dtype=torch.int64, device=self.device))

    def uses_wide(self, batch_size: int) -> bool:
        """Whether ``batch_size`` runs on the shallow-ring module (experiment 28): where even one split per (request,
        kv head) fills more than half the deep module's slots. Below that its plan for short requests is the same
        and the deeper ring keeps more bytes in flight per block."""
        return self._wide is not None and batch_size >= self._first_wide_batch()

    def config_for(self, batch_size: int):
        """The configuration of the module a batch of ``batch_size`` runs on (``uses_wide``)."""
        return self.wide_config if self.uses_wide(batch_size) else self.config

    def num_splits_for(self, batch_size: int) -> int:
        target = self.wide_target_blocks if self.uses_wide(batch_size) else self.target_blocks
        return split_count(batch_size, self.num_kv_heads, target)

    def short_splits_for(self, batch_size: int) -> int:
        """The split count of requests whose splits would be short (the kernel clamps it to num_splits_for)."""
        if batch_size == 1 and self.batch1_short is not None:
            return self.batch1_short[0]
        return split_count(batch_size, self.num_kv_heads, self.short_target_blocks)

    def short_chunk_for(self, batch_size: int) -> int:
        """The chunk (tokens) under which a request's splits count as short and short_splits_for's count applies."""
        if batch_size == 1 and self.batch1_short is not None:
            return self.batch1_short[1]
        return SHORT_CHUNK_TOKENS

    def describe_module(self) -> str:
        """'<module name> (<prebuilt | JIT cache | compiled | rebuilt>, <seconds>)' once loaded, for logs; with the
        shallow-ring module too where there is one."""
        desc = describe_load(self.config)
        if self.wide_config is not None:
            desc += f"; from batch {self._first_wide_batch()}: {describe_load(self.wide_config)}"
        return desc

    def _first_wide_batch(self) -> int:
        """The smallest batch with 2 x batch x kv_heads > the deep module's slots."""
        return self.target_blocks // (2 * self.num_kv_heads) + 1

    # ---- per decode step
    def plan(self, kv_indptr: torch.Tensor, kv_indices: torch.Tensor, kv_last_page_len: torch.Tensor,
             batch_size: int | None = None) -> None:
        """Remember the page table and pick the split count. No sync, no allocation for device tensors;
        the tensors' contents may change between run() calls (CUDA-graph replay)."""
        self.load()
        for name, t in (("kv_indptr", kv_indptr), ("kv_indices", kv_indices), ("kv_last_page_len", kv_last_page_len)):
            check_tensor(name, t, dtype=torch.int32, ndim=1)
            if t.device.type == "cuda" and t.device != self.device:
                raise ValueError(f"{name}: expected a tensor on {self.device} (or the CPU), got one on {t.device}")
        if batch_size is None:
            batch_size = kv_indptr.shape[0] - 1
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size: expected an int >= 0, got {batch_size!r}")
        if batch_size > self.max_batch_size:
            raise ValueError(f"batch_size: {batch_size} exceeds max_batch_size={self.max_batch_size} given at construction")
        if kv_indptr.shape[0] < batch_size + 1:
            raise ValueError(f"kv_indptr: expected at least batch_size + 1 = {batch_size + 1} entries, got {kv_indptr.shape[0]}")
        if kv_last_page_len.shape[0] < batch_size:
            raise ValueError(f"kv_last_page_len: expected at least batch_size = {batch_size} entries, got {kv_last_page_len.shape[0]}")
        on_cpu = kv_indptr.device.type == "cpu"
        if on_cpu or validation_mode():
            check_index_values(kv_indptr[: batch_size + 1], kv_indices, kv_last_page_len[:batch_size], self.page_size, None)
        if on_cpu or kv_indices.device.type == "cpu" or kv_last_page_len.device.type == "cpu":
            kv_indptr, kv_indices, kv_last_page_len = (
                t.to(self.device, non_blocking=True) for t in (kv_indptr, kv_indices, kv_last_page_len)
            )
        b = max(batch_size, 1)
        module = self._wide if self.uses_wide(b) else self._module
        self._plan = (kv_indptr, kv_indices, kv_last_page_len, batch_size, self.num_splits_for(b),
                      self.short_splits_for(b), self.short_chunk_for(b), module)

    def _check_pools(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """K and V pools in this op's layout, dtype and device, with one shape and strides."""
        hkv, d = self.num_kv_heads, self.head_dim
        for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
            check_tensor(name, t, dtype=self.kv_dtype, ndim=(3, 4) if self.page_size == 1 else 4, device=self.device)
            if t.dim() == 4 and tuple(t.shape[1:]) != (self.page_size, hkv, d):
                raise ValueError(f"{name}: expected shape [num_pages, {self.page_size}, {hkv}, {d}], got {tuple(t.shape)}")
            if t.dim() == 3 and tuple(t.shape[1:]) != (hkv, d):
                raise ValueError(f"{name}: expected shape [num_slots, {hkv}, {d}], got {tuple(t.shape)}")
        if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
            raise ValueError(
                f"v_cache: expected the same shape and strides as k_cache {tuple(k_cache.shape)}/{k_cache.stride()}, "
                f"got {tuple(v_cache.shape)}/{v_cache.stride()}"
            )

    def run(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *, sm_scale: float | None = None,
            logits_soft_cap: float = 0.0, k_scale: float = 1.0, v_scale: float = 1.0,
            out: torch.Tensor | None = None, lse: torch.Tensor | None = None, return_lse: bool = False):
        """Attention of each q row over its request's KV; returns ``out`` (and ``lse``, natural log, if asked)."""
        if self._plan is None:
            raise ValueError("run: plan() must be called before run()")
        kv_indptr, kv_indices, kv_last_page_len, batch, num_splits, short_splits, short_chunk, module = self._plan
        hq, d = self.num_qo_heads, self.head_dim
        check_tensor("q", q, dtype=self.q_dtype, ndim=3, device=self.device)
        check_shape("q", q, (batch, hq, d))
        self._check_pools(k_cache, v_cache)
        if out is None:
            out = torch.empty_like(q)
        else:
            check_tensor("out", out, dtype=self.q_dtype, ndim=3, device=self.device)
            check_shape("out", out, (batch, hq, d))
        if return_lse and lse is None:
            lse = torch.empty(batch, hq, dtype=torch.float32, device=self.device)
        if lse is not None:
            check_tensor("lse", lse, dtype=torch.float32, ndim=2, device=self.device)
            check_shape("lse", lse, (batch, hq))
            if not lse.is_contiguous():
                raise ValueError("lse: expected a contiguous tensor")
        for name, val in (("k_scale", k_scale), ("v_scale", v_scale)):
            if not isinstance(val, (int, float)) or not math.isfinite(val) or val <= 0:
                raise ValueError(f"{name}: expected a positive finite float, got {val!r}")
        if not isinstance(logits_soft_cap, (int, float)) or logits_soft_cap < 0 or not math.isfinite(logits_soft_cap):
            raise ValueError(f"logits_soft_cap: expected a float >= 0 (0 = off), got {logits_soft_cap!r}")
        if sm_scale is None:
            sm_scale = 1.0 / math.sqrt(d)
        if batch == 0:
            return (out, lse) if return_lse else out

        if logits_soft_cap > 0:
            pre, post, has_cap = sm_scale * k_scale / logits_soft_cap, logits_soft_cap * _LOG2E, 1
        else:
            pre, post, has_cap = sm_scale * k_scale * _LOG2E, 0.0, 0
        if self.kv_dtype == _FP8:  # DLPack has no portable float8: hand the kernel the bytes
            k_cache, v_cache = k_cache.view(torch.uint8), v_cache.view(torch.uint8)
        module.run(
            q, k_cache, v_cache, kv_indptr, kv_indices, kv_last_page_len, out, lse,
            self._part_o, self._part_lse, self._counters,
            num_splits, short_splits, short_chunk, MIN_CHUNK_TOKENS, self.page_size.bit_length() - 1, float(pre),
            float(post), has_cap, float(v_scale),
            self.late_release_below,
        )
        return (out, lse) if return_lse else out

    # ---- cross-layer L2 prefetch (experiment 39)
    def prefetch_l2(self, k_cache: torch.Tensor, v_cache: torch.Tensor, *, max_bytes: int | None = None,
                    evict_last: bool = True, blocks: int | None = None) -> None:
        """Bring the planned requests' pages of another layer's ``k_cache`` / ``v_cache`` (this op's shapes) into L2
        without waiting for them, at most ``max_bytes`` of K and V, ``blocks`` blocks per request (None: a few);
        capturable. With ``evict_last`` the lines are persisting ones (kept through a weight stream only where
        ``set_persisting_l2`` set an L2 set-aside)."""
        if self._plan is None:
            raise ValueError("prefetch_l2: plan() must be called before prefetch_l2()")
        self._check_pools(k_cache, v_cache)
        kv_indptr, kv_indices, _, batch = self._plan[:4]
        l2_prefetch.launch(self._module, k_cache, v_cache, kv_indptr, kv_indices, batch, self.page_size, max_bytes,
                           evict_last, blocks)

    def set_persisting_l2(self, nbytes: int | None) -> int:
        """Set this device's L2 set-aside for persisting lines (None: read it); returns the set-aside in effect."""
        self.load()
        return l2_prefetch.set_persisting_l2(self._module, self.device, nbytes)
