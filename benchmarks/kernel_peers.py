"""The decode-attention kernels under comparison, each behind the same small interface, plus the problem
(inputs) they share. Needs a CUDA device.

    prob = Problem(shape, layers, device)          # q, L layers of paged K/V, page tables, reference
    k = ADAPTERS[name](prob, cache)                # plans for this shape; raises to mean "cannot run"
    out = k(layer)                                 # one decode-attention call on that layer's K/V

All kernels read the same tensors: K/V of layer l are prob.k(l), prob.v(l), each
[num_pages, page_size, num_kv_heads, head_dim] (FlashInfer "NHD"), pages of every request scattered at
random over the pool. Each call is made the way SGLang's backend makes it, so it should be CUDA-graph
capturable as SGLang captures it; a capture failure becomes a skipped row. Signatures used (read from
FlashInfer 0.6.15.post1, SGLang 0.5.17 and sgl-kernel 0.4.5 sources; not yet run on the GPU host):

flashinfer_cc / flashinfer_tc  flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_cuda_graph=True,
    use_tensor_cores=False/True, paged_kv_*_buffer=...); .plan(indptr, indices, last_page_len, Hq, Hkv, D,
    page, q_data_type, kv_data_type, o_data_type, sm_scale); .run(q, (k, v), k_scale, v_scale, out)
flashinfer_cudnn  flashinfer.decode.cudnn_batch_decode_with_kv_cache(q, k, v, scale, ws, max_sequence_kv=,
    actual_seq_lens_kv=[B,1,1,1] int32, block_tables=[B, pages] int32, is_cuda_graph_compatible=True, out=);
    K/V as (pages, Hkv, page, D) views (a transpose of our NHD pool); needs the cudnn-frontend package
    (its fallback downloads cubins: offline host => skipped)
xqa  flashinfer.decode.xqa_batch_decode_with_kv_cache(query, (k, v), workspace (first 8 MiB = zeroed
    semaphores), block_tables [B, pages] int32, seq_lens [B] int32, max_seq_len, bmm1_scale=sm_scale*k_scale,
    bmm2_scale=v_scale, out=, kv_layout="NHD"): page_size must be 16/32/64/128, sm90/100/120 only
sglang_triton  sglang.kernels.ops.attention.decode_attention.decode_attention_fwd(q, k_buffer, v_buffer, o,
    kv_indptr, kv_indices, attn_logits [B,Hq,S,Dv] f32, attn_lse [B,Hq,S] f32, num_kv_splits [B] int32,
    max_kv_splits=S, sm_scale, k_scale, v_scale, ..., use_pdl, page_size): token-level layout: the pool
    viewed as [pages*page_size, Hkv, D] with every page expanded into its token slots (page_size=1 math);
    S = 8 (server default --triton-attention-num-kv-splits) and num_kv_splits from SGLang's own
    get_num_kv_splits_triton heuristic, computed once per shape outside the timed region (like the backend)
fa3  sgl_kernel.flash_attn.flash_attn_with_kvcache(q [B,Hq,D], k_cache, v_cache, page_table [B, pages],
    cache_seqlens, cu_seqlens_q=arange(B+1), max_seqlen_q=1, softmax_scale, causal=True, num_splits=0,
    scheduler_metadata=get_scheduler_metadata(...)) as SGLang's fa3 backend calls it for decode; FP8 KV
    casts q to FP8 inside the timed call (as the backend does) with k/v_descale [B, Hkv]
kvprefetch / kvprefetch_d0  kvprefetch.jit_kernels.BatchDecodeWithPagedKVCache(..., prefetch_distance=None/0)
    .plan(indptr, indices, last_page_len); .run(q, k, v, sm_scale=, logits_soft_cap=0.0, k_scale=, v_scale=, out=)
"""
from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from typing import Callable, Dict, Optional, Sequence

import torch

from kernel_grid import Shape, variant_name

TORCH_KV_DTYPES = {"bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}
Q_TORCH = torch.bfloat16


class Unsupported(Exception):
    """The kernel cannot run this shape (recorded as the row's `skipped` reason)."""


class Problem:
    """Inputs of one grid shape: q, `layers` separate layers of K/V in one pool each, page tables, and a
    float32 reference output on layer 0 for a few requests."""

    def __init__(self, shape: Shape, layers: int, device: torch.device, seed: int = 0):
        self.shape, self.layers, self.device = shape, layers, device
        s = shape
        self.kv_dtype = TORCH_KV_DTYPES[s.kv_dtype]
        self.is_fp8 = s.kv_dtype.startswith("fp8")
        # SGLang's default FP8 KV scales are 1.0 (no calibrated scales): no extra scaling kernels anywhere.
        self.k_scale = 1.0
        self.v_scale = 1.0
        self.sm_scale = 1.0 / math.sqrt(s.head_dim)
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(s.num_pages, generator=gen).to(torch.int32)   # pages scattered over the pool
        ppr = s.pages_per_request
        self.block_table = perm.view(s.batch, ppr).to(device).contiguous()
        self.kv_indices = perm.to(device)
        self.kv_indptr = (torch.arange(s.batch + 1, dtype=torch.int32) * ppr).to(device)
        last = s.ctx - (ppr - 1) * s.page_size
        self.kv_last_page_len = torch.full((s.batch,), last, dtype=torch.int32, device=device)
        self.seq_lens = torch.full((s.batch,), s.ctx, dtype=torch.int32, device=device)
        self.sm_count = torch.cuda.get_device_properties(device).multi_processor_count

        torch.manual_seed(seed)
        self.q = torch.randn(s.batch, s.num_qo_heads, s.head_dim, dtype=Q_TORCH, device=device)
        # [L, 2, pages, page, Hkv, D]: layer l's K = kv[l, 0], V = kv[l, 1], layer l's pool = kv[l] (contiguous).
        self.kv = torch.empty((layers, 2, s.num_pages, s.page_size, s.num_kv_heads, s.head_dim),
                              dtype=self.kv_dtype, device=device)
        if self.is_fp8:
            for j in range(2):
                self.kv[0, j].copy_(torch.randn(self.kv[0, j].shape, dtype=torch.bfloat16, device=device))
        else:
            self.kv[0].normal_()
        for l in range(1, layers):
            self.kv[l].copy_(self.kv[0])      # same values, separate memory: timing does not depend on values
        self.check_requests = sorted({0, s.batch - 1, s.batch // 2, s.batch // 3})[:4]
        self.reference = self._reference()
        torch.cuda.synchronize()

    def k(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 0]

    def v(self, layer: int) -> torch.Tensor:
        return self.kv[layer, 1]

    def _reference(self) -> Dict[int, torch.Tensor]:
        s = self.shape
        g = s.num_qo_heads // s.num_kv_heads
        ref = {}
        for b in self.check_requests:
            pages = self.block_table[b].long()
            k = self._gather(self.k(0), pages)[: s.ctx].float() * self.k_scale
            v = self._gather(self.v(0), pages)[: s.ctx].float() * self.v_scale
            qb = self.q[b].float().view(s.num_kv_heads, g, s.head_dim)
            logits = torch.einsum("hgd,nhd->hgn", qb, k) * self.sm_scale
            p = torch.softmax(logits, dim=-1)
            ref[b] = torch.einsum("hgn,nhd->hgd", p, v).reshape(s.num_qo_heads, s.head_dim)
            del k, v, logits, p
        return ref

    def _gather(self, pool: torch.Tensor, pages: torch.Tensor) -> torch.Tensor:
        """pool[pages] as [tokens, Hkv, D] (gathered as bytes for FP8: indexing float8 is not universal)."""
        s = self.shape
        if self.is_fp8:
            return pool.view(torch.uint8)[pages].view(self.kv_dtype).reshape(-1, s.num_kv_heads, s.head_dim)
        return pool[pages].reshape(-1, s.num_kv_heads, s.head_dim)

    def max_rel_err(self, out: torch.Tensor) -> float:
        """max over the checked requests of ||out_b - ref_b|| / ||ref_b|| (all heads); inf on NaN/Inf."""
        out = out.reshape(self.shape.batch, self.shape.num_qo_heads, self.shape.head_dim)
        worst = 0.0
        for b, ref in self.reference.items():
            o = out[b].float()
            if not torch.isfinite(o).all():
                return float("inf")
            worst = max(worst, ((o - ref).norm() / ref.norm().clamp_min(1e-30)).item())
        return worst

    def free(self) -> None:
        del self.kv, self.q, self.reference


class Cache:
    """Objects kept across shapes: kvprefetch wrappers (one JIT build per config), workspaces."""

    def __init__(self, device: torch.device):
        self.device = device
        self.wrappers: Dict[tuple, object] = {}
        self.buffers: Dict[str, torch.Tensor] = {}
        self.import_errors: Dict[str, str] = {}

    def zeros(self, name: str, nbytes: int) -> torch.Tensor:
        if name not in self.buffers:
            self.buffers[name] = torch.zeros(nbytes, dtype=torch.uint8, device=self.device)
        return self.buffers[name]


# ----------------------------------------------------------------------------------------------- kernels

class Kernel:
    name = "?"
    prefetch_distance: Optional[int] = None

    def __call__(self, layer: int) -> torch.Tensor:
        raise NotImplementedError


class KvPrefetch(Kernel):
    name = "kvprefetch"
    distance: Optional[int] = None
    stages: Optional[int] = None  # None: the tuned table; set by variant() for experiments
    pdl: Optional[bool] = None  # None: the product default (on for 16-bit KV at head_dim 64 and 128)
    fp8_q = False
    f16_math: Optional[bool] = None  # None: the product default (on for fp8 KV with bf16 q at head_dim 128)
    lazy_rescale: Optional[bool] = None  # None: the product default (on for 16-bit KV at head_dim 64)
    two_blocks = False
    late_trigger: Optional[bool] = None  # None: the product default (after the loop for 16-bit KV at head_dim 64)
    cluster_merge = False
    page_prefetch = False
    tma = False
    early_kv: Optional[bool] = None  # None: the product default (with PDL on an H200's three families)
    adaptive_release: Optional[bool] = None  # None: the product default (small batch-1 grids release late)
    pid_ahead: Optional[bool] = None  # None: the product default (pid_ahead_default)
    old_loads: Optional[bool] = None  # None: the product default (old_loads_default); True: the copy before exp. 47
    short_blocks: Optional[int] = None  # None: SHORT_BLOCKS_PER_SM; n: short requests' splits planned for n per SM
    swap_ab: Optional[bool] = None  # None: the product default (swap_ab_default); False: the heads as the mma's M side
    grid: Optional[int] = None  # with splits: the grid's split width (num_splits) while short requests use splits
    splits: Optional[int] = None  # None: the planner's split count; an int fixes it (the device still keeps
    #                               each split >= MIN_CHUNK_TOKENS, so short requests may use fewer)

    def __init__(self, prob: Problem, cache: Cache):
        from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

        s = prob.shape
        key = ("kvprefetch", s.num_qo_heads, s.num_kv_heads, s.head_dim, s.page_size, s.kv_dtype, self.distance,
               self.stages, self.pdl, self.fp8_q, self.f16_math, self.lazy_rescale, self.splits, self.grid,
               self.two_blocks, self.late_trigger, self.cluster_merge, self.page_prefetch,
               self.tma, self.early_kv, self.adaptive_release, self.pid_ahead, self.old_loads, self.short_blocks,
               self.swap_ab)
        w = cache.wrappers.get(key)
        if w is None:
            cls = BatchDecodeWithPagedKVCache
            if self.splits:
                cls = _fixed_splits(cls, self.splits, self.grid)
            elif self.short_blocks:
                cls = _short_blocks(cls, self.short_blocks)
            w = cls(s.num_qo_heads, s.num_kv_heads, s.head_dim, s.page_size, Q_TORCH, prob.kv_dtype, prob.device,
                    max_batch_size=256, prefetch_distance=self.distance, stages=self.stages, pdl=self.pdl,
                    fp8_q=self.fp8_q, f16_math=self.f16_math, lazy_rescale=self.lazy_rescale,
                    two_blocks=self.two_blocks, late_trigger=self.late_trigger, cluster_merge=self.cluster_merge,
                    page_prefetch=self.page_prefetch, tma=self.tma, early_kv=self.early_kv,
                    adaptive_release=self.adaptive_release, pid_ahead=self.pid_ahead, old_loads=self.old_loads,
                    swap_ab=self.swap_ab)
            w.load()
            cache.wrappers[key] = w
        self.w, self.prob = w, prob
        self.prefetch_distance = int(w.prefetch_distance)
        w.plan(prob.kv_indptr, prob.kv_indices, prob.kv_last_page_len)
        self.out = torch.empty_like(prob.q)

    def __call__(self, layer: int) -> torch.Tensor:
        p = self.prob
        return self.w.run(p.q, p.k(layer), p.v(layer), sm_scale=p.sm_scale, logits_soft_cap=0.0,
                          k_scale=p.k_scale, v_scale=p.v_scale, out=self.out)


def _fixed_splits(wrapper_cls: type, splits: int, grid: Optional[int] = None) -> type:
    """The wrapper with its planner's split counts (long and short requests) replaced by ``splits``; with ``grid``
    the grid is that many splits wide (the long-request count) while short requests still use ``splits``, so the
    surplus blocks exit at once (experiment 15's question). Short means splits over the grid under
    SHORT_CHUNK_TOKENS, at batch 1 too (batch1_plan's threshold does not apply). The wrapper sizes its split workspace
    through num_splits_for too, so the override stays in bounds."""
    from kvprefetch.jit_kernels.decode import SHORT_CHUNK_TOKENS

    fixed = {"num_splits_for": lambda self, batch_size: grid or splits}
    if hasattr(wrapper_cls, "short_splits_for"):
        fixed["short_splits_for"] = lambda self, batch_size: splits
        fixed["short_chunk_for"] = lambda self, batch_size: SHORT_CHUNK_TOKENS
    return type(f"{wrapper_cls.__name__}Splits{splits}" + (f"Grid{grid}" if grid else ""), (wrapper_cls,), fixed)


def _short_blocks(wrapper_cls: type, blocks_per_sm: int) -> type:
    """The wrapper with the split count of short requests planned for ``blocks_per_sm`` blocks per SM instead of
    SHORT_BLOCKS_PER_SM (experiment 48), at batch 1 too (no batch1_plan); the kernel still clamps it to the grid's
    split count."""
    def load(self):
        if self._module is None:
            wrapper_cls.load(self)
            sms = torch.cuda.get_device_properties(self.device).multi_processor_count
            self.short_target_blocks = sms * blocks_per_sm
            self.batch1_short = None
        return self
    return type(f"{wrapper_cls.__name__}ShortBlocks{blocks_per_sm}", (wrapper_cls,), {"load": load})


class KvPrefetchD0(KvPrefetch):
    name = "kvprefetch_d0"
    distance = 0


def variant(stages: Optional[int] = None, pdl: Optional[bool] = None, fp8_q: bool = False,
            splits: Optional[int] = None, f16_math: bool = False, lazy_rescale: bool = False,
            grid: Optional[int] = None, two_blocks: bool = False, late_trigger: Optional[bool] = None,
            cluster_merge: bool = False, page_prefetch: bool = False, tma: bool = False,
            early_kv: bool = False, adaptive_release: Optional[bool] = None,
            pid_ahead: Optional[bool] = None, old_loads: Optional[bool] = None,
            short_blocks: Optional[int] = None, swap_ab: Optional[bool] = None) -> type:
    """kvprefetch with an experiment's settings: an n-deep cp.async ring (``kvprefetch_s<n>``), programmatic
    dependent launch on / off (``kvprefetch_pdl`` / ``kvprefetch_nopdl``), q in e4m3 with fp8 KV (``kvprefetch_q8``),
    fp16 mma with fp8 KV (``kvprefetch_h16``), lazy output rescaling (``kvprefetch_lr``), at most two blocks per SM
    (``kvprefetch_b2``), PDL released after the main loop or at the start (``kvprefetch_pdl_lt`` / ``_et``), the
    cluster merge (``kvprefetch_cm``), whole-token-row L2 prefetch (``kvprefetch_pp``), TMA tile loads
    (``kvprefetch_tma``), KV loads before the PDL wait (``kvprefetch_pdl_ek``), no late release for small batch-1 grids
    (``kvprefetch_nar``), page ids four loop iterations ahead or one (``kvprefetch_pa`` / ``kvprefetch_npa``), the tile
    copy as before experiment 47 (``kvprefetch_ol``), tokens or heads as the mma's M side (``kvprefetch_sw`` /
    ``kvprefetch_nsw``), short requests' splits planned for n blocks per SM (``kvprefetch_sb<n>``), a fixed split
    count (``kvprefetch_x<n>``). Where ``_h16`` / ``_lr`` / ``_lt`` are absent the variant keeps the product's
    default."""
    if splits and short_blocks:
        raise ValueError(f"short_blocks: a fixed split count ({splits}) already sets the short requests' splits; "
                         f"expected one of the two, got short_blocks={short_blocks}")
    name = variant_name(stages, pdl, fp8_q, splits, f16_math, lazy_rescale, grid, two_blocks, late_trigger,
                        cluster_merge, page_prefetch, tma, early_kv, adaptive_release, pid_ahead, old_loads,
                        short_blocks, swap_ab)
    return type(name, (KvPrefetch,), {"name": name, "stages": stages, "pdl": pdl, "fp8_q": fp8_q, "splits": splits,
                                      "grid": grid if splits else None, "two_blocks": two_blocks,
                                      "late_trigger": late_trigger, "cluster_merge": cluster_merge,
                                      "page_prefetch": page_prefetch, "tma": tma,
                                      "early_kv": early_kv or None,  # None: the product default
                                      "adaptive_release": adaptive_release, "pid_ahead": pid_ahead,
                                      "old_loads": old_loads, "short_blocks": short_blocks, "swap_ab": swap_ab,
                                      "f16_math": f16_math or None,  # None: the product default
                                      "lazy_rescale": lazy_rescale or None})


class FlashInferDecode(Kernel):
    name = "flashinfer_cc"
    tensor_cores = False

    def __init__(self, prob: Problem, cache: Cache):
        import flashinfer

        s = prob.shape
        ws = cache.zeros("flashinfer_ws", 256 << 20)
        self.w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            ws, "NHD", use_cuda_graph=True, use_tensor_cores=self.tensor_cores,
            paged_kv_indptr_buffer=prob.kv_indptr.clone(), paged_kv_indices_buffer=prob.kv_indices.clone(),
            paged_kv_last_page_len_buffer=prob.kv_last_page_len.clone())
        self.w.plan(prob.kv_indptr, prob.kv_indices, prob.kv_last_page_len, s.num_qo_heads, s.num_kv_heads,
                    s.head_dim, s.page_size, q_data_type=Q_TORCH, kv_data_type=prob.kv_dtype,
                    o_data_type=Q_TORCH, sm_scale=prob.sm_scale)
        self.prob = prob
        self.out = torch.empty_like(prob.q)
        self.scales = dict(k_scale=prob.k_scale, v_scale=prob.v_scale) if prob.is_fp8 else {}

    def __call__(self, layer: int) -> torch.Tensor:
        p = self.prob
        return self.w.run(p.q, (p.k(layer), p.v(layer)), out=self.out, **self.scales)


class FlashInferDecodeTC(FlashInferDecode):
    name = "flashinfer_tc"
    tensor_cores = True


class FlashInferCudnn(Kernel):
    name = "flashinfer_cudnn"

    def __init__(self, prob: Problem, cache: Cache):
        import flashinfer.cudnn.decode as cd

        if not getattr(cd, "CUDNN_AVAILABLE", False):
            raise Unsupported("cudnn-frontend Python package ('cudnn') not installed; FlashInfer's non-cuDNN "
                              "fallback downloads cubins at run time and this host is offline")
        from flashinfer.decode import cudnn_batch_decode_with_kv_cache

        s = prob.shape
        self.fn = cudnn_batch_decode_with_kv_cache
        self.ws = cache.zeros("cudnn_ws", 128 << 20)
        self.actual = prob.seq_lens.view(s.batch, 1, 1, 1).contiguous()
        self.prob = prob
        self.out = torch.empty_like(prob.q)

    def __call__(self, layer: int) -> torch.Tensor:
        p = self.prob
        return self.fn(p.q, p.k(layer).transpose(1, 2), p.v(layer).transpose(1, 2), p.sm_scale, self.ws,
                       max_sequence_kv=p.shape.ctx, actual_seq_lens_kv=self.actual, block_tables=p.block_table,
                       is_cuda_graph_compatible=True, out=self.out)


class Xqa(Kernel):
    name = "xqa"
    PAGE_SIZES = (16, 32, 64, 128)

    def __init__(self, prob: Problem, cache: Cache):
        s = prob.shape
        if s.page_size not in self.PAGE_SIZES:
            raise Unsupported(f"XQA supports page_size 16/32/64/128 only (got {s.page_size})")
        major, _ = torch.cuda.get_device_capability(prob.device)
        if major not in (9, 10, 12):
            raise Unsupported("XQA runs on sm90/sm100/sm120 only")
        from flashinfer.decode import xqa_batch_decode_with_kv_cache

        self.fn = xqa_batch_decode_with_kv_cache
        self.ws = cache.zeros("xqa_ws", 256 << 20)     # first 8 MiB: semaphores, must start zeroed
        self.prob = prob
        self.out = torch.empty_like(prob.q)

    def __call__(self, layer: int) -> torch.Tensor:
        p = self.prob
        return self.fn(p.q, (p.k(layer), p.v(layer)), self.ws, p.block_table, p.seq_lens, p.shape.ctx,
                       bmm1_scale=p.sm_scale * p.k_scale, bmm2_scale=p.v_scale, out=self.out, kv_layout="NHD")


def _import_triton_decode():
    try:
        from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd
    except ImportError:   # SGLang <= 0.5.9 layout
        from sglang.srt.layers.attention.triton_ops.decode_attention import decode_attention_fwd
    try:
        from sglang.kernels.ops.attention.metadata import get_num_kv_splits_triton
    except ImportError:
        try:
            from sglang.srt.layers.attention.triton_backend import get_num_kv_splits_triton
        except ImportError:
            get_num_kv_splits_triton = None
    return decode_attention_fwd, get_num_kv_splits_triton


class SglangTriton(Kernel):
    name = "sglang_triton"
    MAX_KV_SPLITS = 8          # ServerArgs.triton_attention_num_kv_splits default

    def __init__(self, prob: Problem, cache: Cache):
        fwd, splits_fn = _import_triton_decode()
        s = prob.shape
        S = self.MAX_KV_SPLITS
        self.fn = fwd
        # Token-level (page_size 1) layout: the pool as [pages * page_size, Hkv, D]; token slot of token t of
        # a request = page_id(t // page_size) * page_size + t % page_size.
        slots = (prob.block_table.long()[:, :, None] * s.page_size
                 + torch.arange(s.page_size, device=prob.device)[None, None, :]).reshape(s.batch, -1)[:, : s.ctx]
        self.kv_indices = slots.reshape(-1).to(torch.int32).contiguous()
        self.kv_indptr = (torch.arange(s.batch + 1, device=prob.device, dtype=torch.int32) * s.ctx)
        self.attn_logits = torch.empty((s.batch, s.num_qo_heads, S, s.head_dim), dtype=torch.float32,
                                       device=prob.device)
        self.attn_lse = torch.empty((s.batch, s.num_qo_heads, S), dtype=torch.float32, device=prob.device)
        self.num_kv_splits = torch.empty((s.batch,), dtype=torch.int32, device=prob.device)
        self.note = None
        if splits_fn is not None:
            max_seq = 256 if s.batch < 256 else 1 << (s.batch - 1).bit_length()
            splits_fn[(1,)](self.num_kv_splits, prob.seq_lens, s.batch, 1, s.num_qo_heads, s.num_kv_heads, S,
                            prob.sm_count, MAX_NUM_SEQ=max_seq)
        else:
            self.num_kv_splits.fill_(S)
            self.note = "num_kv_splits = max (SGLang heuristic not importable)"
        params = inspect.signature(fwd).parameters
        self.kw = {}
        if "use_pdl" in params:
            self.kw["use_pdl"] = torch.cuda.get_device_capability(prob.device)[0] >= 9
        if "page_size" in params:
            self.kw["page_size"] = 1
        self.scale_args = (prob.k_scale, prob.v_scale) if "k_scale" in params else ()
        self.prob = prob
        self.out = torch.empty_like(prob.q)
        self.tok = prob.shape.num_pages * prob.shape.page_size

    def __call__(self, layer: int) -> torch.Tensor:
        p, s = self.prob, self.prob.shape
        k = p.k(layer).view(self.tok, s.num_kv_heads, s.head_dim)
        v = p.v(layer).view(self.tok, s.num_kv_heads, s.head_dim)
        self.fn(p.q, k, v, self.out, self.kv_indptr, self.kv_indices, self.attn_logits, self.attn_lse,
                self.num_kv_splits, self.MAX_KV_SPLITS, p.sm_scale, *self.scale_args, logit_cap=0.0, **self.kw)
        return self.out


class Fa3(Kernel):
    name = "fa3"

    def __init__(self, prob: Problem, cache: Cache):
        try:
            import sgl_kernel.flash_attn as fa
        except Exception as e:  # flash_ops.abi3.so is staged separately (1.1 GB)
            raise Unsupported(f"FA3 not importable (sgl_kernel.flash_attn: {e.__class__.__name__}: {e}); "
                              "stage it with stage_fa3.sh") from e
        s = prob.shape
        self.fn = fa.flash_attn_with_kvcache
        self.cu_seqlens_q = torch.arange(s.batch + 1, dtype=torch.int32, device=prob.device)
        self.sched = None
        self.note = None
        if hasattr(fa, "get_scheduler_metadata"):
            try:
                self.sched = fa.get_scheduler_metadata(
                    batch_size=s.batch, max_seqlen_q=1, max_seqlen_k=s.ctx, num_heads=s.num_qo_heads,
                    num_heads_k=s.num_kv_heads, headdim=s.head_dim, cache_seqlens=prob.seq_lens,
                    qkv_dtype=prob.kv_dtype, cu_seqlens_q=self.cu_seqlens_q, page_size=s.page_size, causal=True,
                    has_softcap=False, num_splits=0)
            except Exception as e:
                self.note = f"no scheduler_metadata ({e.__class__.__name__})"
        self.kw = {}
        self.q8 = None
        if prob.is_fp8:
            self.q8 = torch.empty(prob.q.shape, dtype=prob.kv_dtype, device=prob.device)
            self.kw["k_descale"] = torch.full((s.batch, s.num_kv_heads), prob.k_scale, dtype=torch.float32,
                                              device=prob.device)
            self.kw["v_descale"] = torch.full((s.batch, s.num_kv_heads), prob.v_scale, dtype=torch.float32,
                                              device=prob.device)
        else:
            self.kw["out"] = torch.empty_like(prob.q)
        if self.sched is not None:
            self.kw["scheduler_metadata"] = self.sched
        self.prob = prob

    def __call__(self, layer: int) -> torch.Tensor:
        p = self.prob
        q = p.q
        if self.q8 is not None:
            self.q8.copy_(p.q)      # SGLang's fa3 backend casts q to the FP8 KV dtype on every call
            q = self.q8
        out = self.fn(q=q, k_cache=p.k(layer), v_cache=p.v(layer), page_table=p.block_table,
                      cache_seqlens=p.seq_lens, cu_seqlens_q=self.cu_seqlens_q, max_seqlen_q=1,
                      softmax_scale=p.sm_scale, causal=True, window_size=(-1, -1), softcap=0.0, num_splits=0,
                      **self.kw)
        return out[0] if isinstance(out, (tuple, list)) else out


ADAPTERS: Dict[str, Callable[[Problem, Cache], Kernel]] = {
    "kvprefetch": KvPrefetch,
    "kvprefetch_d0": KvPrefetchD0,
    "flashinfer_cc": FlashInferDecode,
    "flashinfer_tc": FlashInferDecodeTC,
    "flashinfer_cudnn": FlashInferCudnn,
    "xqa": Xqa,
    "sglang_triton": SglangTriton,
    "fa3": Fa3,
}


def prebuild_xqa(specs: Sequence[tuple], capability: tuple, log_path: str) -> Optional[subprocess.Popen]:
    """Compile FlashInfer's XQA modules in a background process (CPU only: CUDA_VISIBLE_DEVICES="" and
    the arch given explicitly) while the GPU measures other kernels; the main process's first XQA call
    then waits on FlashInfer's file lock and finds the module built. specs: (kv 'bf16'|'fp8_e4m3',
    page_size, head_dim, group). Best effort: any failure just means the main process compiles."""
    specs = [sp for sp in specs if sp[1] in Xqa.PAGE_SIZES]
    if not specs:
        return None
    code = (
        "import sys, torch\n"
        "from flashinfer.jit.xqa import gen_xqa_module\n"
        "kv = {'bf16': torch.bfloat16, 'fp8_e4m3': torch.float8_e4m3fn}\n"
        f"for dt, page, d, g in {list(specs)!r}:\n"
        "    try:\n"
        "        gen_xqa_module(torch.bfloat16, kv[dt], page, d, g, False, torch.bfloat16, 1).build(False)\n"
        "        print('prebuilt xqa', dt, page, d, g, flush=True)\n"
        "    except Exception as e:\n"
        "        print('xqa prebuild failed', dt, page, d, g, repr(e)[:300], flush=True)\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", FLASHINFER_CUDA_ARCH_LIST=f"{capability[0]}.{capability[1]}")
    try:
        with open(log_path, "w") as log:
            return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    except OSError:
        return None


def stop_prebuild(proc: subprocess.Popen) -> None:
    """End the prebuild process and its ninja/nvcc children (its own process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
