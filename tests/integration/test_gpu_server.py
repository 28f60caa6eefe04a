"""GPU: a launched server (``python -m sglang.launch_server ... --attention-backend kvprefetch``) answers /generate
and /v1/completions with greedy sampling, and its log carries the kvprefetch start-up line (configuration, modules
and where each came from, start-up seconds, workspace)."""

import json
import os
import re

import pytest

from gpu_server import launched_server, post
from kvp_integration_helpers import SM90_REASON, is_sm90

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not is_sm90(), reason=SM90_REASON)]

MAX_TOKENS = 16
READY = re.compile(
    r"kvprefetch decode backend ready \(prefill: (FA3|FlashInfer)\): 8q/2kv heads x d128 over 4 layers.*"
    r"prefetch_distance=.*modules: kvprefetch_decode_\S+ \((prebuilt|JIT cache|compiled|rebuilt), [\d.]+ s\); "
    r"start-up [\d.]+ s \(kernel modules [\d.]+ s, page-table kernel [\d.]+ s\); workspace [\d.]+ MiB")


@pytest.fixture(scope="module")
def tiny_dummy(tmp_path_factory):
    """The tiny Llama served with --load-format dummy, its vocabulary cut to the tokenizer's so that every token
    the model can produce decodes to text (the built-in tokenizer knows a few hundred of the 8192 ids)."""
    pytest.importorskip("sglang")
    from tokenizers import Tokenizer

    from kvprefetch.integration.model_folder import write_model_folder

    path = str(tmp_path_factory.mktemp("models") / "tiny-dummy")
    write_model_folder(path, "tiny")
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["vocab_size"] = Tokenizer.from_file(os.path.join(path, "tokenizer.json")).get_vocab_size()
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def test_server_answers_generate_and_completions(tiny_dummy, tmp_path):
    log_path = str(tmp_path / "server.log")
    args = ["--load-format", "dummy", "--attention-backend", "kvprefetch", "--mem-fraction-static", "0.5",
            "--cuda-graph-max-bs-decode", "8", "--cuda-graph-backend-prefill", "disabled", "--log-level", "info"]
    prompt = "Paged attention stores keys and values in"
    with launched_server(tiny_dummy, args, log_path) as url:
        gen = post(f"{url}/generate", {"text": prompt, "sampling_params": {
            "temperature": 0, "max_new_tokens": MAX_TOKENS, "ignore_eos": True, "skip_special_tokens": False}})
        comp = post(f"{url}/v1/completions", {
            "model": tiny_dummy, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True,
            "skip_special_tokens": False})
    with open(log_path, errors="replace") as f:
        log = f.read()
    ready = [line for line in log.splitlines() if "kvprefetch decode backend ready" in line]
    print("\n".join(ready))
    assert gen["meta_info"]["completion_tokens"] == MAX_TOKENS and gen["text"], gen
    choice = comp["choices"][0]
    assert comp["usage"]["completion_tokens"] == MAX_TOKENS and choice["text"], comp
    assert choice["finish_reason"] == "length", comp
    assert len(ready) == 1 and READY.search(ready[0]), ready or log[-4000:]
    assert "CUDA-graph decode metadata" in log and "falling back to SGLang's Triton" not in log
