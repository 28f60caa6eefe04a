import pytest

import serving_rows as sr


def bench_result(tok, tpot, p99=None, ttft=100.0, completed=16):
    return {"output_throughput": tok, "median_tpot_ms": tpot, "p99_tpot_ms": p99 or tpot * 1.2,
            "median_ttft_ms": ttft, "completed": completed, "duration": 10.0, "mean_tpot_ms": tpot}


SRV = sr.Server("llama-3.1-8b", "kvprefetch", 1, "bf16")
W = sr.Workload(8192, 256, 8)


def test_default_workloads_and_models():
    ws = sr.parse_workloads(None)
    assert [(w.input_len, w.output_len, w.max_concurrency) for w in ws] == [
        (8192, 256, 1), (8192, 256, 8), (16384, 256, 1), (16384, 256, 8), (1024, 128, 64)]
    assert sr.MODELS == ("llama-3.1-8b", "llama-3.2-1b")
    assert sr.BACKENDS == ("kvprefetch", "fa3", "flashinfer", "triton")


def test_parse_workloads():
    assert sr.parse_workloads("8K:256:1, 1024:128:64") == [sr.Workload(8192, 256, 1), sr.Workload(1024, 128, 64)]
    assert sr.parse_workloads("16k:1k:8") == [sr.Workload(16384, 1024, 8)]
    for bad in ("8K:256", "0:1:1", "a:b:c"):
        with pytest.raises(ValueError):
            sr.parse_workloads(bad)


def test_num_prompts():
    assert sr.num_prompts_for(sr.Workload(8192, 256, 1)) == 16
    assert sr.num_prompts_for(sr.Workload(8192, 256, 8)) == 16
    assert sr.num_prompts_for(sr.Workload(1024, 128, 64)) == 128
    assert sr.num_prompts_for(sr.Workload(1024, 128, 64), override=32) == 32


def test_plan_servers_and_shards():
    servers = sr.plan_servers(sr.MODELS, sr.BACKENDS, 1, "bf16")
    assert len(servers) == 8 and servers[0] == sr.Server("llama-3.1-8b", "kvprefetch", 1, "bf16")
    shards = [sr.plan_servers(sr.MODELS, sr.BACKENDS, 1, "bf16", (i, 3)) for i in range(3)]
    assert sorted((s for sh in shards for s in sh), key=servers.index) == servers
    assert not set(shards[0]) & set(shards[1])
    assert sr.parse_shard("2/4") == (2, 4) and sr.parse_shard(None) == (0, 1)
    with pytest.raises(ValueError):
        sr.plan_servers(sr.MODELS, sr.BACKENDS, 1, "bf16", (3, 3))


def test_make_row_aggregates_repeats():
    runs = [bench_result(100.0, 10.0, ttft=50), bench_result(110.0, 9.0, ttft=70), bench_result(90.0, 11.0, ttft=60)]
    r = sr.make_row(SRV, W, 16, runs, attention_backend="kvprefetch")
    assert set(sr.ROW_FIELDS) <= set(r)
    assert r["output_tok_s"] == 100.0 and r["output_tok_s_min"] == 90.0 and r["output_tok_s_max"] == 110.0
    assert r["tpot_ms_p50"] == 10.0 and r["tpot_ms_p99"] == pytest.approx(12.0) and r["ttft_ms_p50"] == 60
    assert r["tpot_spread"] == pytest.approx(0.2) and r["output_tok_s_spread"] == pytest.approx(0.2)
    assert r["repeats"] == 3 and r["num_prompts"] == 16 and r["completed"] == 16 and r["note"] is None
    assert (r["model"], r["backend"], r["page_size"], r["kv_dtype"], r["input_len"], r["output_len"],
            r["max_concurrency"]) == ("llama-3.1-8b", "kvprefetch", 1, "bf16", 8192, 256, 8)
    assert len(r["runs"]) == 3 and r["runs"][0]["output_throughput"] == 100.0
    short = sr.make_row(SRV, W, 16, [bench_result(1.0, 1.0, completed=12)])
    assert "12/16" in short["note"] and short["tpot_spread"] == 0.0
    sk = sr.make_row(SRV, W, 16, [], skipped="server failed to start")
    assert sk["skipped"] and sk["output_tok_s"] is None
    with pytest.raises(ValueError):
        sr.make_row(SRV, W, 16, [])


def test_resume_done_and_pending():
    ws = sr.parse_workloads(None)
    rows = [sr.make_row(SRV, ws[0], 16, [bench_result(1, 1)]),
            sr.make_row(SRV, ws[1], 16, [], skipped="crashed")]
    done = sr.done_points(rows)
    assert sr.pending(SRV, ws, done) == ws[1:]          # skipped rows are retried
    other = sr.Server("llama-3.1-8b", "fa3", 1, "bf16")
    assert sr.pending(other, ws, done) == ws
    assert sr.pending(sr.Server("llama-3.1-8b", "kvprefetch", 16, "bf16"), ws, done) == ws   # other page size


def test_derive_speedups():
    rows = []
    for b, tok in (("kvprefetch", 120.0), ("fa3", 100.0), ("flashinfer", 110.0), ("triton", None)):
        srv = sr.Server("llama-3.1-8b", b, 1, "bf16")
        rows.append(sr.make_row(srv, W, 16, [bench_result(tok, 1.0)]) if tok else
                    sr.make_row(srv, W, 16, [], skipped="x"))
    rows.append(sr.make_row(sr.Server("llama-3.2-1b", "fa3", 1, "bf16"), W, 16, [bench_result(999.0, 1.0)]))
    d = {(r["model"], r["backend"]): r for r in sr.derive(rows)}
    kv = d[("llama-3.1-8b", "kvprefetch")]
    assert kv["speedup_vs_fa3"] == pytest.approx(1.2)
    assert kv["best_other"] == "flashinfer" and kv["speedup_vs_best_other"] == pytest.approx(120 / 110)
    fa3 = d[("llama-3.1-8b", "fa3")]
    assert fa3["speedup_vs_fa3"] is None and fa3["best_other"] == "kvprefetch"
    assert d[("llama-3.1-8b", "triton")]["speedup_vs_best_other"] is None
    lone = d[("llama-3.2-1b", "fa3")]
    assert lone["best_other"] is None and lone["speedup_vs_fa3"] is None
    assert kv["beyond_spread"] is True  # one run each: spread 0, so any difference counts


def test_derive_difference_within_the_spread_ranks_nothing():
    a = sr.make_row(sr.Server("llama-3.2-1b", "kvprefetch", 1, "bf16"), W, 16,
                    [bench_result(t, 1.0) for t in (100.0, 107.0, 130.0)])   # spread 30 / 107
    b = sr.make_row(sr.Server("llama-3.2-1b", "fa3", 1, "bf16"), W, 16,
                    [bench_result(t, 1.0) for t in (99.0, 100.0, 101.0)])
    d = {r["backend"]: r for r in sr.derive([a, b])}
    assert d["kvprefetch"]["speedup_vs_best_other"] == pytest.approx(1.07)
    assert d["kvprefetch"]["beyond_spread"] is False and d["fa3"]["beyond_spread"] is False


def test_estimates_are_plausible():
    ws = sr.parse_workloads(None)
    est8 = sr.estimate_server_s(sr.Server("llama-3.1-8b", "fa3", 1, "bf16"), ws, 3)
    est1 = sr.estimate_server_s(sr.Server("llama-3.2-1b", "fa3", 1, "bf16"), ws, 3)
    assert 300 < est8 < 1200 and est1 < est8
    assert sr.estimate_point_s("llama-3.1-8b", ws[0], 16, 3) > sr.estimate_point_s("llama-3.1-8b", ws[0], 16, 1)


def test_runs_without_first_token_time_are_left_out_of_tpot_and_ttft():
    """bench_serving repeats in one process reported TTFT 0 and folded prefill into TPOT (H100, b06f672)."""
    import serving_rows as sr

    runs = [dict(output_throughput=131.7, median_tpot_ms=6.79, p99_tpot_ms=7.67, median_ttft_ms=222.0,
                 median_itl_ms=6.704, completed=16),
            dict(output_throughput=131.1, median_tpot_ms=7.60, p99_tpot_ms=7.76, median_ttft_ms=0.0,
                 median_itl_ms=6.705, completed=16)]
    r = sr.aggregate({}, runs, 16)
    assert r["tpot_ms_p50"] == 6.79 and r["ttft_ms_p50"] == 222.0
    assert r["itl_ms_p50"] == (6.704 + 6.705) / 2
    assert "1 of 2 runs" in r["note"]


def test_unbounded_workload_parses_labels_and_sends_every_prompt_at_once(tmp_path):
    import serving_bench as sb

    (w,) = sr.parse_workloads("1K:128:U")
    assert w.max_concurrency == sr.UNBOUNDED and w.label() == "1K in / 128 out, conc unbounded"
    assert sr.num_prompts_for(w) == sr.UNBOUNDED_PROMPTS
    assert sr.estimate_point_s("qwen2.5-7b", w, sr.UNBOUNDED_PROMPTS, 3) > 0
    argv = sb.client_argv(w, tmp_path, 1, sr.UNBOUNDED_PROMPTS, 1, tmp_path / "o.jsonl", 0)
    assert argv[argv.index("--max-concurrency") + 1] == str(sr.UNBOUNDED_PROMPTS)


def test_large_sweep_defaults():
    import serving_bench as sb

    args = sb.parse_args(["--large"])
    assert args.models == list(sr.LARGE_MODELS)
    assert [(w.input_len, w.max_concurrency) for w in args.workload_list] == [(32768, 1), (32768, 8), (1024, 0)]
    assert sb.parse_args([]).models == list(sr.MODELS)
