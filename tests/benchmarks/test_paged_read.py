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


def test_ceiling_takes_the_faster_paged_read_and_counts_small_shapes_only():
    import paged_read_ceiling as prc

    def krow(b, c, kernel, us, best=None):
        return {"l2": "in_sequence", "batch": b, "ctx": c, "kernel": kernel, "us": us, "best_peer": best}

    kdoc = {"device": "NVIDIA H200", "commit": "abc", "hbm_copy_gbps": 4257.0,
            "rows": [krow(1, 1024, "kvprefetch", 8.0, "xqa"), krow(1, 1024, "xqa", 6.0),
                     krow(32, 16384, "kvprefetch", 300.0, "fa3"), krow(32, 16384, "fa3", 310.0)]}
    pdoc = {"commit": "abc", "config": {"page_size": 16, "kv": "fp8_e4m3", "head_dim": 128},
            "rows": [{"batch": 1, "ctx": 1024, "kv_mb": 2.0,
                      "us": {"read_bound": 2.0, "paged_read": 3.0, "paged_read_fused": 4.0, "kvprefetch": 8.0}},
                     {"batch": 32, "ctx": 16384, "kv_mb": 1024.0,
                      "us": {"read_bound": 238.0, "paged_read": 317.0, "paged_read_fused": 250.0, "kvprefetch": 300.0}}]}
    res = prc.ceiling(kdoc, pdoc)
    assert [r["floor_us"] for r in res["rows"]] == [3.0, 250.0]
    assert res["shapes"] == 1 and res["geomean_ceiling"] == pytest.approx(2.0) and res["geomean_ours"] == pytest.approx(0.75)
    md = prc.render_md(res, kdoc, pdoc)
    assert "ceiling **2.000×**, kvprefetch **0.750×**" in md and "1,024 (not counted)" in md
