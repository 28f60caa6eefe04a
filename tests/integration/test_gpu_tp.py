"""GPU: tensor parallelism (--tp-size 2, two GPUs): each rank runs kvprefetch on its half of the heads (4 q / 1 kv
head of the tiny model), and the logprobs match FlashInfer's at TP 2 within the tolerance calibrated on SGLang's own
Triton-vs-FlashInfer spread at TP 2 (see test_gpu_engine.py for why that tolerance)."""

import pytest

from gpu_engine_runs import assert_kvprefetch_served, assert_matches_flashinfer, run_engine
from kvp_integration_helpers import SM90_REASON, cuda_device_count, is_sm90

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not is_sm90(), reason=SM90_REASON),
    pytest.mark.skipif(cuda_device_count() < 2, reason="tensor parallelism needs 2 GPUs (an nvidia-h100-x2 host)"),
]


def test_tp2_logprobs_match_flashinfer(tiny_model, tmp_path_factory):
    tmp = str(tmp_path_factory.getbasetemp())
    got, log = run_engine(tiny_model, tmp, attention_backend="kvprefetch", tp_size=2)
    assert_kvprefetch_served(log)
    ready = [line for line in log.splitlines() if "kvprefetch decode backend ready" in line]
    assert len(ready) >= 2 and all("4q/1kv heads x d128" in line for line in ready), ready  # one per rank
    print(f"tp2: {assert_matches_flashinfer(tiny_model, tmp, got, tp_size=2)}")
