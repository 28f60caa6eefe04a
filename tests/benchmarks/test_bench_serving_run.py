"""serving_bench on a CPU: the command lines it builds and run() end to end with fake servers: rows, skips,
resume, the kvprefetch fall-back guard, the deadline (its processes: test_serving_procs.py)."""
import json

import pytest

import results_io as rio
import serving_bench as sb
import serving_rows as sr
from fake_serving import StubDriver, StubServer


def parse(*argv):
    return sb.parse_args(list(argv))


# ------------------------------------------------------------------ command lines

def test_server_cmd_flags(tmp_path):
    args = parse("--page-size", "16", "--server-args=--enable-foo --bar 3")
    cmd = sb.server_cmd(sr.Server("llama-3.1-8b", "kvprefetch", 16, "bf16"), tmp_path, 31000, args)
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    s = " ".join(cmd)
    for flag in ("--load-format dummy", "--attention-backend kvprefetch", "--port 31000", "--host 127.0.0.1",
                 "--mem-fraction-static 0.8", "--cuda-graph-max-bs-decode 64", "--cuda-graph-backend-prefill disabled",
                 "--disable-radix-cache", "--page-size 16", "--kv-cache-dtype auto", f"--model-path {tmp_path}"):
        assert flag in s, flag
    assert cmd[-3:] == ["--enable-foo", "--bar", "3"]
    args = parse("--backend-name", "kvprefetch=kvp2", "--workloads", "1K:16:4")
    cmd = " ".join(sb.server_cmd(sr.Server("m", "kvprefetch", 1, "bf16"), tmp_path, 1, args))
    assert "--attention-backend kvp2" in cmd and "--cuda-graph-max-bs-decode 8" in cmd


def test_client_argv_flags(tmp_path):
    argv = sb.client_argv(sr.Workload(8192, 256, 8), tmp_path, 31000, 16, 7, tmp_path / "o.jsonl", 1)
    s = " ".join(argv)
    for flag in ("--backend sglang", "--dataset-name random-ids", "--random-input-len 8192",
                 "--random-output-len 256", "--random-range-ratio 1.0", "--tokenize-prompt", "--num-prompts 16",
                 "--max-concurrency 8", "--seed 7", f"--tokenizer {tmp_path}", f"--model {tmp_path}",
                 "--port 31000", "--warmup-requests 1", f"--output-file {tmp_path / 'o.jsonl'}"):
        assert flag in s, flag


def test_cli_validation():
    with pytest.raises(SystemExit):
        parse("--backends", "nope")
    with pytest.raises(SystemExit):
        parse("--models", "llama-70b")
    a = parse("--backends", "mine", "--backend-name", "mine=my_attn", "--shard", "1/2", "--workloads", "1K:8:2")
    assert a.backend_args == {"mine": "my_attn"} and a.shard_tuple == (1, 2)
    assert a.workload_list == [sr.Workload(1024, 8, 2)]


# ------------------------------------------------------------------ run() with fake servers

class FakeServer(StubServer):
    started = []
    fallback_for = set()

    def __init__(self, cmd, port, log_path, env=None):
        super().__init__(cmd, port, log_path, env)
        self.backend = cmd[cmd.index("--attention-backend") + 1]

    def start(self):
        FakeServer.started.append(self.backend)

    def log_text(self):
        return "-> falling back to SGLang's Triton attention backend" if self.backend in self.fallback_for else ""


class FakeDriver(StubDriver):
    def run(self, argv, timeout_s):
        get = lambda k: argv[argv.index(k) + 1]  # noqa: E731
        with open(get("--output-file"), "a") as f:
            f.write(json.dumps({"output_throughput": 1000.0 / int(get("--random-input-len")) * 8192,
                                "median_tpot_ms": 7.0, "p99_tpot_ms": 8.0, "median_ttft_ms": 400.0,
                                "completed": int(get("--num-prompts"))}) + "\n")
        return True, ""


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    FakeServer.started = []
    FakeServer.fallback_for = set()
    monkeypatch.setattr(sb, "ServerProcess", FakeServer)
    monkeypatch.setattr(sb, "ClientDriver", FakeDriver)
    monkeypatch.setattr(sb, "gpu_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(sb, "backend_unavailable", lambda b: "FA3 not staged (x)" if b == "fa3" else None)
    monkeypatch.setattr(sb, "ensure_model", lambda shape, root: tmp_path / "models" / shape)
    monkeypatch.setattr(sb, "free_port", lambda: 30001)
    monkeypatch.setenv("KVPREFETCH_COMMIT", "feed")
    monkeypatch.setenv("KVPREFETCH_DIRTY", "1")
    return tmp_path


def test_run_end_to_end_and_resume(fake_run, capsys):
    out = fake_run / "results"
    argv = ["--out", str(out), "--log-dir", str(fake_run / "logs"), "--repeats", "2"]
    assert sb.main(argv) == 0
    doc = rio.load_json(out / "serving-h200.json")
    assert (out / "serving-h200.md").exists()
    assert doc["device"] == "NVIDIA H200" and doc["commit"] == "feed" and doc["dirty"] is True
    rows = doc["rows"]
    assert len(rows) == 2 * 4 * 5
    ran = [r for r in rows if not r["skipped"]]
    assert len(ran) == 2 * 3 * 5 and all(r["repeats"] == 2 and r["output_tok_s"] > 0 for r in ran)
    assert {r["skipped"] for r in rows if r["skipped"]} == {"FA3 not staged (x)"}
    for r in rows:
        assert set(sr.ROW_FIELDS) <= set(r)
    assert FakeServer.started == ["kvprefetch", "flashinfer", "triton"] * 2
    # resume: nothing left to run except the skipped fa3 points, whose backend is still unavailable
    FakeServer.started = []
    assert sb.main(argv) == 0
    assert FakeServer.started == []
    doc2 = rio.load_json(out / "serving-h200.json")
    assert len(doc2["rows"]) == 40 and len(doc2["runs"]) == 2
    # --no-resume re-measures
    assert sb.main(argv + ["--no-resume", "--models", "llama-3.2-1b", "--backends", "triton"]) == 0
    assert FakeServer.started == ["triton"]


def test_kvprefetch_fallback_is_not_measured(fake_run):
    FakeServer.fallback_for = {"kvprefetch"}
    out = fake_run / "results"
    assert sb.main(["--out", str(out), "--log-dir", str(fake_run / "logs"), "--backends", "kvprefetch",
                    "--models", "llama-3.2-1b", "--repeats", "1"]) == 0
    rows = rio.load_json(out / "serving-h200.json")["rows"]
    assert len(rows) == 5 and all(r["skipped"].startswith("kvprefetch fell back to Triton") for r in rows)


def test_deadline_stops_before_starting_a_server(fake_run, capsys):
    out = fake_run / "results"
    assert sb.main(["--out", str(out), "--log-dir", str(fake_run / "logs"), "--deadline-s", "30"]) == 0
    assert FakeServer.started == []
    assert "STOPPED" in capsys.readouterr().out


def test_shards_partition_servers(fake_run):
    out = fake_run / "results"
    base = ["--out", str(out), "--log-dir", str(fake_run / "logs"), "--repeats", "1", "--workloads", "1K:8:2"]
    for i in range(3):
        assert sb.main(base + ["--shard", f"{i}/3"]) == 0
    rows = rio.load_json(out / "serving-h200.json")["rows"]
    assert len(rows) == 8 and len({sr.point_key(r) for r in rows}) == 8
    assert sorted(FakeServer.started) == sorted(["kvprefetch", "flashinfer", "triton"] * 2)


def _doc(commit, rows):
    return {"device": "NVIDIA H100 80GB HBM3", "commit": commit, "dirty": False, "runs": [{"argv": []}], "rows": rows}


def _row(backend, conc):
    return {"model": "llama-3.1-8b", "backend": backend, "page_size": 1, "kv_dtype": "bf16", "input_len": 8192,
            "output_len": 256, "max_concurrency": conc, "output_tok_s": 100.0}


def test_merge_files_joins_one_commit_and_refuses_two(tmp_path):
    a, b, c = (tmp_path / n / "serving-h100.json" for n in "abc")
    for p in (a, b, c):
        p.parent.mkdir()
    rio.write_json(a, _doc("1" * 40, [_row("fa3", 1)]))
    rio.write_json(b, _doc("1" * 40, [_row("kvprefetch", 1), _row("fa3", 8)]))
    rio.write_json(c, _doc("2" * 40, [_row("triton", 1)]))
    dest = tmp_path / "serving-h100.json"
    assert sb.merge_files([a, b], dest) is None
    merged = rio.load_json(dest)
    assert len(merged["rows"]) == 3 and [r["source"] for r in merged["runs"]] == ["a", "b"]
    assert "differ" in sb.merge_files([a, c], tmp_path / "x.json")


def test_merge_from_needs_render_only():
    with pytest.raises(SystemExit):
        sb.parse_args(["--merge-from", "x.json"])
