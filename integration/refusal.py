"""What the kvprefetch backend refuses to serve, decided once at start-up.

``collect_context`` reads the facts from SGLang's ``ModelRunner`` (plain ``getattr``
with defaults, so tests can feed it ``SimpleNamespace`` fakes) and ``check`` turns them
into a list of :class:`Refusal`. A *fatal* refusal is a model or server configuration
the decode kernel cannot serve correctly: the backend raises
:class:`KvPrefetchUnsupportedError` naming SGLang backends that can. A non-fatal one is
the machine (GPU architecture): the backend logs it once and falls back to SGLang's
Triton backend, so the server still comes up.

This module imports neither torch nor sglang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Tuple

# What the decode kernel (kvprefetch.jit_kernels) supports; keep in step with its contract.
SUPPORTED_HEAD_DIMS = (64, 128, 256)
MAX_GROUP_SIZE = 16
MAX_PAGE_SIZE = 128
SUPPORTED_Q_DTYPES = ("bfloat16", "float16")
FP8_KV_DTYPE = "float8_e4m3fn"
# --kv-cache-dtype values whose pools are not plain [slots, heads, dim] tensors of one dtype.
QUANTIZED_KV_CACHE_DTYPES = ("fp8_e5m2", "fp4_e2m1", "nvfp4", "fp4_mx_block16", "mxfp8", "int8", "int4")


class KvPrefetchUnsupportedError(ValueError):
    """The model/server configuration cannot be served by the kvprefetch decode kernel."""


@dataclass(frozen=True)
class LayerInfo:
    """The attention-layer facts that matter to the decode kernel (one per RadixAttention)."""

    layer_id: int
    num_qo_heads: int  # per tensor-parallel rank (RadixAttention.tp_q_head_num)
    num_kv_heads: int  # per rank (tp_k_head_num)
    head_dim: int
    v_head_dim: int
    sliding_window_size: int = -1
    is_cross_attention: bool = False
    logit_cap: float = 0.0
    logit_capping_method: str = "tanh"

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.num_qo_heads, self.num_kv_heads, self.head_dim)


def layer_info_from_module(m: Any) -> LayerInfo:
    """LayerInfo from an ``sglang.srt.layers.radix_attention.RadixAttention`` (duck-typed)."""
    head_dim = int(getattr(m, "head_dim"))
    v_head_dim = getattr(m, "v_head_dim", head_dim)
    sw = getattr(m, "sliding_window_size", -1)
    return LayerInfo(
        layer_id=int(getattr(m, "layer_id", -1)),
        num_qo_heads=int(getattr(m, "tp_q_head_num")),
        num_kv_heads=int(getattr(m, "tp_k_head_num")),
        head_dim=head_dim,
        v_head_dim=int(head_dim if v_head_dim in (None, -1) else v_head_dim),
        sliding_window_size=int(-1 if sw is None else sw),
        is_cross_attention=bool(getattr(m, "is_cross_attention", False)),
        logit_cap=float(getattr(m, "logit_cap", 0.0) or 0.0),
        logit_capping_method=str(getattr(m, "logit_capping_method", "tanh") or "tanh"),
    )


@dataclass(frozen=True)
class BackendContext:
    """Everything ``check`` looks at. ``role``: "full" (prefill on FlashInfer + our decode)
    or "decode" (our decode inside SGLang's HybridAttnBackend)."""

    role: str = "full"
    use_mla: bool = False
    has_attention_sinks: bool = False
    is_encoder_decoder: bool = False
    sliding_window_size: Optional[int] = None
    is_hybrid_swa: bool = False
    speculative_algorithm: Optional[str] = None
    is_draft_worker: bool = False
    enable_dp_attention: bool = False
    enable_deterministic_inference: bool = False
    dllm_algorithm: Optional[str] = None
    enable_unified_memory: bool = False
    enable_page_major_kv_layout: bool = False
    use_hnd_kv_layout: bool = False
    dcp_size: int = 1
    kv_cache_dtype_arg: str = "auto"
    model_dtype: str = "bfloat16"
    kv_dtype: str = "bfloat16"
    page_size: int = 1
    layers: Tuple[LayerInfo, ...] = ()
    device_supported: bool = True
    device_reason: str = ""


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    alternatives: str
    fatal: bool = True

    def text(self) -> str:
        return f"{self.message}; use {self.alternatives} instead"


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "None"


def _truthy_env(name: str, environ) -> bool:
    return str(environ.get(name, "")).strip().lower() in ("1", "true", "yes", "y")


def collect_context(
    model_runner: Any,
    *,
    role: str,
    layers: Iterable[LayerInfo] = (),
    device_supported: bool = True,
    device_reason: str = "",
    environ=None,
) -> BackendContext:
    """Read the facts from an SGLang ModelRunner (or a fake with the same attributes)."""
    env = os.environ if environ is None else environ
    sa = getattr(model_runner, "server_args", None)
    mc = getattr(model_runner, "model_config", None)

    def s(name, default=None):
        return getattr(sa, name, default) if sa is not None else default

    def m(name, default=None):
        return getattr(mc, name, default) if mc is not None else default

    use_mla = getattr(model_runner, "use_mla_backend", None)
    if use_mla is None:
        use_mla = "MLA" in str(m("attention_arch", ""))
    model_dtype = getattr(model_runner, "dtype", None) or m("dtype", None)
    kv_dtype = getattr(model_runner, "kv_cache_dtype", None) or model_dtype
    page_size = getattr(model_runner, "page_size", None) or s("page_size", 1) or 1
    return BackendContext(
        role=role,
        use_mla=bool(use_mla),
        has_attention_sinks=bool(m("has_attention_sinks", False)),
        is_encoder_decoder=bool(m("is_encoder_decoder", False)),
        sliding_window_size=getattr(model_runner, "sliding_window_size", None),
        is_hybrid_swa=bool(getattr(model_runner, "is_hybrid_swa", m("is_hybrid_swa", False))),
        speculative_algorithm=s("speculative_algorithm", None),
        is_draft_worker=bool(getattr(model_runner, "is_draft_worker", False)),
        enable_dp_attention=bool(s("enable_dp_attention", False)),
        enable_deterministic_inference=bool(s("enable_deterministic_inference", False)),
        dllm_algorithm=s("dllm_algorithm", None),
        enable_unified_memory=bool(s("enable_unified_memory", False)),
        enable_page_major_kv_layout=bool(s("enable_page_major_kv_layout", False)),
        use_hnd_kv_layout=_truthy_env("SGLANG_USE_HND_KVCACHE", env),
        dcp_size=int(s("dcp_size", 1) or 1),
        kv_cache_dtype_arg=str(s("kv_cache_dtype", "auto") or "auto"),
        model_dtype=_dtype_name(model_dtype),
        kv_dtype=_dtype_name(kv_dtype),
        page_size=int(page_size),
        layers=tuple(layers),
        device_supported=bool(device_supported),
        device_reason=str(device_reason),
    )


def check(ctx: BackendContext) -> List[Refusal]:
    """All reasons the kvprefetch decode backend cannot serve ``ctx`` (empty list: it can)."""
    out: List[Refusal] = []

    def refuse(code, message, alternatives, fatal=True):
        out.append(Refusal(code, message, alternatives, fatal))

    if ctx.use_mla:
        refuse("mla", "MLA models (DeepSeek-V2/V3, Kimi-K2, ...) are not supported",
               "--attention-backend fa3, flashmla, flashinfer or triton")
    if ctx.has_attention_sinks:
        refuse("attention_sinks", "models with attention sinks (e.g. gpt-oss) are not supported",
               "--attention-backend fa3 or triton")
    if ctx.is_encoder_decoder or any(l.is_cross_attention for l in ctx.layers):
        refuse("cross_attention", "encoder-decoder models (cross-attention) are not supported",
               "--attention-backend flashinfer")
    window_layers = [l.layer_id for l in ctx.layers if l.sliding_window_size is not None and l.sliding_window_size > -1]
    if ctx.sliding_window_size is not None or ctx.is_hybrid_swa or window_layers:
        refuse("sliding_window", "sliding-window attention is not supported"
               + (f" (window {ctx.sliding_window_size})" if ctx.sliding_window_size is not None else ""),
               "--attention-backend fa3, flashinfer or triton")
    if ctx.speculative_algorithm or ctx.is_draft_worker:
        refuse("speculative", f"speculative decoding ({ctx.speculative_algorithm or 'draft worker'}) is not supported",
               "--attention-backend fa3, flashinfer or triton")
    if ctx.enable_dp_attention:
        refuse("dp_attention", "DP attention (--enable-dp-attention) is not supported",
               "--attention-backend fa3, flashinfer or triton")
    if ctx.enable_deterministic_inference:
        refuse("deterministic", "--enable-deterministic-inference is not supported (split-KV decode is not batch-invariant)",
               "--attention-backend fa3, flashinfer or triton")
    if ctx.dllm_algorithm:
        refuse("dllm", f"diffusion LLM decoding (--dllm-algorithm {ctx.dllm_algorithm}) is not supported",
               "--attention-backend flashinfer or triton")
    if ctx.enable_unified_memory or ctx.enable_page_major_kv_layout:
        refuse("kv_layout", "--enable-unified-memory / --enable-page-major-kv-layout KV layouts are not supported",
               "--attention-backend triton")
    if ctx.use_hnd_kv_layout:
        refuse("kv_layout_hnd", "the HND KV-cache layout (SGLANG_USE_HND_KVCACHE=1) is not supported",
               "the default NHD layout (unset SGLANG_USE_HND_KVCACHE), or --attention-backend trtllm_mha")
    if ctx.dcp_size > 1:
        refuse("dcp", f"decode context parallelism (--dcp-size {ctx.dcp_size}) is not supported",
               "--attention-backend triton")

    if ctx.model_dtype not in SUPPORTED_Q_DTYPES:
        refuse("model_dtype", f"model dtype {ctx.model_dtype} is not supported (bfloat16/float16 only)",
               "--dtype bfloat16, or --attention-backend flashinfer or triton")
    kv_arg = ctx.kv_cache_dtype_arg.lower()
    if kv_arg in QUANTIZED_KV_CACHE_DTYPES or ctx.kv_dtype not in (ctx.model_dtype, FP8_KV_DTYPE):
        refuse("kv_cache_dtype",
               f"--kv-cache-dtype {ctx.kv_cache_dtype_arg} (KV stored as {ctx.kv_dtype}) is not supported; "
               "kvprefetch reads KV in the model dtype or fp8_e4m3",
               "--kv-cache-dtype auto or fp8_e4m3, or --attention-backend flashinfer or triton")
    p = ctx.page_size
    if p < 1 or p > MAX_PAGE_SIZE or (p & (p - 1)) != 0:
        refuse("page_size", f"--page-size {p} is not supported (powers of two from 1 to {MAX_PAGE_SIZE})",
               "--page-size 1, 16 or 64, or --attention-backend fa3, flashinfer or triton")

    bad_shapes = sorted({l.shape for l in ctx.layers
                         if l.head_dim not in SUPPORTED_HEAD_DIMS
                         or l.num_kv_heads < 1
                         or l.num_qo_heads % l.num_kv_heads != 0
                         or not 1 <= l.num_qo_heads // l.num_kv_heads <= MAX_GROUP_SIZE})
    if bad_shapes:
        desc = ", ".join(f"{q} q heads / {k} kv heads / head_dim {d}" for q, k, d in bad_shapes)
        refuse("head_shape",
               f"attention shape per rank not supported ({desc}); kvprefetch supports head_dim "
               f"{'/'.join(map(str, SUPPORTED_HEAD_DIMS))} and 1..{MAX_GROUP_SIZE} query heads per KV head",
               "--attention-backend fa3, flashinfer or triton")
    if any(l.v_head_dim != l.head_dim for l in ctx.layers):
        refuse("v_head_dim", "layers whose value head_dim differs from the key head_dim are not supported",
               "--attention-backend fa3 or triton")
    methods = sorted({l.logit_capping_method for l in ctx.layers if l.logit_cap > 0 and l.logit_capping_method != "tanh"})
    if methods:
        refuse("logit_cap_method", f"logit soft-capping method {', '.join(methods)} is not supported (tanh only)",
               "the attention backend the model's SGLang implementation supports")

    if not ctx.device_supported:
        refuse("device", f"the kvprefetch kernel needs an sm_90 GPU (H100/H200): {ctx.device_reason}",
               "--attention-backend flashinfer, fa3 or triton", fatal=False)
    return out


def format_refusals(refusals: Sequence[Refusal]) -> str:
    lines = ["kvprefetch attention backend cannot serve this configuration:"]
    lines += [f"  - {r.text()}" for r in refusals]
    return "\n".join(lines)


def raise_if_fatal(refusals: Sequence[Refusal]) -> List[Refusal]:
    """Raise KvPrefetchUnsupportedError for the fatal refusals; return the non-fatal ones."""
    fatal = [r for r in refusals if r.fatal]
    if fatal:
        raise KvPrefetchUnsupportedError(format_refusals(fatal))
    return [r for r in refusals if not r.fatal]
