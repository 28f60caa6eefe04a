"""l2_retention.py on the CPU: the variant names, the arguments, the report."""
import pytest

import l2_retention as lr


def test_variant_names_parse():
    assert lr.parse_variant("none")["prefetch"] is False
    assert lr.parse_variant("evict_last_aside_b132") == {"prefetch": True, "evict_last": True, "aside": True,
                                                         "blocks": 132}
    assert lr.parse_variant("normal") == {"prefetch": True, "evict_last": False, "aside": False, "blocks": None}
    assert all(lr.parse_variant(v) for v in lr.VARIANTS)
    with pytest.raises(ValueError, match="variant: expected none or"):
        lr.parse_variant("evict_first")


def test_bad_arguments_exit():
    with pytest.raises(SystemExit):
        lr.parse_args(["--pools", "1"])
    with pytest.raises(SystemExit):
        lr.parse_args(["--weights-mb", "-1"])


def test_report_has_one_column_per_weight_size():
    doc = {"device": "NVIDIA H200", "commit": "abc", "dirty": False, "kv_bytes": 32 * 2**20, "context": 8192,
           "hkv": 8, "head_dim": 128, "page_size": 16, "persisting_l2_max_bytes": 37.5 * 2**20,
           "hbm_copy_gbps": 4250.0, "prefetch_kernel": [{"blocks": 8, "us_per_call": 30.0}],
           "rows": [{"variant": "none", "weights_mb": 0, "attention_us": 15.0},
                    {"variant": "none", "weights_mb": 256, "attention_us": 16.0},
                    {"variant": "evict_last_aside", "weights_mb": 256, "attention_us": 7.0}]}
    md = lr.render_md(doc)
    assert "| variant | W = 0 MB | W = 256 MB |" in md
    assert "| evict_last_aside | — | 7.0 |" in md and "8 blocks 30.0 µs" in md
