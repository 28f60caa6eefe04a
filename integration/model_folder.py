"""Write a model folder SGLang can serve without downloading anything.

    write_model_folder("/tmp/llama8b", shape="llama-3.1-8b", num_layers=4)
    python -m kvprefetch.integration.model_folder /tmp/llama8b --shape llama-3.1-8b --layers 4

A folder holds ``config.json`` (the real architecture's shapes), ``generation_config.json``
and a tiny byte-level BPE tokenizer trained on the spot with the ``tokenizers`` library
(SGLang loads a tokenizer even when the weights are fake). There are no weights unless
``weights="random"``: serve it with ``--load-format dummy`` (SGLang fills every parameter
uniformly in [-1e-3, 1e-3] from a fixed seed, so two servers get identical weights).

``weights="random"`` also writes ``model.safetensors`` with seeded, *well-scaled* random
weights (unit norms, projections large enough that attention is peaked and logits spread
over several nats). Dummy weights make every attention pattern near-uniform and every
next-token distribution near-flat, which hides attention bugs from an end-to-end
comparison; the GPU tests therefore use ``shape="tiny"`` with ``weights="random"``.

Shapes: ``llama-3.1-8b`` (default), ``llama-3.2-1b``, ``qwen2.5-7b`` and ``tiny`` (a
4-layer Llama with Llama-8B's head layout: head_dim 128, 4 query heads per KV head).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, Optional

_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

SHAPES: Dict[str, Dict[str, Any]] = {
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": dict(_LLAMA3_ROPE, factor=8.0),
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": dict(_LLAMA3_ROPE, factor=32.0),
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        # Qwen2.5 ships sliding_window=131072 with use_sliding_window=false; leave the window
        # out so no config reader can mistake it for sliding-window attention.
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": 28,
    },
    "tiny": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 1024,
        "intermediate_size": 2048,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "vocab_size": 8192,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
}

_COMMON = {
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}
_LLAMA_EXTRA = {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}

_SPECIALS = {
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
}

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 4,
    "Paged attention stores keys and values in fixed-size pages of a KV cache. " * 4,
    "Decode reads every cached key and value once per step; prefetching pages into L2 hides latency. " * 3,
    "def decode(q, k_cache, v_cache, page_table): return softmax(q @ k.T * scale) @ v\n" * 4,
    "Hello world! 0123456789 ,.;:?!'\"()[]{}<>+-*/=_ \n\t" * 4,
]


def model_config(shape: str = "llama-3.1-8b", num_layers: Optional[int] = None) -> Dict[str, Any]:
    """config.json contents for ``shape`` (no tokenizer ids yet)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    cfg = dict(SHAPES[shape])
    cfg.update(_COMMON)
    if cfg["model_type"] == "llama":
        cfg.update(_LLAMA_EXTRA)
    if num_layers is not None:
        if int(num_layers) < 1:
            raise ValueError("num_layers must be >= 1")
        cfg["num_hidden_layers"] = int(num_layers)
    if cfg.get("max_window_layers") is not None:
        cfg["max_window_layers"] = cfg["num_hidden_layers"]
    return cfg


def _train_tokenizer(specials, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok


def _cover_vocab(tok, vocab_size: int):
    """Give every id below ``vocab_size`` a vocabulary entry (`` tok<id>``), so every token the model can emit
    decodes to text. SGLang's bench_serving takes the first non-empty text chunk as the first token: ids the
    tokenizer does not know decode to "", leave the request's TTFT at 0 and fold the prefill into its TPOT."""
    from tokenizers import Tokenizer

    doc = json.loads(tok.to_str())
    vocab = doc["model"]["vocab"]
    used = set(vocab.values()) | {a["id"] for a in doc["added_tokens"]}
    for tid in range(vocab_size):
        if tid not in used:
            vocab[f"\u0120tok{tid}"] = tid  # "Ġ" is the byte-level space: decodes to " tok<id>"
    return Tokenizer.from_str(json.dumps(doc))


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_random_weights(path: str, cfg: Dict[str, Any], seed: int = 0) -> str:
    """Seeded, well-scaled random bf16 weights for a Llama/Qwen2 config -> model.safetensors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    nq, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    vocab = cfg["vocab_size"]

    def normal(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    # q/k std 0.06: q.k/sqrt(d) has a spread of about 0.06^2 * hidden (3.7 logits at hidden
    # 1024: attention clearly peaked but still mixing many positions); the rest is sized so the residual stream stays O(1) through the layers and
    # the final logits spread over a few nats.
    w: Dict[str, Any] = {
        "model.embed_tokens.weight": normal(vocab, h, std=1.0),
        "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
    }
    if not cfg.get("tie_word_embeddings", False):
        w["lm_head.weight"] = normal(vocab, h, std=0.1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        w[p + "self_attn.q_proj.weight"] = normal(nq * d, h, std=0.06)
        w[p + "self_attn.k_proj.weight"] = normal(nkv * d, h, std=0.06)
        w[p + "self_attn.v_proj.weight"] = normal(nkv * d, h, std=h ** -0.5)
        w[p + "self_attn.o_proj.weight"] = normal(h, nq * d, std=(nq * d) ** -0.5)
        if cfg["model_type"] == "qwen2":
            w[p + "self_attn.q_proj.bias"] = torch.zeros(nq * d, dtype=torch.bfloat16)
            w[p + "self_attn.k_proj.bias"] = torch.zeros(nkv * d, dtype=torch.bfloat16)
            w[p + "self_attn.v_proj.bias"] = torch.zeros(nkv * d, dtype=torch.bfloat16)
        w[p + "mlp.gate_proj.weight"] = normal(inter, h, std=h ** -0.5)
        w[p + "mlp.up_proj.weight"] = normal(inter, h, std=h ** -0.5)
        w[p + "mlp.down_proj.weight"] = normal(h, inter, std=inter ** -0.5)
    out = os.path.join(path, "model.safetensors")
    try:
        from safetensors.torch import save_file

        save_file(w, out, metadata={"format": "pt"})
    except ImportError:  # no safetensors: a torch checkpoint SGLang also loads
        out = os.path.join(path, "pytorch_model.bin")
        torch.save(w, out)
    return out


def write_model_folder(
    path: str,
    shape: str = "llama-3.1-8b",
    num_layers: Optional[int] = None,
    *,
    weights: str = "none",
    tokenizer_vocab: int = 1000,
    seed: int = 0,
) -> Dict[str, Any]:
    """Write the folder; returns the config written. ``weights``: "none" (serve with
    --load-format dummy) or "random" (seeded well-scaled weights, for the tiny shape)."""
    if weights not in ("none", "random"):
        raise ValueError('weights must be "none" or "random"')
    cfg = model_config(shape, num_layers)
    os.makedirs(path, exist_ok=True)

    specials = _SPECIALS[cfg["model_type"]]
    tok = _cover_vocab(_train_tokenizer(specials, min(tokenizer_vocab, cfg["vocab_size"])), cfg["vocab_size"])
    tok.save(os.path.join(path, "tokenizer.json"))
    if cfg["model_type"] == "llama":
        bos_tok, eos_tok = specials[0], specials[1]
    else:  # Qwen2: no BOS in use, <|endoftext|> ends text
        bos_tok, eos_tok = specials[0], specials[0]
    pad_tok = specials[3]
    bos, eos = tok.token_to_id(bos_tok), tok.token_to_id(eos_tok)
    _write_json(
        os.path.join(path, "tokenizer_config.json"),
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos_tok,
            "eos_token": eos_tok,
            "pad_token": pad_tok,
            "model_max_length": cfg["max_position_embeddings"],
            "add_bos_token": False,
            "clean_up_tokenization_spaces": False,
        },
    )
    _write_json(
        os.path.join(path, "special_tokens_map.json"),
        {"bos_token": bos_tok, "eos_token": eos_tok, "pad_token": pad_tok},
    )

    cfg["bos_token_id"] = bos
    cfg["eos_token_id"] = eos
    _write_json(os.path.join(path, "config.json"), cfg)
    _write_json(
        os.path.join(path, "generation_config.json"),
        {"bos_token_id": bos, "eos_token_id": eos, "do_sample": False},
    )
    if weights == "random":
        write_random_weights(path, cfg, seed=seed)
    return cfg


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=None, help="num_hidden_layers (default: the shape's)")
    ap.add_argument("--weights", default="none", choices=["none", "random"])
    args = ap.parse_args(argv)
    cfg = write_model_folder(args.path, args.shape, args.layers, weights=args.weights)
    print(f"wrote {args.path}: {cfg['architectures'][0]} ({args.shape}), {cfg['num_hidden_layers']} layers, "
          f"weights={args.weights}")


if __name__ == "__main__":
    main()
