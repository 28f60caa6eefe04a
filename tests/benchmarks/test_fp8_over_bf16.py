import pytest

import fp8_over_bf16 as fb
import kernel_grid as kg
import kernel_rows as kr


def _row(batch, ctx, kv, kernel, us, err=1e-3):
    timing = {"us": us, "us_p10": us, "us_p90": us, "samples": 3}
    return kr.make_row(kg.Shape(batch, ctx, 16, 32, 8, 128, kv), "in_sequence", kernel, timing=timing,
                       max_rel_err=err)


def test_ratio_uses_the_fastest_correct_bf16_peer_and_marks_the_half_gb_shapes():
    fp8 = {"device": "NVIDIA H200", "commit": "f" * 40,
           "rows": [_row(1, 1024, "fp8_e4m3", "kvprefetch", 5.0), _row(1, 1024, "fp8_e4m3", "xqa", 6.0),
                    _row(32, 4096, "fp8_e4m3", "kvprefetch", 60.0)]}
    bf16 = {"device": "NVIDIA H200", "commit": "b" * 40, "rows": []}
    for batch, ctx, fa3 in ((1, 1024, 9.0), (32, 4096, 120.0)):
        bf16["rows"] += [_row(batch, ctx, "bf16", "fa3", fa3),
                         _row(batch, ctx, "bf16", "xqa", 1.0, err=0.5),  # wrong: must not count as the best peer
                         _row(batch, ctx, "bf16", "kvprefetch", 0.1)]  # ours: not a peer
    rows = fb.compare(fp8, bf16)
    assert [(r["batch"], r["best_bf16_peer"], r["target_shape"]) for r in rows] == [(1, "fa3", False),
                                                                                    (32, "fa3", True)]
    assert rows[1]["fp8_over_best_bf16_peer"] == pytest.approx(2.0)
    md = fb.render_md({"device": "NVIDIA H200", "fp8_commit": "f" * 40, "bf16_commit": "b" * 40, "rows": rows})
    assert "different commits" in md and "2.00×" in md


def test_files_from_two_cards_are_refused():
    with pytest.raises(ValueError, match="one card"):
        fb.compare({"device": "NVIDIA H200", "rows": []}, {"device": "NVIDIA H100 80GB HBM3", "rows": []})
