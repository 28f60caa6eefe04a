"""xlayer_bench.py on the CPU: arguments, the variant names and their parse, the sizes, the report."""
import pytest

import xlayer_bench as xb


def test_variants_round_trip_through_their_names():
    names = xb.variants([16, 64])
    assert names[0] == "weights" and names[1] == "baseline" and names[-1] == "attention"
    assert xb.parse_variant("touch_evict_last_p16") == {"touch": True, "bulk": False, "attention": True,
                                                         "weights": True, "policy": "evict_last", "programs": 16}
    assert xb.parse_variant("touch_normal_p64")["policy"] == ""
    assert xb.parse_variant("weights") == {"touch": False, "bulk": False, "attention": False, "weights": True}
    assert xb.parse_variant("attention") == {"touch": False, "bulk": False, "attention": True, "weights": False}
    assert sum(xb.parse_variant(n)["touch"] for n in names) == 4
    assert xb.parse_variant("bulk_evict_last_aside") == {"touch": False, "bulk": True, "attention": True,
                                                          "weights": True, "policy": "evict_last", "aside": True,
                                                          "side": False, "blocks": None}
    assert xb.parse_variant("bulk_normal") == {"touch": False, "bulk": True, "attention": True, "weights": True,
                                               "policy": "", "aside": False, "side": False, "blocks": None}
    spec = xb.parse_variant("bulk_evict_last_aside_side_b132")
    assert (spec["policy"], spec["aside"], spec["side"], spec["blocks"]) == ("evict_last", True, True, 132)
    assert [n for n in names if xb.parse_variant(n)["bulk"]] == list(xb.BULK)


def test_touch_variants_run_only_when_asked():
    assert not any(n.startswith("touch_") for n in xb.variants(xb.parse_args([]).programs))


def test_sizes_are_llama_3_1_8b_and_3_2_1b():
    m8, m1 = xb.MODELS["llama-3.1-8b"], xb.MODELS["llama-3.2-1b"]
    assert xb.weight_bytes_per_layer(m8) == 2 * (4096 * 6144 + 4096 * 4096 + 4096 * 28672 + 14336 * 4096)
    assert xb.kv_bytes_per_layer(m8, 8192) == 32 * 2**20  # K and V, 8 heads x 128, bf16
    assert xb.kv_bytes_per_layer(m1, 16384) == 32 * 2**20  # 8 heads x 64
    assert (m8.layers, m1.layers) == (32, 16)


def test_bad_arguments_name_the_flag():
    with pytest.raises(SystemExit):
        xb.parse_args(["--layers", "0"])
    with pytest.raises(SystemExit):
        xb.parse_args(["--programs", "0"])


def test_dry_run_needs_no_gpu(capsys):
    assert xb.main(["--dry-run", "--contexts", "8192", "--programs", "16"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b context 8192: weights 13.0 GiB + KV 1.00 GiB over 32 layers" in out
    assert "llama-3.2-1b context 8192: weights 1.8 GiB + KV 0.25 GiB over 16 layers" in out
    assert "touch_evict_last_p16" in out and "bulk_evict_last_aside" in out


def test_report_shows_the_attention_share_and_each_variants_gain():
    rows = [{"model": "llama-3.1-8b", "layers": 32, "context": 8192, "variant": v, "step_us": us}
            for v, us in (("weights", 6000.0), ("baseline", 6500.0), ("touch_evict_last_p16", 6400.0),
                          ("attention", 480.0))]
    doc = {"device": "NVIDIA H100 80GB HBM3", "commit": "abc", "dirty": False, "page_size": 16,
           "hbm_copy_gbps": 3000.0, "persisting_l2_max_bytes": 37.5 * 2**20, "rows": rows}
    md = xb.render_md(doc)
    assert md.startswith("# Cross-layer KV prefetch on a simulated decode step — NVIDIA H100 80GB HBM3")
    assert "| llama-3.1-8b × 32 | 8K | baseline | 6,500 | 500.0 |" in md and "at most 37.5 MiB" in md
    line = next(l for l in md.splitlines() if "touch_evict_last_p16" in l)
    assert "100.0" in line and "1.54" in line
