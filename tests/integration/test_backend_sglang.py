"""The SGLang adapter (integration/backend.py) on the CPU: SGLang's real AttentionBackend and
RadixAttention classes, a fake ModelRunner, and the torch stand-in for the kernel.

Needs the sglang package importable (no GPU); skipped otherwise."""

import inspect
import logging
import math
import sys
import types
from types import SimpleNamespace

import pytest
import torch

pytestmark = pytest.mark.sglang
base = pytest.importorskip("sglang.srt.layers.attention.base_attn_backend")
radix = pytest.importorskip("sglang.srt.layers.radix_attention")

from kvp_integration_helpers import FakeDecodeWrapper, dense_reference, make_paged_pool  # noqa: E402

backend_mod = pytest.importorskip("kvprefetch.integration.backend")
import kvprefetch.integration.decoder as decoder_mod  # noqa: E402

HQ, HK, D, LAYERS = 8, 2, 64, 3


class FakeMode:
    def __init__(self, name):
        self.name = name

    def is_decode_or_idle(self):
        return self.name in ("DECODE", "IDLE")

    def __repr__(self):
        return f"ForwardMode.{self.name}"


class FakePool:
    """token_to_kv_pool: per-layer [slots, H, D] buffers, SGLang's set/get signatures."""

    def __init__(self, k, v, layers):
        self.k = [k.clone() for _ in range(layers)]
        self.v = [v.clone() for _ in range(layers)]
        self.writes = []

    def set_kv_buffer(self, layer, loc, cache_k, cache_v, k_scale=None, v_scale=None):
        self.writes.append((layer.layer_id, loc.clone()))
        self.k[layer.layer_id][loc] = cache_k.to(self.k[0].dtype)
        self.v[layer.layer_id][loc] = cache_v.to(self.v[0].dtype)

    def get_kv_buffer(self, layer_id):
        return self.k[layer_id], self.v[layer_id]


def fake_runner(pool, *, page_size, server=None, dtype=torch.bfloat16, **runner):
    sa = dict(attention_backend="kvprefetch", prefill_attention_backend=None, decode_attention_backend=None,
              speculative_algorithm=None, enable_dp_attention=False, enable_deterministic_inference=False,
              dllm_algorithm=None, enable_unified_memory=False, enable_page_major_kv_layout=False,
              dcp_size=1, kv_cache_dtype="auto", page_size=page_size, tp_size=1)
    sa.update(server or {})
    server_args = SimpleNamespace(**sa)
    server_args.get_attention_backends = lambda: (
        server_args.prefill_attention_backend or server_args.attention_backend,
        server_args.decode_attention_backend or server_args.attention_backend,
    )
    model = torch.nn.ModuleList(
        [radix.RadixAttention(HQ, D, 1 / math.sqrt(D), HK, layer_id=i) for i in range(LAYERS)]
    )
    fields = dict(
        server_args=server_args,
        model_config=SimpleNamespace(has_attention_sinks=False, is_encoder_decoder=False, is_hybrid_swa=False,
                                     attention_arch="MHA", num_attention_heads=HQ, head_dim=D,
                                     get_num_kv_heads=lambda tp: HK),
        model=model, use_mla_backend=False, sliding_window_size=None, is_draft_worker=False, is_hybrid_swa=False,
        dtype=dtype, kv_cache_dtype=dtype, page_size=page_size,
        token_to_kv_pool=FakePool(pool.k.to(dtype), pool.v.to(dtype), LAYERS),
        req_to_token_pool=SimpleNamespace(req_to_token=pool.req_to_token, size=16),
        init_new_workspace=False,
    )
    fields.update(runner)
    return SimpleNamespace(**fields)


@pytest.fixture
def patched(monkeypatch):
    """Kernel = torch stand-in, device = supported, Triton/FlashInfer/Hybrid = sentinels."""
    FakeDecodeWrapper.instances.clear()
    monkeypatch.setattr(decoder_mod, "_default_wrapper_cls", lambda: FakeDecodeWrapper)
    monkeypatch.setattr(backend_mod, "_device_support", lambda device: (True, ""))
    monkeypatch.setattr(backend_mod, "_triton_backend", lambda mr: ("TRITON", mr))
    monkeypatch.setattr(backend_mod, "_flashinfer_backend", lambda mr: ("FLASHINFER", mr))
    hybrid = types.ModuleType("sglang.srt.layers.attention.hybrid_attn_backend")

    class FakeHybrid:
        def __init__(self, model_runner, prefill_backend, decode_backend):
            self.prefill_backend, self.decode_backend = prefill_backend, decode_backend

    hybrid.HybridAttnBackend = FakeHybrid
    monkeypatch.setitem(sys.modules, "sglang.srt.layers.attention.hybrid_attn_backend", hybrid)
    for var in ("KVPREFETCH_DISABLE", "KVPREFETCH_PREFETCH_DISTANCE", "KVPREFETCH_VALIDATE",
                "KVPREFETCH_PREFILL_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    backend_mod._said_once.clear()
    return FakeHybrid


def test_hooks_match_sglang_0_5_17_signatures():
    ours = backend_mod.KvPrefetchDecodeBackend
    assert issubclass(ours, base.AttentionBackend)
    for name in ("init_forward_metadata", "init_forward_metadata_out_graph", "init_forward_metadata_in_graph",
                 "init_cuda_graph_state", "get_cuda_graph_seq_len_fill_value", "forward_decode", "forward_extend"):
        assert name in ours.__dict__, name
        theirs = list(inspect.signature(getattr(base.AttentionBackend, name)).parameters)
        mine = list(inspect.signature(getattr(ours, name)).parameters)
        assert mine[: len(theirs)] == theirs or "kwargs" in mine, (name, theirs, mine)
    # the removed pre-0.5.13 hooks must not be relied upon
    assert not hasattr(base.AttentionBackend, "init_forward_metadata_capture_cuda_graph")


@pytest.mark.parametrize("page_size", [1, 16])
def test_full_role_composes_flashinfer_prefill_with_our_decode(patched, monkeypatch, page_size, caplog):
    monkeypatch.setattr(backend_mod, "_fa3_missing_reason", lambda: "ImportError: no FA3")  # auto -> FlashInfer
    pool = make_paged_pool([5, 40, 17], page_size, num_kv_heads=HK, head_dim=D)
    mr = fake_runner(pool, page_size=page_size)
    with caplog.at_level(logging.INFO, logger="kvprefetch"):
        be = backend_mod.create_backend(mr)
    assert isinstance(be, patched)
    assert be.prefill_backend == ("FLASHINFER", mr)
    dec = be.decode_backend
    assert isinstance(dec, backend_mod.KvPrefetchDecodeBackend)
    assert len(FakeDecodeWrapper.instances) == 1  # one wrapper for all layers of one shape
    w = FakeDecodeWrapper.instances[0]
    assert w.loaded and (w.num_qo_heads, w.num_kv_heads, w.head_dim, w.page_size) == (HQ, HK, D, page_size)
    assert w.q_dtype == torch.bfloat16 and w.kv_dtype == torch.bfloat16 and w.max_batch_size == 16
    assert "kvprefetch decode backend ready" in caplog.text and "modules: FakeDecodeWrapper" in caplog.text
    assert "start-up" in caplog.text and "workspace" in caplog.text
    assert dec.get_cuda_graph_seq_len_fill_value() == 1


@pytest.mark.parametrize("knob", ["fa3", "auto", ""])
@pytest.mark.parametrize("fa3_imports", [True, False])
def test_prefill_knob_picks_fa3_where_it_imports(patched, monkeypatch, caplog, fa3_imports, knob):
    monkeypatch.setenv("KVPREFETCH_PREFILL_BACKEND", knob)
    monkeypatch.setattr(backend_mod, "_fa3_missing_reason", lambda: None if fa3_imports else "ImportError: no FA3")
    registry = types.ModuleType("sglang.srt.layers.attention.attention_registry")
    registry.ATTENTION_BACKENDS = {"fa3": lambda mr: ("FA3", mr)}
    monkeypatch.setitem(sys.modules, "sglang.srt.layers.attention.attention_registry", registry)
    pool = make_paged_pool([5, 40], 16, num_kv_heads=HK, head_dim=D)
    mr = fake_runner(pool, page_size=16)
    with caplog.at_level(logging.INFO, logger="kvprefetch"):
        be = backend_mod.create_backend(mr)
    assert be.prefill_backend == (("FA3", mr) if fa3_imports else ("FLASHINFER", mr))
    assert ("prefill: FA3" if fa3_imports else "prefill: FlashInfer") in caplog.text
    # an explicit fa3 that cannot run says so, once; the default falls back quietly (the start-up line names it)
    assert ("does not import" in caplog.text) is (knob == "fa3" and not fa3_imports)


@pytest.mark.parametrize("knob", ["auto", "fa3"])
def test_auto_prefill_keeps_flashinfer_for_an_fp8_cache(patched, monkeypatch, caplog, knob):
    # FA3 prefills an fp8 cache with q cast to fp8 (its logprobs left the stock spread on the GPU): auto avoids it,
    # an explicit fa3 is honoured
    monkeypatch.setenv("KVPREFETCH_PREFILL_BACKEND", knob)
    monkeypatch.setattr(backend_mod, "_fa3_missing_reason", lambda: None)
    registry = types.ModuleType("sglang.srt.layers.attention.attention_registry")
    registry.ATTENTION_BACKENDS = {"fa3": lambda mr: ("FA3", mr)}
    monkeypatch.setitem(sys.modules, "sglang.srt.layers.attention.attention_registry", registry)
    pool = make_paged_pool([5, 40], 1, num_kv_heads=HK, head_dim=D)
    mr = fake_runner(pool, page_size=1, server=dict(kv_cache_dtype="fp8_e4m3"), kv_cache_dtype=torch.float8_e4m3fn)
    with caplog.at_level(logging.INFO, logger="kvprefetch"):
        be = backend_mod.create_backend(mr)
    assert be.prefill_backend == (("FA3", mr) if knob == "fa3" else ("FLASHINFER", mr))
    assert FakeDecodeWrapper.instances[0].kv_dtype == torch.float8_e4m3fn
    assert ("prefill: FA3" if knob == "fa3" else "prefill: FlashInfer") in caplog.text


def test_fa3_prefill_that_fails_to_build_falls_back_to_flashinfer(patched, monkeypatch, caplog):
    monkeypatch.setattr(backend_mod, "_fa3_missing_reason", lambda: None)
    registry = types.ModuleType("sglang.srt.layers.attention.attention_registry")

    def refuse(mr):
        raise ValueError("head_dim 96 is not supported")

    registry.ATTENTION_BACKENDS = {"fa3": refuse}
    monkeypatch.setitem(sys.modules, "sglang.srt.layers.attention.attention_registry", registry)
    mr = fake_runner(make_paged_pool([5, 40], 16, num_kv_heads=HK, head_dim=D), page_size=16)
    with caplog.at_level(logging.INFO, logger="kvprefetch"):
        be = backend_mod.create_backend(mr)
    assert be.prefill_backend == ("FLASHINFER", mr)
    assert "could not be built for the prefill half (ValueError: head_dim 96 is not supported)" in caplog.text
    assert "prefill: FlashInfer" in caplog.text  # the start-up line names the half that serves


def _decode_batch(pool, mode="DECODE"):
    bs = len(pool.seq_lens)
    return SimpleNamespace(forward_mode=FakeMode(mode), batch_size=bs, req_pool_indices=pool.req_pool_indices,
                           seq_lens=pool.seq_lens, seq_lens_sum=int(pool.seq_lens.sum()), seq_lens_cpu=None,
                           out_cache_loc=None)


@pytest.mark.parametrize("page_size", [1, 16])
def test_decode_role_eager_forward_matches_reference(patched, page_size):
    pool = make_paged_pool([5, 40, 17], page_size, num_kv_heads=HK, head_dim=D, seed=2)
    mr = fake_runner(pool, page_size=page_size, server=dict(attention_backend="fa3",
                                                             decode_attention_backend="kvprefetch"))
    dec = backend_mod.create_backend(mr)
    assert isinstance(dec, backend_mod.KvPrefetchDecodeBackend)  # SGLang composes the hybrid itself
    fb = _decode_batch(pool)
    # the new token of each request: the last slot of its sequence
    fb.out_cache_loc = torch.stack([pool.token_slots(b)[-1] for b in range(3)])
    dec.init_forward_metadata(fb)
    layer = mr.model[1]
    q = torch.randn(3, HQ * D).to(torch.bfloat16)
    k_new = torch.randn(3, HK, D).to(torch.bfloat16)
    v_new = torch.randn(3, HK, D).to(torch.bfloat16)
    out = dec.forward_decode(q, k_new, v_new, layer, fb)
    assert out.shape == (3, HQ * D) and out.dtype == torch.bfloat16
    # the new K/V went into layer 1's cache at out_cache_loc, and attention saw them
    assert mr.token_to_kv_pool.writes[-1][0] == 1
    ref_pool = SimpleNamespace(k=mr.token_to_kv_pool.k[1], v=mr.token_to_kv_pool.v[1],
                               token_slots=pool.token_slots)
    ref = dense_reference(ref_pool, q.view(3, HQ, D), layer.scaling)
    torch.testing.assert_close(out.view(3, HQ, D).float(), ref, rtol=2e-2, atol=2e-2)


def test_cuda_graph_hooks_plan_persistent_buffers(patched):
    pool = make_paged_pool([5, 40, 17], 16, num_kv_heads=HK, head_dim=D, seed=4)
    mr = fake_runner(pool, page_size=16)
    dec = backend_mod.create_backend(mr).decode_backend
    dec.init_cuda_graph_state(max_bs=4, max_num_tokens=4)
    rpi = torch.zeros(4, dtype=torch.int64)
    sl = torch.ones(4, dtype=torch.int64)
    rpi[:3], sl[:3] = pool.req_pool_indices, pool.seq_lens
    fb = SimpleNamespace(forward_mode=FakeMode("DECODE"), batch_size=4, req_pool_indices=rpi, seq_lens=sl,
                         seq_lens_sum=None, seq_lens_cpu=None)
    dec.init_forward_metadata_out_graph(fb, in_capture=True)
    dec.init_forward_metadata_in_graph(fb)
    w = FakeDecodeWrapper.instances[0]
    captured = [t.data_ptr() for t in w.plans[-1][:3]]
    fb.actual_forward_mode = FakeMode("IDLE")
    dec.init_forward_metadata_out_graph(fb)  # replay: same buffers
    assert [t.data_ptr() for t in w.plans[-1][:3]] == captured and w.plans[-1][3] == 4


def test_extend_batches_are_not_ours(patched):
    pool = make_paged_pool([5], 1, num_kv_heads=HK, head_dim=D)
    dec = backend_mod.create_backend(fake_runner(pool, page_size=1)).decode_backend
    with pytest.raises(NotImplementedError):
        dec.init_forward_metadata(_decode_batch(pool, mode="EXTEND"))
    with pytest.raises(NotImplementedError):
        dec.forward_extend(None, None, None, None, None)


def test_prefill_role_is_flashinfer(patched):
    pool = make_paged_pool([5], 1, num_kv_heads=HK, head_dim=D)
    mr = fake_runner(pool, page_size=1, server=dict(attention_backend="triton", prefill_attention_backend="kvprefetch"))
    assert backend_mod.create_backend(mr) == ("FLASHINFER", mr)


def test_disable_env_falls_back_to_triton(patched, monkeypatch, caplog):
    monkeypatch.setenv("KVPREFETCH_DISABLE", "1")
    pool = make_paged_pool([5], 1, num_kv_heads=HK, head_dim=D)
    mr = fake_runner(pool, page_size=1)
    with caplog.at_level(logging.WARNING, logger="kvprefetch"):
        assert backend_mod.create_backend(mr) == ("TRITON", mr)
    assert "KVPREFETCH_DISABLE=1" in caplog.text and not FakeDecodeWrapper.instances


def test_unsupported_gpu_falls_back_with_one_warning(patched, monkeypatch, caplog):
    monkeypatch.setattr(backend_mod, "_device_support", lambda d: (False, "NVIDIA A100 is sm_80"))
    pool = make_paged_pool([5], 1, num_kv_heads=HK, head_dim=D)
    mr = fake_runner(pool, page_size=1)
    with caplog.at_level(logging.WARNING, logger="kvprefetch"):
        assert backend_mod.create_backend(mr) == ("TRITON", mr)
        assert backend_mod.create_backend(mr) == ("TRITON", mr)  # a second backend (TBO, PD-mux)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "sm_80" in warnings[0].getMessage() and "Triton" in warnings[0].getMessage()


def test_kernel_build_failure_falls_back(patched, monkeypatch, caplog):
    class NoNvcc(FakeDecodeWrapper):
        def load(self):
            raise RuntimeError("nvcc was not found on PATH")

    monkeypatch.setattr(decoder_mod, "_default_wrapper_cls", lambda: NoNvcc)
    pool = make_paged_pool([5], 1, num_kv_heads=HK, head_dim=D)
    mr = fake_runner(pool, page_size=1)
    with caplog.at_level(logging.WARNING, logger="kvprefetch"):
        assert backend_mod.create_backend(mr) == ("TRITON", mr)
    assert "nvcc" in caplog.text and "Triton" in caplog.text


def test_fatal_refusal_raises_at_start_up(patched):
    pool = make_paged_pool([5], 1, num_kv_heads=HK, head_dim=D)
    mr = fake_runner(pool, page_size=1, server=dict(enable_dp_attention=True))
    with pytest.raises(ValueError, match="DP attention.*fa3, flashinfer or triton"):
        backend_mod.create_backend(mr)
    mr = fake_runner(pool, page_size=1, sliding_window_size=4096)
    with pytest.raises(ValueError, match="sliding-window"):
        backend_mod.create_backend(mr)


def test_invalid_prefetch_env_uses_kernel_default(patched, monkeypatch):
    monkeypatch.setenv("KVPREFETCH_PREFETCH_DISTANCE", "lots")
    pool = make_paged_pool([5], 1, num_kv_heads=HK, head_dim=D)
    backend_mod.create_backend(fake_runner(pool, page_size=1))
    (w,) = FakeDecodeWrapper.instances
    try:
        from kvprefetch.jit_kernels.decode import DEFAULT_PREFETCH_DISTANCE
    except Exception:
        DEFAULT_PREFETCH_DISTANCE = None
    assert w.prefetch_distance == DEFAULT_PREFETCH_DISTANCE
    monkeypatch.setenv("KVPREFETCH_PREFETCH_DISTANCE", "5")
    backend_mod.create_backend(fake_runner(pool, page_size=1))
    assert FakeDecodeWrapper.instances[-1].prefetch_distance == 5
