import pytest

import grid_targets as gt
import kernel_grid as kg
import kernel_rows as kr


def _rows(batch, ctx, page=16, **us):
    shape = kg.Shape(batch, ctx, page, 32, 8, 128, "bf16")
    return [kr.make_row(shape, "in_sequence", k, timing={"us": t, "us_p10": t, "us_p90": t, "samples": 3},
                        max_rel_err=None if k == "read_bound" else 1e-3) for k, t in us.items()]


def test_geomean_counts_only_shapes_up_to_256_mib_and_lists_the_shapes_behind():
    rows = (_rows(1, 1024, read_bound=2.0, kvprefetch=5.0, fa3=10.0)         # 4 MiB: 2.0x
            + _rows(8, 2048, read_bound=16.0, kvprefetch=20.0, fa3=20.0)     # 64 MiB: 1.0x
            + _rows(32, 16384, read_bound=470.0, kvprefetch=500.0, fa3=480.0)  # 2 GiB: 0.96x, not in the geomean
            + _rows(1, 1024, page=1, kvprefetch=5.0, fa3=5.0))               # its own group
    s = gt.summarize({"commit": "c" * 40, "device": "NVIDIA H200", "rows": kr.derive(rows)})
    page16 = next(x for x in s if x["page_size"] == 16)
    assert page16["geomean_kv_le_256mib"] == pytest.approx(2.0 ** 0.5) and page16["geomean_shapes"] == 2
    assert page16["under_0.98"] == ["32 × 16K 0.960 (fa3)"]
    assert page16["worst_over_read_bound"] == pytest.approx(2.5) and page16["worst_over_read_bound_shape"] == "1 × 1K"
    assert [x["page_size"] for x in s] == [1, 16] and "none" in gt.render_md(s)
