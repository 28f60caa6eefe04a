"""timeline_stats on a CPU: experiment 18's block-timeline records parsed and reduced to per-launch phases."""
import timeline_stats as ts


def record(t, kind, smid=0, n_act=2, ntiles=4, block=0, launch=1):
    meta = smid | (kind << 16) | (n_act << 24) | (ntiles << 40)
    return list(t) + [meta, block, launch, 0]


def buffer(records, capacity=None):
    cap = capacity if capacity is not None else len(records)
    words = [len(records)] + [0] * (ts.HEADER_WORDS - 1)
    for r in records[:cap]:
        words += r
    return words + [0] * (ts.RECORD_WORDS * (cap - min(cap, len(records))))


def two_launches():
    a = [record([1000, 1500, 3000, 9000, 9500, 9500], 1, smid=0, launch=7),
         record([1100, 1600, 3200, 10000, 10400, 12000], 2, smid=1, launch=7),
         record([1200, 1700, 1700, 1700, 1700, 1700], 3, smid=1, launch=7)]
    b = [record([t + 13000 for t in r[:6]], (r[6] >> 16) & 0xFF, smid=r[6] & 0xFFFF, launch=9) for r in a]
    return a + b


def test_parse_reads_fields_and_respects_capacity():
    recs = ts.parse(buffer(two_launches()))
    assert len(recs) == 6 and recs[1]["kind"] == 2 and recs[1]["smid"] == 1 and recs[0]["n_act"] == 2
    assert recs[0]["ntiles"] == 4 and recs[3]["launch"] == 9
    assert len(ts.parse(buffer(two_launches(), capacity=4))) == 4  # the count may exceed what the buffer holds


def test_phases_per_launch_and_medians():
    s = ts.summarize(ts.parse(buffer(two_launches())))
    assert s["launches"] == 2
    first, second = s["per_launch"]
    assert first["span"] == 11.0 and first["active"] == 2 and first["idle"] == 1
    assert first["first_tile_max"] == 2.2 and first["loop_end_max"] == 9.0 and first["merge_p50"] == 1.6
    assert first["active_per_sm_max"] == 1 and first["sms_used"] == 2 and first["sms_doubled"] == 0
    assert second["gap_before"] == 2.0  # launch 2 starts 14000, launch 1 ended 12000
    assert s["median"]["gap_before"] == 2.0 and s["timer_step_ns"] == 100
    assert "| 1x16384 |" in ts.markdown([{"shape": "1x16384", "us_per_layer": 33.0, "us_per_layer_trace": 33.5,
                                          "summary": s}])
