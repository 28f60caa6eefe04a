"""SGLang's own ServerArgs validation (its __post_init__ resolution passes, SGLang 0.5.17) accepts
'kvprefetch' for decode, alone or split with another prefill backend. Runs in a fresh process,
because building ServerArgs changes process-wide SGLang state.

On this CPU-only machine ServerArgs needs --device cpu; the attention-backend checks it runs are
the name-based ones, which do not depend on the device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sglang", reason="sglang is not installed (bash .ci/install.sh installs it)")
pytestmark = pytest.mark.sglang

# A Llama-shaped config: what ServerArgs reads from --model-path (no weights, no tokenizer needed).
LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_hidden_layers": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    model = tmp_path_factory.mktemp("llama")
    (model / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    base = ["--model-path", str(model), "--device", "cpu", "--skip-tokenizer-init"]
    cases = {
        "decode_split": base + ["--decode-attention-backend", "kvprefetch", "--prefill-attention-backend", "flashinfer"],
        "decode_over_base": base + ["--attention-backend", "flashinfer", "--decode-attention-backend", "kvprefetch"],
        "both": base + ["--attention-backend", "kvprefetch"],
        "page16": base + ["--attention-backend", "kvprefetch", "--page-size", "16"],
        "unknown": base + ["--decode-attention-backend", "no_such_backend"],
    }
    probe = Path(__file__).with_name("serverargs_probe.py")
    env = dict(os.environ, SGLANG_PLUGINS="kvprefetch")
    proc = subprocess.run(
        [sys.executable, str(probe), json.dumps(list(cases.values()))],
        capture_output=True, text=True, timeout=300, env=env,
    )
    lines = [l[len("RESULT "):] for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and len(lines) == len(cases), proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(zip(cases, map(json.loads, lines)))


def test_split_decode_kvprefetch_prefill_flashinfer(results):
    assert results["decode_split"] == {"ok": True, "prefill": "flashinfer", "decode": "kvprefetch", "page_size": 1}


def test_decode_override_over_base_backend(results):
    assert results["decode_over_base"]["ok"], results["decode_over_base"]
    assert (results["decode_over_base"]["prefill"], results["decode_over_base"]["decode"]) == ("flashinfer", "kvprefetch")


def test_kvprefetch_for_both_phases(results):
    assert results["both"] == {"ok": True, "prefill": "kvprefetch", "decode": "kvprefetch", "page_size": 1}


def test_page_size_is_left_as_given(results):
    assert results["page16"] == {"ok": True, "prefill": "kvprefetch", "decode": "kvprefetch", "page_size": 16}


def test_unknown_backend_refused(results):
    assert not results["unknown"]["ok"]
    assert "SystemExit" in results["unknown"]["error"]
