"""The decode side of the backend without SGLang: kernel wrappers, paged metadata, plan, run.

``DecodeKernels`` owns one ``kvprefetch.jit_kernels.BatchDecodeWithPagedKVCache`` per
distinct attention shape (normally one for all layers) and two sets of metadata buffers:

* eager: reused across steps, grown on demand; planned each eager decode step;
* CUDA graph: allocated once in ``init_graph_buffers`` for the largest captured batch and
  never reallocated. ``plan_graph`` rewrites their *contents* from req_to_token (one
  Triton launch, outside the graph) and plans the wrappers with these same tensors, so a
  captured kernel launch reads the refreshed page table at replay.

The SGLang adapter (``backend.py``) calls these from its hooks; tests drive it directly
with a fake wrapper class.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch

from .page_table import (
    build_page_table,
    max_pages_per_request,
    num_pages_upper_bound,
)

logger = logging.getLogger(__name__)

Shape = Tuple[int, int, int]  # (num_qo_heads, num_kv_heads, head_dim) per rank


def _default_wrapper_cls():
    from kvprefetch.jit_kernels import BatchDecodeWithPagedKVCache

    return BatchDecodeWithPagedKVCache


def _allocated_bytes(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.memory_allocated(device)
    return 0


@dataclass
class LoadReport:
    seconds: float  # kernel wrappers: JIT build or disk-cache load
    metadata_seconds: float  # first page-table build (Triton compile or cache load)
    workspace_bytes: int  # kernel split workspaces + eager metadata buffers
    prefetch_distance: Any
    modules: Tuple[str, ...] = ()  # how each kernel module was had (wrapper.describe_module())


@dataclass
class _Plan:
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    kv_last_page_len: torch.Tensor
    batch_size: int


class DecodeKernels:
    def __init__(
        self,
        *,
        shapes: Iterable[Shape],
        page_size: int,
        q_dtype: torch.dtype,
        kv_dtype: torch.dtype,
        device: torch.device,
        req_to_token: torch.Tensor,
        max_batch_size: int,
        prefetch_distance: Optional[int] = None,
        pdl: Optional[bool] = None,
        wrapper_cls: Optional[Callable[..., Any]] = None,
        page_table_builder: Callable[..., None] = build_page_table,
    ):
        self.page_size = int(page_size)
        self.q_dtype = q_dtype
        self.kv_dtype = kv_dtype
        self.device = torch.device(device)
        self.req_to_token = req_to_token
        self.max_batch_size = max(int(max_batch_size), 1)
        self.prefetch_distance = prefetch_distance
        self.pdl = pdl  # None: the kernel layer's per-card default
        self._wrapper_cls = wrapper_cls
        self._build = page_table_builder
        self.max_pages_per_req = max_pages_per_request(req_to_token.shape[1], self.page_size)
        self.wrappers: Dict[Shape, Any] = {}
        self._shapes = list(dict.fromkeys(tuple(int(x) for x in s) for s in shapes))
        self._plan: Optional[_Plan] = None
        self._retired: list = []

        i32 = dict(dtype=torch.int32, device=self.device)
        # eager metadata (reused, grown on demand; never captured by a graph)
        self._e_indptr = torch.zeros(self.max_batch_size + 1, **i32)
        self._e_last = torch.ones(self.max_batch_size, **i32)
        self._e_indices = torch.zeros(max(self.max_batch_size, 1024), **i32)
        # CUDA-graph metadata (fixed addresses, allocated in init_graph_buffers)
        self._g_indptr: Optional[torch.Tensor] = None
        self._g_last: Optional[torch.Tensor] = None
        self._g_indices: Optional[torch.Tensor] = None
        self.graph_max_bs = 0

    # ---- kernel wrappers -------------------------------------------------------------

    def _new_wrapper(self, shape: Shape):
        cls = self._wrapper_cls or _default_wrapper_cls()
        q_heads, kv_heads, head_dim = shape
        w = cls(
            num_qo_heads=q_heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            page_size=self.page_size,
            q_dtype=self.q_dtype,
            kv_dtype=self.kv_dtype,
            device=self.device,
            max_batch_size=self.max_batch_size,
            prefetch_distance=self.prefetch_distance,
            **({} if self.pdl is None else {"pdl": self.pdl}),
        )
        w.load()
        return w

    def load(self) -> LoadReport:
        """Create and JIT-load (or load from the disk cache) every wrapper now, and compile the
        page-table kernel, so no request waits for a build.

        Raises whatever the kernel layer raises (KernelUnavailableError on no sm_90 GPU,
        no nvcc, or a failed build); the adapter turns that into a fallback.
        """
        t0 = time.perf_counter()
        mem0 = _allocated_bytes(self.device)
        for shape in self._shapes:
            if shape not in self.wrappers:
                self.wrappers[shape] = self._new_wrapper(shape)
        t1 = time.perf_counter()
        self._build_into(self._e_indptr, self._e_indices, self._e_last,
                         torch.zeros(1, dtype=torch.int64, device=self.device),
                         torch.ones(1, dtype=torch.int64, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        reported = [getattr(w, "workspace_bytes", None) for w in self.wrappers.values()]
        if reported and all(isinstance(b, int) for b in reported):
            ws = int(sum(reported))
        else:
            ws = _allocated_bytes(self.device) - mem0
        ws += sum(t.numel() * t.element_size() for t in (self._e_indptr, self._e_last, self._e_indices))
        dist = {getattr(w, "prefetch_distance", self.prefetch_distance) for w in self.wrappers.values()}
        return LoadReport(
            seconds=t1 - t0,
            metadata_seconds=t2 - t1,
            workspace_bytes=ws,
            prefetch_distance=next(iter(dist)) if len(dist) == 1 else sorted(map(str, dist)),
            modules=tuple(w.describe_module() for w in self.wrappers.values()),
        )

    def _ensure_batch_capacity(self, bs: int) -> None:
        if bs <= self.max_batch_size:
            return
        # Only reached in eager mode (graph batches are bounded by init_graph_buffers).
        new_max = max(bs, 2 * self.max_batch_size)
        logger.info("kvprefetch: growing decode batch capacity %d -> %d", self.max_batch_size, new_max)
        self.max_batch_size = new_max
        # Keep the old wrappers alive: a captured CUDA graph may still point at their workspace.
        self._retired.extend(self.wrappers.values())
        self.wrappers = {s: self._new_wrapper(s) for s in self.wrappers}
        i32 = dict(dtype=torch.int32, device=self.device)
        self._e_indptr = torch.zeros(new_max + 1, **i32)
        self._e_last = torch.ones(new_max, **i32)

    def _wrapper_for(self, shape: Shape):
        w = self.wrappers.get(shape)
        if w is None:
            # A layer shape not seen at start-up (should not happen: the adapter scans the
            # model's attention layers). Build it now rather than fail the request.
            logger.warning("kvprefetch: building a decode kernel for unexpected layer shape %s at run time", shape)
            w = self._new_wrapper(shape)
            self.wrappers[shape] = w
            if self._plan is not None:
                p = self._plan
                w.plan(p.kv_indptr, p.kv_indices, p.kv_last_page_len, batch_size=p.batch_size)
        return w

    # ---- metadata --------------------------------------------------------------------

    def _build_into(self, indptr, indices, last, req_pool_indices, seq_lens,
                    seq_lens_sum: Optional[int] = None) -> None:
        # The token sum bounds any one request's pages; it only sets how many programs share a long row's copy
        # (any value is correct: each program loops to its request's end).
        bound = None if seq_lens_sum is None else min(self.max_pages_per_req, -(-int(seq_lens_sum) // self.page_size))
        self._build(self.req_to_token, req_pool_indices, seq_lens, self.page_size, indptr, indices, last,
                    max_pages=bound)

    def _plan_all(self, indptr, indices, last, bs: int) -> None:
        self._plan = _Plan(indptr, indices, last, bs)
        for w in self.wrappers.values():
            w.plan(indptr, indices, last, batch_size=bs)

    def plan_eager(self, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                   seq_lens_sum: Optional[int]) -> None:
        """Metadata for an eager decode step of ``len(seq_lens)`` requests."""
        bs = int(seq_lens.shape[0])
        if bs == 0:
            return
        self._ensure_batch_capacity(bs)
        if seq_lens_sum is None:  # no host copy of the lengths was published: one sync
            seq_lens_sum = int(seq_lens.sum().item())
        need = num_pages_upper_bound(seq_lens_sum, bs, self.page_size)
        if need > self._e_indices.numel():
            self._e_indices = torch.empty(max(need, 2 * self._e_indices.numel()),
                                          dtype=torch.int32, device=self.device)
        indptr, last = self._e_indptr[: bs + 1], self._e_last[:bs]
        self._build_into(indptr, self._e_indices, last, req_pool_indices, seq_lens, seq_lens_sum)
        self._plan_all(indptr, self._e_indices, last, bs)

    def init_graph_buffers(self, max_bs: int) -> int:
        """Allocate the CUDA-graph metadata buffers; returns their size in bytes."""
        max_bs = max(int(max_bs), 1)
        if self._g_indptr is not None and max_bs <= self.graph_max_bs:
            return self.graph_buffer_bytes()
        self._ensure_batch_capacity(max_bs)
        if self._g_indptr is not None:  # graphs captured on the old buffers stay valid
            self._retired.extend((self._g_indptr, self._g_last, self._g_indices))
        i32 = dict(dtype=torch.int32, device=self.device)
        self._g_indptr = torch.zeros(max_bs + 1, **i32)
        self._g_last = torch.ones(max_bs, **i32)
        self._g_indices = torch.zeros(max_bs * self.max_pages_per_req, **i32)
        self.graph_max_bs = max_bs
        return self.graph_buffer_bytes()

    def graph_buffer_bytes(self) -> int:
        ts = (self._g_indptr, self._g_last, self._g_indices)
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def plan_graph(self, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, bs: int,
                   seq_lens_sum: Optional[int] = None) -> None:
        """Refresh the persistent graph buffers for a (padded) batch of ``bs`` and plan
        the wrappers with them. Called before capture and before every replay. ``seq_lens_sum``: the host's
        token sum of the padded batch where SGLang publishes it (None: not known)."""
        if self._g_indptr is None:
            raise RuntimeError("init_graph_buffers() was not called before CUDA-graph planning")
        if bs > self.graph_max_bs:
            raise RuntimeError(f"CUDA-graph batch {bs} exceeds the captured maximum {self.graph_max_bs}")
        if bs == 0:
            return
        indptr, last = self._g_indptr[: bs + 1], self._g_last[:bs]
        self._build_into(indptr, self._g_indices, last, req_pool_indices[:bs], seq_lens[:bs], seq_lens_sum)
        self._plan_all(indptr, self._g_indices, last, bs)

    # ---- attention -------------------------------------------------------------------

    def paged_view(self, buf: torch.Tensor) -> torch.Tensor:
        """[num_slots, H, D] pool buffer -> [num_pages, P, H, D] (a free view); P == 1: as is."""
        p = self.page_size
        if p == 1:
            return buf
        n = buf.shape[0] - buf.shape[0] % p
        return buf[:n].view(n // p, p, *buf.shape[1:])

    def run(
        self,
        q: torch.Tensor,
        k_buffer: torch.Tensor,
        v_buffer: torch.Tensor,
        *,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        sm_scale: float,
        logits_soft_cap: float = 0.0,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> torch.Tensor:
        """Decode attention for the planned batch; returns [B, num_qo_heads, head_dim]."""
        w = self._wrapper_for((num_qo_heads, num_kv_heads, head_dim))
        q3 = q.contiguous().view(-1, num_qo_heads, head_dim)
        return w.run(
            q3,
            self.paged_view(k_buffer),
            self.paged_view(v_buffer),
            sm_scale=float(sm_scale),
            logits_soft_cap=float(logits_soft_cap or 0.0),
            k_scale=1.0 if k_scale is None else float(k_scale),
            v_scale=1.0 if v_scale is None else float(v_scale),
        )
