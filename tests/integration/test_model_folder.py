"""The model-folder writer (integration/model_folder.py)."""

import json
import os

import pytest

from kvprefetch.integration.model_folder import SHAPES, model_config, write_model_folder, write_random_weights


def test_llama_31_8b_shape():
    c = model_config("llama-3.1-8b")
    assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama"
    assert (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]) == (4096, 14336, 32)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (32, 8, 128)
    assert c["vocab_size"] == 128256 and c["max_position_embeddings"] == 131072
    assert c["rope_theta"] == 500000.0
    assert c["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert c["tie_word_embeddings"] is False and c["torch_dtype"] == "bfloat16" and c["rms_norm_eps"] == 1e-5


def test_llama_32_1b_shape():
    c = model_config("llama-3.2-1b")
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
            c["head_dim"], c["intermediate_size"], c["vocab_size"]) == (16, 2048, 32, 8, 64, 8192, 128256)
    assert c["tie_word_embeddings"] is True
    assert c["rope_scaling"]["factor"] == 32.0


def test_qwen25_7b_shape():
    c = model_config("qwen2.5-7b")
    assert c["architectures"] == ["Qwen2ForCausalLM"] and c["model_type"] == "qwen2"
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
            c["head_dim"], c["intermediate_size"], c["vocab_size"]) == (28, 3584, 28, 4, 128, 18944, 152064)
    assert c["hidden_size"] == c["num_attention_heads"] * c["head_dim"]
    assert c["use_sliding_window"] is False and c["sliding_window"] is None  # no SWA detected
    assert "attention_bias" not in c  # Qwen2 always has qkv bias; the key is Llama's


def test_num_layers_override_and_errors():
    assert model_config("llama-3.1-8b", num_layers=4)["num_hidden_layers"] == 4
    q = model_config("qwen2.5-7b", num_layers=2)
    assert q["num_hidden_layers"] == 2 and q["max_window_layers"] == 2
    with pytest.raises(ValueError):
        model_config("gpt-2")
    with pytest.raises(ValueError):
        model_config("tiny", num_layers=0)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_is_served_by_the_kernel(shape):
    """head_dim in 64/128/256 and group size 1..16: the kvprefetch decode kernel supports it."""
    c = model_config(shape)
    assert c["head_dim"] in (64, 128, 256)
    g = c["num_attention_heads"] // c["num_key_value_heads"]
    assert c["num_attention_heads"] % c["num_key_value_heads"] == 0 and 1 <= g <= 16


@pytest.mark.parametrize("shape,layers", [("llama-3.1-8b", 4), ("tiny", None), ("qwen2.5-7b", 2), ("llama-3.2-1b", None)])
def test_write_folder_and_load_tokenizer(tmp_path, shape, layers):
    tokenizers = pytest.importorskip("tokenizers")
    out = tmp_path / shape
    cfg = write_model_folder(str(out), shape, layers)
    names = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= names
    assert not any(n.endswith((".safetensors", ".bin")) for n in names)  # --load-format dummy
    on_disk = json.loads((out / "config.json").read_text())
    assert on_disk == cfg
    assert on_disk["num_hidden_layers"] == (layers or SHAPES[shape]["num_hidden_layers"])

    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "Paged attention over a KV cache: def decode(q, k, v) 0123"
    ids = tok.encode(text).ids
    assert ids and max(ids) < cfg["vocab_size"]
    assert tok.decode(ids) == text  # byte-level BPE round-trips
    assert tok.get_vocab_size() == cfg["vocab_size"]  # every id the model can emit decodes to text
    assert all(tok.decode([i]).strip() for i in (cfg["vocab_size"] - 1, cfg["vocab_size"] // 2))
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tok.token_to_id(tc["eos_token"]) == cfg["eos_token_id"]
    assert tok.token_to_id(tc["bos_token"]) == cfg["bos_token_id"]
    assert tok.token_to_id(tc["pad_token"]) is not None
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"]


def _load(path):
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path)


def test_random_weights_names_and_shapes(tmp_path):
    torch = pytest.importorskip("torch")
    cfg = dict(model_config("tiny", num_layers=2), hidden_size=256, intermediate_size=512,
               num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=300)
    path = write_random_weights(str(tmp_path), cfg, seed=1)
    w = _load(path)
    assert w["model.embed_tokens.weight"].shape == (300, 256)
    assert w["lm_head.weight"].shape == (300, 256)
    assert w["model.layers.1.self_attn.q_proj.weight"].shape == (256, 256)
    assert w["model.layers.1.self_attn.k_proj.weight"].shape == (128, 256)
    assert w["model.layers.0.mlp.down_proj.weight"].shape == (256, 512)
    assert torch.equal(w["model.norm.weight"], torch.ones(256, dtype=torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for t in w.values())
    assert len([k for k in w if k.startswith("model.layers.")]) == 2 * 9
    os.makedirs(tmp_path / "again")
    w2 = _load(write_random_weights(str(tmp_path / "again"), cfg, seed=1))  # seeded: identical
    assert torch.equal(w["model.layers.0.self_attn.q_proj.weight"], w2["model.layers.0.self_attn.q_proj.weight"])


def test_qwen_random_weights_include_qkv_bias(tmp_path):
    pytest.importorskip("torch")
    cfg = dict(model_config("qwen2.5-7b", num_layers=1), hidden_size=128, intermediate_size=256,
               num_attention_heads=2, num_key_value_heads=1, head_dim=64, vocab_size=100)
    path = write_random_weights(str(tmp_path), cfg)
    w = _load(path)
    assert w["model.layers.0.self_attn.k_proj.bias"].shape == (64,)
    assert "model.layers.0.self_attn.o_proj.bias" not in w


def test_cli(tmp_path):
    pytest.importorskip("tokenizers")
    from kvprefetch.integration.model_folder import main

    main([str(tmp_path / "m"), "--shape", "tiny", "--layers", "2"])
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_hidden_layers"] == 2
