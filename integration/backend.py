"""The "kvprefetch" SGLang attention backend (SGLang 0.5.17).

Entry point: ``create_backend(model_runner)``, called by the factory that ``patches/``
registers with ``register_attention_backend("kvprefetch")``.

Design
------
* Decode runs our kernel (``kvprefetch.jit_kernels.BatchDecodeWithPagedKVCache``) in
  :class:`KvPrefetchDecodeBackend`, a decode-only ``AttentionBackend``.
* Prefill / extend / mixed chunked-prefill batches are not ours: with ``--attention-backend
  kvprefetch`` we return SGLang's own ``HybridAttnBackend(prefill=<FA3 or FlashInfer backend>,
  decode=KvPrefetchDecodeBackend)`` -- exactly what SGLang builds itself for
  ``--prefill-attention-backend fa3 --decode-attention-backend kvprefetch`` -- so the
  prefill backend's code (its metadata, its workspace, its CUDA-graph support) runs
  unchanged. FA3 (built by SGLang's own factory, SGLang's Hopper default) where it imports and
  the KV cache is 16-bit, FlashInfer otherwise; ``KVPREFETCH_PREFILL_BACKEND=flashinfer|fa3`` pins one. With
  ``--decode-attention-backend kvprefetch --prefill-attention-backend fa3|flashinfer|...``
  SGLang does the composing and we return the decode backend alone (see roles.py).
* Decode metadata: we do NOT use FlashInfer's decode indices updater. Its
  ``call_begin_forward`` builds the token-granular indices *and* calls the wrapper's
  ``begin_forward`` (FlashInfer's host-side ``plan()``: host scheduling work every step,
  plus device-to-host copies outside CUDA graphs) in one method, and it always plans at
  page size 1 (one index per token, ``kv_last_page_len`` = 1) whatever ``--page-size`` is.
  We build page-granular ``kv_indptr/kv_indices/kv_last_page_len`` straight from
  ``req_to_token`` in one Triton launch (page_table.py) and our ``plan()`` only stores
  tensor references, so a decode step has no host planning and no sync.
* CUDA graphs (0.5.17 hooks): ``init_cuda_graph_state`` allocates persistent metadata
  buffers for the largest captured batch; ``init_forward_metadata_out_graph`` (before
  capture, and before every replay, outside the graph) rewrites their contents from
  req_to_token and plans the kernel wrappers with those same tensors, so the captured
  launches read the new page table at replay. ``init_forward_metadata_in_graph`` is a
  no-op: all req_to_token reads finish before replay, which is what SGLang's decode
  runner assumes when it publishes its pre-replay "req_to_token read done" event.
  ``get_cuda_graph_seq_len_fill_value`` is 1 (padded requests read one token of the
  reserved slot 0).
* Refusals (refusal.py) raise at start-up with the backends that can serve the
  configuration. No sm_90 GPU, no nvcc, a failed JIT build, or KVPREFETCH_DISABLE=1 make
  the factory return SGLang's TritonAttnBackend instead, with ONE log line; the server
  never goes down for the kernel's sake.
"""

from __future__ import annotations

import logging
import os
import traceback
from typing import Any, List, Optional, Tuple

import torch

from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

from .config import ENV_PREFETCH_DISTANCE, ENV_PREFILL, KvPrefetchConfig, load_config
from .decoder import DecodeKernels
from .refusal import (
    LayerInfo,
    check,
    collect_context,
    format_refusals,
    layer_info_from_module,
    raise_if_fatal,
)
from .roles import BACKEND_NAME, resolve_role

logger = logging.getLogger(__name__)

_said_once: set = set()


def _once(level: int, message: str) -> None:
    """Log a message once per process (several backends may be built: TBO, PD-mux...)."""
    if message in _said_once:
        return
    _said_once.add(message)
    logger.log(level, message)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# ---- facts from the ModelRunner ------------------------------------------------------


def scan_attention_layers(model_runner: Any) -> List[LayerInfo]:
    """LayerInfo of every RadixAttention in the loaded model (this rank's layers)."""
    from sglang.srt.layers.radix_attention import RadixAttention

    model = getattr(model_runner, "model", None)
    if model is None:
        return []
    return [layer_info_from_module(m) for m in model.modules() if isinstance(m, RadixAttention)]


def _config_shape(model_runner: Any) -> Tuple[int, int, int]:
    """Per-rank attention shape from the model config (used if no layer was found)."""
    mc = model_runner.model_config
    try:
        from sglang.srt.runtime_context import get_parallel

        tp = get_parallel().attn_tp_size
    except Exception:
        tp = getattr(model_runner.server_args, "tp_size", 1) or 1
    return (mc.num_attention_heads // tp, mc.get_num_kv_heads(tp), mc.head_dim)


def _device(model_runner: Any) -> torch.device:
    return model_runner.req_to_token_pool.req_to_token.device


def _device_support(device: torch.device) -> Tuple[bool, str]:
    try:
        from kvprefetch.jit_kernels import is_supported_device
    except Exception as e:  # the kernel package itself is broken or missing
        return False, f"kvprefetch.jit_kernels cannot be imported ({type(e).__name__}: {e})"
    try:
        ok, reason = is_supported_device(device)
    except Exception as e:
        return False, f"device check failed ({type(e).__name__}: {e})"
    return bool(ok), str(reason)


def _kernel_prefetch_distance(config: KvPrefetchConfig) -> Optional[int]:
    """What to pass as prefetch_distance. None lets the kernel layer read the variable itself
    and apply its tuned default; but when the variable is set to something config.py rejected
    (and warned about), pass the kernel's default explicitly so the kernel does not re-read
    and reject it."""
    if config.prefetch_distance is not None:
        return config.prefetch_distance
    if os.environ.get(ENV_PREFETCH_DISTANCE, "").strip():
        try:
            from kvprefetch.jit_kernels.decode import DEFAULT_PREFETCH_DISTANCE

            return int(DEFAULT_PREFETCH_DISTANCE)
        except Exception:
            return None
    return None


def _max_decode_batch(model_runner: Any) -> int:
    """Upper bound of a decode batch: every running request holds a req_to_token slot."""
    pool = model_runner.req_to_token_pool
    return int(getattr(pool, "size", pool.req_to_token.shape[0]))


# ---- SGLang backends we delegate to ----------------------------------------------------


def _flashinfer_backend(model_runner: Any):
    from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend

    return FlashInferAttnBackend(
        model_runner, init_new_workspace=getattr(model_runner, "init_new_workspace", False)
    )


def _fa3_missing_reason() -> Optional[str]:
    try:
        import sgl_kernel.flash_attn  # noqa: F401  (the FA3 library SGLang's fa3 backend loads)
    except Exception as e:  # ImportError, or an OSError from a library that is not staged
        return f"{type(e).__name__}: {e}"
    return None


def _prefill_choice(config: KvPrefetchConfig, kv_dtype: Optional[torch.dtype] = None) -> str:
    """The prefill half under --attention-backend kvprefetch: FA3 where it imports (``auto``, the default, and
    ``fa3``; only ``fa3`` warns where it does not), FlashInfer otherwise or when asked for. ``auto`` keeps
    FlashInfer for an 8-bit KV cache: SGLang's FA3 prefill casts q to the cache's fp8 type there, and its
    logprobs left the stock backends' spread in the Engine test (FlashInfer prefills with q in 16 bits)."""
    if config.prefill_backend == "flashinfer":
        return "flashinfer"
    if config.prefill_backend == "auto" and kv_dtype is not None and kv_dtype.itemsize == 1:
        return "flashinfer"
    why = _fa3_missing_reason()
    if why is None:
        return "fa3"
    if config.prefill_backend == "fa3":
        _once(logging.WARNING, f"kvprefetch: {ENV_PREFILL}=fa3 but FA3 does not import ({why}); prefill runs on "
                               "SGLang's FlashInfer backend")
    return "flashinfer"


def _prefill_backend(model_runner: Any, name: str) -> Tuple[Any, str]:
    """The prefill half and its name; FA3 through SGLang's own factory for --attention-backend fa3, and FlashInfer
    (one warning) if that factory refuses the model, so the choice of prefill backend never takes the server down."""
    if name == "fa3":
        from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

        try:
            return ATTENTION_BACKENDS["fa3"](model_runner), "fa3"
        except Exception as e:
            _once(logging.WARNING, f"kvprefetch: SGLang's FA3 backend could not be built for the prefill half "
                                   f"({type(e).__name__}: {e}); prefill runs on SGLang's FlashInfer backend")
    return _flashinfer_backend(model_runner), "flashinfer"


def _triton_backend(model_runner: Any):
    from sglang.srt.layers.attention.triton_backend import TritonAttnBackend

    return TritonAttnBackend(model_runner)


# ---- the decode backend ------------------------------------------------------------------


_PREFILL_NAMES = {"flashinfer": "FlashInfer", "fa3": "FA3"}


class KvPrefetchDecodeBackend(AttentionBackend):
    """Decode-only attention backend running the kvprefetch kernel."""

    # Eager decode sizes its page-index buffer from the host-side seq_lens_sum.
    needs_cpu_seq_lens = True

    def __init__(self, model_runner: Any, config: KvPrefetchConfig, layers: List[LayerInfo],
                 role: str = "decode", prefill: str = "flashinfer"):
        super().__init__()
        self.config = config
        self.role = role
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.page_size = int(model_runner.page_size)
        shapes = sorted({l.shape for l in layers}) or [_config_shape(model_runner)]
        self.num_layers = len(layers)
        self.kernels = DecodeKernels(
            shapes=shapes,
            page_size=self.page_size,
            q_dtype=model_runner.dtype,
            kv_dtype=model_runner.kv_cache_dtype,
            device=_device(model_runner),
            req_to_token=model_runner.req_to_token_pool.req_to_token,
            max_batch_size=_max_decode_batch(model_runner),
            prefetch_distance=_kernel_prefetch_distance(config),
            pdl=config.pdl,
        )
        report = self.kernels.load()  # JIT-compile (or load) now: no request waits for it
        shape_txt = ", ".join(f"{q}q/{k}kv heads x d{d}" for q, k, d in shapes)
        logger.info(
            "kvprefetch decode backend ready (%s): %s over %d layers, page_size %d, q %s, kv %s, "
            "max decode batch %d; %s (effective prefetch distance %s); modules: %s; "
            "start-up %.2f s (kernel modules %.2f s, page-table kernel %.2f s); workspace %s",
            f"prefill: {_PREFILL_NAMES[prefill]}" if role == "full" else "decode half of SGLang's HybridAttnBackend",
            shape_txt, self.num_layers, self.page_size,
            str(model_runner.dtype).replace("torch.", ""),
            str(model_runner.kv_cache_dtype).replace("torch.", ""),
            self.kernels.max_batch_size, config.describe(), report.prefetch_distance,
            ", ".join(report.modules), report.seconds + report.metadata_seconds,
            report.seconds, report.metadata_seconds, _mib(report.workspace_bytes),
        )

    # -- metadata hooks ------------------------------------------------------------------

    @staticmethod
    def _check_mode(forward_batch) -> bool:
        mode = forward_batch.forward_mode
        if mode.is_decode_or_idle():
            return True
        raise NotImplementedError(
            f"the kvprefetch decode backend got a {mode} batch; prefill/extend batches are served "
            "by the prefill backend it is composed with"
        )

    def init_forward_metadata(self, forward_batch):
        """Eager decode step: page table into the eager buffers, then plan."""
        self._check_mode(forward_batch)
        bs = int(forward_batch.batch_size)
        if bs == 0:
            return
        seq_lens_sum = getattr(forward_batch, "seq_lens_sum", None)
        if seq_lens_sum is None and getattr(forward_batch, "seq_lens_cpu", None) is not None:
            seq_lens_sum = int(forward_batch.seq_lens_cpu[:bs].sum())
        self.kernels.plan_eager(forward_batch.req_pool_indices[:bs], forward_batch.seq_lens[:bs], seq_lens_sum)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        nbytes = self.kernels.init_graph_buffers(max_bs)
        logger.info(
            "kvprefetch: CUDA-graph decode metadata for batches up to %d: %s "
            "(page table of up to %d pages per request)",
            max_bs, _mib(nbytes), self.kernels.max_pages_per_req,
        )

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False):
        """Before capture (in_capture=True) and before each replay: refresh the persistent
        buffers' contents and plan with them (same tensors at capture and replay)."""
        self._check_mode(forward_batch)
        bs = int(forward_batch.batch_size)
        self.kernels.plan_graph(forward_batch.req_pool_indices[:bs], forward_batch.seq_lens[:bs], bs,
                                getattr(forward_batch, "seq_lens_sum", None))

    def init_forward_metadata_in_graph(self, forward_batch):
        pass  # nothing is recorded into the graph besides the attention kernels themselves

    def get_cuda_graph_seq_len_fill_value(self):
        return 1

    # -- attention ---------------------------------------------------------------------------

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        if kwargs.get("sinks") is not None:
            raise NotImplementedError("kvprefetch does not support attention sinks (refused at start-up)")
        if k is not None and save_kv_cache:
            assert v is not None
            self.token_to_kv_pool.set_kv_buffer(
                layer, forward_batch.out_cache_loc, k, v, layer.k_scale, layer.v_scale
            )
        k_buf, v_buf = self.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        o = self.kernels.run(
            q,
            k_buf,
            v_buf,
            num_qo_heads=layer.tp_q_head_num,
            num_kv_heads=layer.tp_k_head_num,
            head_dim=layer.head_dim,
            sm_scale=layer.scaling,
            logits_soft_cap=layer.logit_cap or 0.0,
            # the *_float scales avoid a device->host copy (CUDA-graph safe); None means 1.0
            k_scale=layer.k_scale_float,
            v_scale=layer.v_scale_float,
        )
        return o.view(-1, layer.tp_q_head_num * layer.head_dim)

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True, **kwargs):
        raise NotImplementedError(
            "the kvprefetch decode backend does not run extend/prefill; it is composed with a "
            "prefill backend (FlashInfer by default)"
        )


# ---- the factory ---------------------------------------------------------------------------


def create_backend(model_runner: Any):
    """Build the attention backend for ``--attention-backend kvprefetch`` (or the decode /
    prefill half named by --decode-/--prefill-attention-backend)."""
    config = load_config()
    for w in config.warnings:
        _once(logging.WARNING, f"kvprefetch: {w}")
    role = resolve_role(model_runner.server_args, BACKEND_NAME)

    if role == "prefill":
        _once(logging.INFO, "kvprefetch has no prefill kernel: prefill runs on SGLang's FlashInfer backend")
        return _flashinfer_backend(model_runner)

    if config.disable:
        _once(logging.WARNING, "kvprefetch: KVPREFETCH_DISABLE=1, using SGLang's Triton attention backend "
                               f"for {'decode' if role == 'decode' else 'prefill and decode'}")
        return _triton_backend(model_runner)

    layers = scan_attention_layers(model_runner)
    device_ok, device_reason = _device_support(_device(model_runner))
    ctx = collect_context(model_runner, role=role, layers=layers,
                          device_supported=device_ok, device_reason=device_reason)
    machine_refusals = raise_if_fatal(check(ctx))  # model/server refusals raise here
    if machine_refusals:
        _once(logging.WARNING, format_refusals(machine_refusals)
              + "\n  -> falling back to SGLang's Triton attention backend")
        return _triton_backend(model_runner)

    prefill_half, prefill = None, "flashinfer"
    if role == "full":  # built first, so that the start-up line names the prefill half that actually serves
        prefill_half, prefill = _prefill_backend(
            model_runner, _prefill_choice(config, getattr(model_runner, "kv_cache_dtype", None)))
    try:
        decode = KvPrefetchDecodeBackend(model_runner, config, layers, role=role, prefill=prefill)
    except Exception as e:  # KernelUnavailableError (no GPU/sm_90/nvcc, failed build) or any JIT error
        _once(logging.WARNING,
              f"kvprefetch decode kernel unavailable ({type(e).__name__}: {e}); falling back to SGLang's "
              "Triton attention backend (flashinfer and fa3 also serve this model)")
        logger.debug("kvprefetch load failure:\n%s", traceback.format_exc())
        return _triton_backend(model_runner)

    if role == "decode":
        return decode
    from sglang.srt.layers.attention.hybrid_attn_backend import HybridAttnBackend

    return HybridAttnBackend(model_runner, prefill_backend=prefill_half, decode_backend=decode)
