import importlib.util
import json
import re
from pathlib import Path

import pytest

import soak_plan as sp


def test_bucket_plan_totals_and_lengths():
    plan = sp.plan_rounds()
    t = sp.totals(plan, "llama-3.2-1b")
    assert t["requests"] == sum(r.num_prompts for r in plan) >= 2000
    assert t["min_input"] == 1 and t["max_input"] == 32768
    for r in plan:
        lo, hi = r.input_range()
        assert 1 <= lo <= hi <= 32768
        olo, ohi = r.output_range()
        assert 1 <= olo <= ohi <= 64
    # skewed short: most requests are under 1K, the total prefill stays a few million tokens
    short = sum(r.num_prompts for r in plan if r.input_range()[1] <= 1024)
    assert short > 0.6 * t["requests"]
    assert 1e6 < t["prefill_tokens"] < 6e6
    # every bucket appears, some rounds carry aborts, ids and seeds are unique
    assert {r.bucket for r in plan} == {b.name for b in sp.BUCKETS}
    assert {r.bucket for r in plan if r.abort} == {b.name for b in sp.BUCKETS}
    assert len({r.id for r in plan}) == len(plan) and len({r.seed for r in plan}) == len(plan)


def test_rounds_interleave_buckets():
    plan = sp.plan_rounds()
    first = [r.bucket for r in plan[:len(sp.BUCKETS)]]
    assert first == [b.name for b in sp.BUCKETS]
    # a prefix of the plan already covers every length bucket
    assert {r.bucket for r in plan[:5]} == {b.name for b in sp.BUCKETS}


def test_request_rate_only_on_rounds_without_aborts():
    for r in sp.plan_rounds():
        if r.abort:
            assert r.request_rate is None
    assert any(r.request_rate for r in sp.plan_rounds())


def test_scale_and_seed():
    small = sp.plan_rounds(scale=0.01)
    assert all(r.num_prompts >= 1 for r in small)
    assert [r.seed for r in sp.plan_rounds(seed=7)][:3] == [7, 8, 9]


def test_warmup_covers_longest_input_and_widest_batch():
    w = sp.plan_warmup()
    assert all(r.kind == "warmup" and not r.abort for r in w)
    assert max(r.input_range()[1] for r in w) == 32768
    assert w[0].input_range() == (32768, 32768)
    assert max(r.max_concurrency for r in w) == max(b.concurrency for b in sp.BUCKETS)
    assert sp.max_concurrency(sp.plan_rounds() + w) == 64


def test_bench_argv():
    r = next(r for r in sp.plan_rounds() if r.request_rate)
    argv = sp.bench_argv(r, "/m", 31000, "/o.jsonl")
    get = lambda k: argv[argv.index(k) + 1]  # noqa: E731
    assert get("--dataset-name") == "random-ids" and "--tokenize-prompt" in argv and "--output-details" in argv
    assert int(get("--num-prompts")) == r.num_prompts and get("--warmup-requests") == "0"
    assert float(get("--random-range-ratio")) == r.range_ratio and int(get("--seed")) == r.seed
    assert float(get("--request-rate")) == r.request_rate and get("--output-file") == "/o.jsonl"
    assert "--disable-ignore-eos" not in argv   # ignore_eos: a request that is not aborted has its full length
    r2 = next(r for r in sp.plan_rounds() if r.abort)
    assert "--request-rate" not in sp.bench_argv(r2, "/m", 1, "/o")


def _sglang_file(rel):
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sglang not installed")
    p = Path(list(spec.submodule_search_locations)[0]) / rel
    if not p.exists():
        pytest.skip(f"{rel} not in this sglang")
    return p.read_text()


def test_bench_argv_flags_exist_in_bench_serving():
    src = _sglang_file("benchmark/serving.py")
    r = next(r for r in sp.plan_rounds() if r.request_rate)
    for flag in (a for a in sp.bench_argv(r, "/m", 1, "/o") if a.startswith("--")):
        assert f'"{flag}"' in src, flag


def test_server_flags_exist_in_server_args():
    import soak_request_log as srl
    src = _sglang_file("srt/server_args.py")
    flags = [a for a in srl.server_flags(Path("/x")) if a.startswith("--")]
    flags += ["--cuda-graph-max-bs-decode", "--cuda-graph-backend-prefill", "--mem-fraction-static"]
    for flag in flags:
        assert re.search(rf"^\s+{flag[2:].replace('-', '_')}: ", src, re.M), flag


def test_estimate_and_calls():
    plan = sp.plan_rounds()
    est = [sp.estimate_round_s(r, "llama-3.2-1b") for r in plan]
    assert all(e > sp.CLIENT_OVERHEAD_S for e in est)
    long = next(r for r in plan if r.bucket == "xlong")
    tiny = next(r for r in plan if r.bucket == "tiny")
    assert sp.estimate_round_s(long, "llama-3.2-1b") > sp.estimate_round_s(tiny, "llama-3.2-1b")
    assert sp.estimate_round_s(tiny, "llama-3.1-8b") > sp.estimate_round_s(tiny, "llama-3.2-1b")
    # the whole soak fits one or two 8-minute calls on the 1B shape
    assert len(sp.pack_shards(est, 480.0, 140.0, 50.0)) <= 2
    assert sum(sp.pack_shards(est, 300.0, 140.0, 50.0)) == len(plan)


def test_pack_shards_rule():
    # after 50 s of start-up and 3 rounds of 10 s, 20 s are left: 10 s of reserve + 1.5 x 10 s do not fit
    assert sp.pack_shards([10, 10, 10, 10], 100, 50, 10) == [3, 1]
    assert sp.pack_shards([35], 100, 50, 10) == [1]                   # the first round needs only 1.0x
    with pytest.raises(ValueError):
        sp.pack_shards([45], 100, 50, 10)
    assert sp.fits(10, 25, 10, first=True) and not sp.fits(10, 24, 10, first=False)


def test_signature_survives_json():
    sig = sp.plan_signature(sp.plan_rounds(), "llama-3.2-1b", {"lens": [1, 2]})
    assert json.loads(json.dumps(sig)) == sig
    assert sp.plan_signature(sp.plan_rounds(seed=2), "llama-3.2-1b", {"lens": [1, 2]}) != sig
