"""Start-up refusals (integration/refusal.py) and role resolution (integration/roles.py),
fed with fake ModelRunner / ServerArgs objects shaped like SGLang 0.5.17's."""

from types import SimpleNamespace

import pytest

from kvprefetch.integration.refusal import (
    KvPrefetchUnsupportedError,
    LayerInfo,
    check,
    collect_context,
    format_refusals,
    layer_info_from_module,
    raise_if_fatal,
)
from kvprefetch.integration.roles import resolve_role, resolved_backends


def llama_layers(n=4, q=32, kv=8, d=128, **kw):
    return [LayerInfo(layer_id=i, num_qo_heads=q, num_kv_heads=kv, head_dim=d, v_head_dim=d, **kw) for i in range(n)]


def fake_runner(server=None, model=None, **runner):
    server_args = dict(
        attention_backend="kvprefetch", prefill_attention_backend=None, decode_attention_backend=None,
        speculative_algorithm=None, enable_dp_attention=False, enable_deterministic_inference=False,
        dllm_algorithm=None, enable_unified_memory=False, enable_page_major_kv_layout=False, dcp_size=1,
        kv_cache_dtype="auto", page_size=1,
    )
    server_args.update(server or {})
    model_config = dict(has_attention_sinks=False, is_encoder_decoder=False, is_hybrid_swa=False,
                        attention_arch="AttentionArch.MHA")
    model_config.update(model or {})
    fields = dict(use_mla_backend=False, sliding_window_size=None, is_draft_worker=False, is_hybrid_swa=False,
                  dtype="torch.bfloat16", kv_cache_dtype="torch.bfloat16", page_size=server_args["page_size"])
    fields.update(runner)
    return SimpleNamespace(server_args=SimpleNamespace(**server_args),
                           model_config=SimpleNamespace(**model_config), **fields)


def codes(runner, layers=None, environ=None, **kw):
    ctx = collect_context(runner, role="full", layers=llama_layers() if layers is None else layers,
                          environ=environ or {}, **kw)
    return [r.code for r in check(ctx)]


def test_llama_bf16_is_accepted():
    assert codes(fake_runner()) == []


def test_fp8_kv_and_pages_accepted():
    for p in (1, 16, 64, 128):
        r = fake_runner(server=dict(kv_cache_dtype="fp8_e4m3", page_size=p), kv_cache_dtype="torch.float8_e4m3fn")
        assert codes(r) == [], p


def test_tensor_parallel_head_split_and_group_sizes_accepted():
    # Llama-8B on TP 2: 16 q / 4 kv heads per rank; group 7 (e.g. 28 q / 4 kv) and 16 too.
    assert codes(fake_runner(), llama_layers(q=16, kv=4)) == []
    assert codes(fake_runner(), llama_layers(q=28, kv=4)) == []
    assert codes(fake_runner(), llama_layers(q=16, kv=1, d=64)) == []
    assert codes(fake_runner(), llama_layers(q=8, kv=8, d=256)) == []


def test_logit_soft_cap_tanh_is_accepted():
    assert codes(fake_runner(), llama_layers(logit_cap=30.0)) == []


@pytest.mark.parametrize("runner_kw,expected,alternative", [
    (dict(runner=dict(use_mla_backend=True)), "mla", "fa3"),
    (dict(model=dict(has_attention_sinks=True)), "attention_sinks", "triton"),
    (dict(model=dict(is_encoder_decoder=True)), "cross_attention", "flashinfer"),
    (dict(runner=dict(sliding_window_size=4096)), "sliding_window", "flashinfer"),
    (dict(runner=dict(is_hybrid_swa=True)), "sliding_window", "fa3"),
    (dict(server=dict(speculative_algorithm="EAGLE")), "speculative", "flashinfer"),
    (dict(runner=dict(is_draft_worker=True)), "speculative", "triton"),
    (dict(server=dict(enable_dp_attention=True)), "dp_attention", "fa3"),
    (dict(server=dict(enable_deterministic_inference=True)), "deterministic", "flashinfer"),
    (dict(server=dict(dllm_algorithm="LowConfidence")), "dllm", "triton"),
    (dict(server=dict(enable_unified_memory=True)), "kv_layout", "triton"),
    (dict(server=dict(dcp_size=2)), "dcp", "triton"),
    (dict(runner=dict(dtype="torch.float32", kv_cache_dtype="torch.float32")), "model_dtype", "flashinfer"),
    (dict(server=dict(kv_cache_dtype="fp8_e5m2"), runner=dict(kv_cache_dtype="torch.float8_e5m2")),
     "kv_cache_dtype", "triton"),
    (dict(server=dict(kv_cache_dtype="fp4_mx_block16"), runner=dict(kv_cache_dtype="torch.uint8")),
     "kv_cache_dtype", "flashinfer"),
    (dict(server=dict(page_size=24)), "page_size", "flashinfer"),
    (dict(server=dict(page_size=256)), "page_size", "triton"),
])
def test_fatal_refusals_name_alternatives(runner_kw, expected, alternative):
    r = fake_runner(server=runner_kw.get("server"), model=runner_kw.get("model"), **runner_kw.get("runner", {}))
    ctx = collect_context(r, role="full", layers=llama_layers(), environ={})
    refusals = check(ctx)
    assert expected in [x.code for x in refusals]
    hit = next(x for x in refusals if x.code == expected)
    assert hit.fatal
    assert alternative in hit.alternatives
    with pytest.raises(KvPrefetchUnsupportedError) as e:
        raise_if_fatal(refusals)
    assert isinstance(e.value, ValueError)
    assert "kvprefetch" in str(e.value) and alternative in str(e.value)


def test_hnd_layout_env_refused():
    assert "kv_layout_hnd" in codes(fake_runner(), environ={"SGLANG_USE_HND_KVCACHE": "1"})
    assert codes(fake_runner(), environ={"SGLANG_USE_HND_KVCACHE": "0"}) == []


@pytest.mark.parametrize("layer_kw,expected", [
    (dict(d=96), "head_shape"),
    (dict(q=32, kv=1), "head_shape"),  # group 32 > 16
    (dict(q=10, kv=4), "head_shape"),  # not a divisor
])
def test_shape_refusals(layer_kw, expected):
    assert expected in codes(fake_runner(), llama_layers(**layer_kw))


def test_per_layer_refusals():
    sw = llama_layers(2) + [LayerInfo(2, 32, 8, 128, 128, sliding_window_size=1024)]
    assert "sliding_window" in codes(fake_runner(), sw)
    xattn = llama_layers(2) + [LayerInfo(2, 32, 8, 128, 128, is_cross_attention=True)]
    assert "cross_attention" in codes(fake_runner(), xattn)
    mla_like = [LayerInfo(0, 16, 16, 128, 64)]
    assert "v_head_dim" in codes(fake_runner(), mla_like)
    capped = [LayerInfo(0, 32, 8, 128, 128, logit_cap=30.0, logit_capping_method="relu")]
    assert "logit_cap_method" in codes(fake_runner(), capped)


def test_wrong_gpu_is_not_fatal_and_says_what_is_missing():
    ctx = collect_context(fake_runner(), role="full", layers=llama_layers(), environ={},
                          device_supported=False, device_reason="NVIDIA A100 is sm_80")
    refusals = check(ctx)
    assert [r.code for r in refusals] == ["device"]
    assert not refusals[0].fatal
    assert "sm_90" in refusals[0].message and "sm_80" in refusals[0].message
    assert raise_if_fatal(refusals) == refusals  # returned, not raised
    assert "triton" in format_refusals(refusals)


def test_several_refusals_reported_together():
    r = fake_runner(server=dict(enable_dp_attention=True, speculative_algorithm="EAGLE"), use_mla_backend=True)
    with pytest.raises(KvPrefetchUnsupportedError) as e:
        raise_if_fatal(check(collect_context(r, role="full", layers=[], environ={})))
    text = str(e.value)
    assert "MLA" in text and "DP attention" in text and "speculative" in text


def test_layer_info_from_radix_attention_like_module():
    m = SimpleNamespace(layer_id=3, tp_q_head_num=16, tp_k_head_num=4, head_dim=128, v_head_dim=128,
                        sliding_window_size=-1, is_cross_attention=False, logit_cap=0.0,
                        logit_capping_method="tanh")
    info = layer_info_from_module(m)
    assert info.shape == (16, 4, 128) and info.layer_id == 3 and info.sliding_window_size == -1
    m2 = SimpleNamespace(layer_id=0, tp_q_head_num=8, tp_k_head_num=8, head_dim=64, v_head_dim=-1,
                         sliding_window_size=None)
    assert layer_info_from_module(m2).v_head_dim == 64


def _server(attention=None, prefill=None, decode=None, with_getter=True):
    ns = SimpleNamespace(attention_backend=attention, prefill_attention_backend=prefill,
                         decode_attention_backend=decode)
    if with_getter:  # ServerArgs.get_attention_backends as in 0.5.17
        ns.get_attention_backends = lambda: (prefill or attention, decode or attention)
    return ns


@pytest.mark.parametrize("with_getter", [True, False])
def test_roles(with_getter):
    assert resolve_role(_server("kvprefetch", with_getter=with_getter)) == "full"
    assert resolve_role(_server("fa3", decode="kvprefetch", with_getter=with_getter)) == "decode"
    assert resolve_role(_server("kvprefetch", prefill="fa3", with_getter=with_getter)) == "decode"
    assert resolve_role(_server(None, prefill="flashinfer", decode="kvprefetch", with_getter=with_getter)) == "decode"
    assert resolve_role(_server("fa3", prefill="kvprefetch", with_getter=with_getter)) == "prefill"
    assert resolve_role(_server(None, prefill="kvprefetch", decode="kvprefetch", with_getter=with_getter)) == "full"
    assert resolved_backends(_server("fa3", decode="kvprefetch", with_getter=with_getter)) == ("fa3", "kvprefetch")
