import json

import pytest

import soak_plan as sp
import soak_state as st

PLAN = sp.plan_rounds(scale=0.05)
SIG = sp.plan_signature(PLAN, "llama-3.2-1b", {"lens": [1, 7]})


def rec(rid, sent=10, completed=10, aborted=0, failed=0, **kw):
    r = {"id": rid, "kind": "soak", "sent": sent, "completed": completed, "aborted": aborted, "failed": failed,
         "input_range": [1, 128], "prompt_tokens": 100, "abort_calls": []}
    r.update(kw)
    return r


def roundtrip(x):
    return json.loads(json.dumps(x))


def test_new_state_pending_and_record():
    s = roundtrip(st.new_state(SIG))
    assert st.signature_mismatch(s, SIG) is None
    assert [r.id for r in st.pending(PLAN, s)] == [r.id for r in PLAN]
    st.record_round(s, rec(PLAN[0].id, failed=1, completed=9))
    st.record_round(s, rec(PLAN[2].id))
    st.record_round(s, rec(PLAN[0].id))           # same id again: replaced, not added
    assert len(s["rounds"]) == 2 and s["rounds"][0]["failed"] == 0
    assert [r.id for r in st.pending(PLAN, s)] == [r.id for r in PLAN if r.id not in (PLAN[0].id, PLAN[2].id)]


def test_signature_mismatch():
    s = roundtrip(st.new_state(SIG))
    other = sp.plan_signature(sp.plan_rounds(scale=0.1), "llama-3.2-1b", {"lens": [1, 7]})
    assert "rounds" in st.signature_mismatch(s, other)
    assert "model" in st.signature_mismatch(s, dict(SIG, model="llama-3.1-8b"))
    assert "version" in st.signature_mismatch({"kind": "x"}, SIG)


def test_shards_and_merge():
    a = st.new_state(SIG)
    sa = st.new_shard(a, {"started": "2026-11-27T10:00:00"})
    sa["probes"].append({"when": "before", "outputs": [{"output_ids": [1]}], "diffs": []})
    a["probe_reference"] = {"shard": 0, "started": "2026-11-27T10:00:00", "outputs": [{"output_ids": [1]}]}
    st.record_round(a, rec(PLAN[0].id))
    b = roundtrip(a)                                   # the copy a second call resumed from
    sb_ = st.new_shard(b, {"started": "2026-11-27T11:00:00"})
    assert sb_["shard"] == 1
    st.record_round(b, rec(PLAN[1].id, aborted=3, completed=7))
    st.record_round(a, rec(PLAN[2].id))                # meanwhile the first copy went on too
    m = st.merge_states(a, b)
    assert [r["id"] for r in m["rounds"]] == [PLAN[0].id, PLAN[2].id, PLAN[1].id]
    assert [s["started"] for s in m["shards"]] == ["2026-11-27T10:00:00", "2026-11-27T11:00:00"]
    assert m["probe_reference"]["started"] == "2026-11-27T10:00:00"
    assert st.merge_states(m, m)["rounds"] == m["rounds"]
    with pytest.raises(ValueError):
        st.merge_states(a, st.new_state(dict(SIG, model="other")))


def test_mem_growth():
    samples = [{"after": "warmup", "mib": 60000}, {"after": "round:a", "mib": 60100},
               {"after": "round:b", "mib": 60050}, {"after": "end", "mib": None}]
    assert st.mem_growth(samples) == {"baseline_mib": 60000, "growth_mb": 100, "final_growth_mb": 50}
    assert st.mem_growth([{"after": "warmup", "mib": 5}]) == {"baseline_mib": 5, "growth_mb": 0,
                                                              "final_growth_mb": 0}
    assert st.mem_growth([{"after": "round:a", "mib": 5}])["growth_mb"] is None


def test_summary():
    s = st.new_state(SIG)
    sh0 = st.new_shard(s, {"started": "t0", "device": "NVIDIA H100 80GB HBM3"})
    sh0["warmup"].append({"failed": 0})
    sh0["probes"] = [{"when": "before", "outputs": [{"output_ids": [1]}], "diffs": []},
                     {"when": "after", "outputs": [{"output_ids": [1]}], "diffs": []}]
    sh0["mem"] = {"growth_mb": 12, "final_growth_mb": 4}
    sh1 = st.new_shard(s, {"started": "t1", "device": "NVIDIA H100 80GB HBM3"})
    sh1["probes"] = [{"when": "before", "outputs": [{"error": "HTTP 0: refused"}],
                      "diffs": [{"probe": 0, "why": "error: HTTP 0: refused"}]}]
    sh1["mem"] = {"growth_mb": 30, "final_growth_mb": 0}
    st.record_round(s, rec(PLAN[0].id, sent=10, completed=6, aborted=4))
    st.record_round(s, rec(PLAN[1].id, sent=20, completed=19, failed=1, input_range=[4096, 16384]))
    doc = st.summary(roundtrip(s), [r.id for r in PLAN], {"device": "NVIDIA H100 80GB HBM3", "commit": "abc"})
    assert doc["commit"] == "abc" and doc["devices"] == ["NVIDIA H100 80GB HBM3"]
    assert (doc["soak_requests"], doc["soak_completed"], doc["soak_aborted"]) == (30, 25, 4)
    assert doc["failed_requests"] == 1 + 1          # the failed soak request + the probe that errored
    assert doc["gpu_mem_growth_mb"] == 30 and doc["gpu_mem_final_growth_mb"] == 4
    assert doc["probe_identical"] is False and doc["probe_passes"] == 3
    assert doc["probe_diffs"] == [{"shard": 1, "when": "before", "diffs": [{"probe": 0,
                                                                              "why": "error: HTTP 0: refused"}]}]
    assert doc["input_len_range"] == [1, 16384]
    assert doc["rounds_done"] == 2 and doc["rounds_planned"] == len(PLAN) and doc["complete"] is False
    assert "outputs" not in doc["shards"][0]["probes"][0]     # the ids stay in the state file only
    assert len(doc["rounds"]) == 2 and len(doc["shards"]) == 2
    empty = st.summary(st.new_state(SIG), [r.id for r in PLAN], {})
    assert empty["probe_identical"] is None and empty["gpu_mem_growth_mb"] is None and empty["soak_requests"] == 0
