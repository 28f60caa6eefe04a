"""paged_read_bench.py on the CPU (arguments, the report), and the paged read kernels on an sm_90 GPU: both access
patterns read every byte of the batch exactly once."""
import pytest

import paged_read_bench as prb


def test_arguments_and_shapes():
    args = prb.parse_args(["--kv", "fp8_e4m3", "--shapes", "1x1K,16x1K", "--out", "x"])
    assert args.shape_list == [(1, 1024), (16, 1024)] and args.head_dim == 128 and args.page_size == 16
    with pytest.raises(SystemExit):
        prb.parse_args(["--head-dim", "256", "--out", "x"])


def test_report_gives_each_pattern_against_the_read_bound():
    doc = {"device": "NVIDIA H200", "commit": "abc", "config": {"page_size": 16, "kv": "fp8_e4m3", "head_dim": 128},
           "rows": [{"shape": "16x1024", "kv_mb": 32.0,
                     "us": {"read_bound": 9.4, "paged_read": 14.1, "paged_read_fused": 11.75, "kvprefetch": 19.4}}]}
    md = prb.render_md(doc)
    assert md.startswith("# Paged read bound (experiment 33) — NVIDIA H200")
    assert "| 16x1024 | 32.0 | 9.4 | 14.1 | 11.8 | 19.4 | 1.50 | 1.25 | 1.38 |" in md


@pytest.mark.gpu
@pytest.mark.parametrize("kv,d", [("bf16", 128), ("fp8_e4m3", 128), ("bf16", 64)])
def test_both_patterns_read_every_byte_once(kv, d):
    import torch

    import kernel_grid as kg
    import kernel_peers as kp
    import paged_read as pr

    dev = torch.device("cuda", torch.cuda.current_device())
    prob = kp.Problem(kg.Shape(3, 1000, 16, 32, 8, d, kv), 1, dev)
    pr.self_test(prob.k, prob.v, prob.kv_indptr, prob.kv_indices, 3, torch.cuda.get_device_properties(dev).multi_processor_count)
    prob.free()
