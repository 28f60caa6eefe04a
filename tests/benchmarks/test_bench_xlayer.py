"""xlayer_bench.py on the CPU: arguments, the variant names and their parse, the sizes, the report."""
import pytest

import xlayer_bench as xb


def test_variants_round_trip_through_their_names():
    names = xb.variants([16, 64])
    assert names[0] == "weights" and names[1] == "baseline" and names[-1] == "attention"
    assert xb.parse_variant("touch_evict_last_p16") == {"touch": True, "attention": True, "weights": True,
                                                         "policy": "evict_last", "programs": 16}
    assert xb.parse_variant("touch_normal_p64")["policy"] == ""
    assert xb.parse_variant("weights") == {"touch": False, "attention": False, "weights": True}
    assert xb.parse_variant("attention") == {"touch": False, "attention": True, "weights": False}
    assert sum(xb.parse_variant(n)["touch"] for n in names) == 4


def test_sizes_are_llama_3_1_8b():
    assert xb.weight_bytes_per_layer() == 2 * (4096 * 6144 + 4096 * 4096 + 4096 * 28672 + 14336 * 4096)
    assert xb.kv_bytes_per_layer(8192) == 32 * 2**20  # K and V, 8 heads x 128, bf16


def test_bad_arguments_name_the_flag():
    with pytest.raises(SystemExit):
        xb.parse_args(["--layers", "0"])
    with pytest.raises(SystemExit):
        xb.parse_args(["--programs", "0"])


def test_dry_run_needs_no_gpu(capsys):
    assert xb.main(["--dry-run", "--contexts", "8192", "--layers", "32"]) == 0
    out = capsys.readouterr().out
    assert "weights 13.0 GiB + KV 1.00 GiB over 32 layers" in out and "touch_evict_last_p16" in out


def test_report_shows_the_attention_share_and_each_variants_gain():
    rows = [{"context": 8192, "variant": v, "step_us": us}
            for v, us in (("weights", 6000.0), ("baseline", 6500.0), ("touch_evict_last_p16", 6400.0),
                          ("attention", 480.0))]
    doc = {"device": "NVIDIA H100 80GB HBM3", "commit": "abc", "dirty": False, "layers": 32, "page_size": 16,
           "hbm_copy_gbps": 3000.0, "rows": rows}
    md = xb.render_md(doc)
    assert md.startswith("# Cross-layer KV prefetch on a simulated decode step — NVIDIA H100 80GB HBM3")
    assert "| 8K | baseline | 6,500 | 500.0 |" in md
    line = next(l for l in md.splitlines() if "touch_evict_last_p16" in l)
    assert "100.0" in line and "1.54" in line
