import math

import pytest

import kernel_grid as kg
import kernel_rows as kr

SHAPE = kg.Shape(8, 2048, 16, 32, 8, 128, "bf16")
OTHER = kg.Shape(1, 1024, 16, 32, 8, 128, "bf16")


def t(us):
    return {"us": us, "us_p10": us * 0.9, "us_p90": us * 1.1, "samples": 10}


def rows_for(shape, l2="in_sequence", hbm=3000.0, **us):
    out = []
    for k, v in us.items():
        if v is None:
            out.append(kr.make_row(shape, l2, k, skipped="ImportError: nope", hbm_copy_gbps=hbm))
        elif isinstance(v, tuple):
            out.append(kr.make_row(shape, l2, k, timing=t(v[0]), max_rel_err=v[1], hbm_copy_gbps=hbm))
        else:
            out.append(kr.make_row(shape, l2, k, timing=t(v), max_rel_err=1e-3 if k != "read_bound" else None,
                                   hbm_copy_gbps=hbm, prefetch_distance=2 if k == "kvprefetch" else None))
    return out


def test_make_row_schema():
    r = kr.make_row(SHAPE, "cold", "kvprefetch", timing=t(10.0), layers=32, cold_sets=2, max_rel_err=1e-3,
                    prefetch_distance=2, hbm_copy_gbps=3000.0)
    assert set(kr.ROW_FIELDS) == set(r)
    assert r["l2"] == "cold" and r["batch"] == 8 and r["ctx"] == 2048 and r["kv_dtype"] == "bf16"
    assert r["correct"] is True and r["skipped"] is None and r["prefetch_distance"] == 2
    assert r["bytes"] == SHAPE.total_bytes
    rb = kr.make_row(SHAPE, "cold", "read_bound", timing=t(9.0))
    assert rb["bytes"] == SHAPE.pool_bytes and rb["correct"] is None
    bad = kr.make_row(SHAPE, "cold", "xqa", timing=t(9.0), max_rel_err=0.05)
    assert bad["correct"] is False
    s = kr.make_row(SHAPE, "cold", "fa3", skipped="FA3 not importable")
    assert s["us"] is None and s["skipped"] == "FA3 not importable" and not kr.ran(s)
    with pytest.raises(ValueError):
        kr.make_row(SHAPE, "cold", "fa3")


def test_summarize():
    s = kr.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["us"] == 3.0 and s["samples"] == 5 and s["us_p10"] == pytest.approx(1.4) and s["us_p90"] == pytest.approx(4.6)
    assert kr.summarize([2.0])["us_p90"] == 2.0
    with pytest.raises(ValueError):
        kr.summarize([])


def test_derive_speedups_and_best_peer():
    rows = rows_for(SHAPE, read_bound=8.0, kvprefetch=10.0, kvprefetch_d0=11.0, flashinfer_cc=15.0,
                    flashinfer_tc=12.0, xqa=(9.0, 0.5), fa3=None, sglang_triton=20.0)
    d = {r["kernel"]: r for r in kr.derive(rows)}
    kv = d["kvprefetch"]
    # xqa is the fastest peer; it failed the correctness guard but stays the bar (flagged)
    assert kv["best_peer"] == "xqa" and kv["best_peer_flagged"] is True
    assert kv["speedup_over_best_peer"] == pytest.approx(0.9)
    assert kv["speedup_over"] == pytest.approx({"flashinfer_cc": 1.5, "flashinfer_tc": 1.2, "xqa": 0.9,
                                                "sglang_triton": 2.0})
    assert "kvprefetch_d0" not in kv["speedup_over"] and "read_bound" not in kv["speedup_over"]
    assert kv["us_over_read_bound"] == pytest.approx(10 / 8)
    assert kv["gbps"] == pytest.approx(SHAPE.total_bytes / 10e-6 / 1e9)
    assert kv["pct_hbm"] == pytest.approx(100 * kv["gbps"] / 3000.0)
    assert d["read_bound"]["speedup_over"] == {} and d["read_bound"]["us_over_read_bound"] == pytest.approx(1.0)
    assert d["xqa"]["speedup_over_best_peer"] is None      # it is the best peer
    assert d["flashinfer_cc"]["speedup_over_best_peer"] == pytest.approx(9 / 15)
    ok = {r["kernel"]: r for r in kr.derive(rows_for(SHAPE, kvprefetch=10.0, flashinfer_tc=12.0))}
    assert ok["kvprefetch"]["best_peer"] == "flashinfer_tc" and ok["kvprefetch"]["best_peer_flagged"] is False
    assert d["fa3"]["gbps"] is None and d["fa3"]["skipped"]


def test_derive_groups_by_shape_and_regime():
    rows = (rows_for(SHAPE, "in_sequence", kvprefetch=10.0, flashinfer_cc=20.0)
            + rows_for(SHAPE, "cold", kvprefetch=10.0, flashinfer_cc=12.0)
            + rows_for(OTHER, "cold", kvprefetch=4.0, flashinfer_cc=5.0, hbm=2000.0))
    d = {(r["l2"], r["batch"], r["kernel"]): r for r in kr.derive(rows)}
    assert d[("in_sequence", 8, "kvprefetch")]["speedup_over_best_peer"] == pytest.approx(2.0)
    assert d[("cold", 8, "kvprefetch")]["speedup_over_best_peer"] == pytest.approx(1.2)
    assert d[("cold", 1, "kvprefetch")]["speedup_over_best_peer"] == pytest.approx(1.25)
    # the row's own measured copy bandwidth is used
    r = d[("cold", 1, "kvprefetch")]
    assert r["pct_hbm"] == pytest.approx(100 * r["gbps"] / 2000.0)
    assert d[("cold", 1, "kvprefetch")]["us_over_read_bound"] is None    # no read_bound row there


def test_derive_no_peers_and_fallback_hbm():
    rows = [kr.make_row(SHAPE, "cold", "kvprefetch", timing=t(10.0), max_rel_err=0.0)]
    (r,) = kr.derive(rows, hbm_copy_gbps=2500.0)
    assert r["best_peer"] is None and r["speedup_over_best_peer"] is None and r["speedup_over"] == {}
    assert r["pct_hbm"] == pytest.approx(100 * r["gbps"] / 2500.0)


def test_derive_is_idempotent_and_pure():
    rows = rows_for(SHAPE, kvprefetch=10.0, flashinfer_cc=15.0)
    once = kr.derive(rows)
    assert kr.derive(once) == once
    assert rows[0]["gbps"] is None      # input not modified


def test_row_key_distinguishes_regime_shape_kernel():
    a = kr.make_row(SHAPE, "cold", "fa3", skipped="x")
    b = kr.make_row(SHAPE, "in_sequence", "fa3", skipped="x")
    c = kr.make_row(OTHER, "cold", "fa3", skipped="x")
    d = kr.make_row(SHAPE, "cold", "xqa", skipped="x")
    assert len({kr.row_key(x) for x in (a, b, c, d)}) == 4


def test_summary_by_regime():
    rows = kr.derive(rows_for(SHAPE, "cold", kvprefetch=10.0, flashinfer_cc=20.0)
                     + rows_for(OTHER, "cold", kvprefetch=10.0, flashinfer_cc=5.0)
                     + rows_for(SHAPE, "in_sequence", kvprefetch=10.0, flashinfer_cc=None))
    s = kr.summary_by_regime(rows)
    assert s["cold"]["shapes"] == 2 and s["cold"]["compared"] == 2 and s["cold"]["wins"] == 1
    assert s["cold"]["geomean_speedup_over_best_peer"] == pytest.approx(math.sqrt(2.0 * 0.5))
    assert s["in_sequence"]["compared"] == 0 and s["in_sequence"]["geomean_speedup_over_best_peer"] is None


def test_stage_variants_are_ours_not_peers():
    import kernel_rows as kr

    assert not kr.is_peer("kvprefetch_s6") and not kr.is_peer("kvprefetch_d0") and kr.is_peer("fa3")
