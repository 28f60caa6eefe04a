"""soak.py's run loop against fakes: a server that only writes SGLang's request log, a bench_serving driver
that writes its output line and the server's log lines, and an HTTP stub for probes, aborts and flushes."""
import json
import os
import shutil
import threading

import pytest

import results_io as rio
import serving_procs as procs
import soak
import soak_http
import soak_plan as sp
from fake_serving import StubDriver, StubServer
from soak_samples import ABORT_OOM, ABORT_RUNNING, LENGTH, bench_line, log_event, write_log


class World:
    """What the fake server knows: its request-log dir, abort calls, probe answers, injected failures."""

    def __init__(self):
        self.req_dir = None
        self.started = 0
        self.aborted_rids, self.abort_all = set(), False
        self.probe_shift = 0
        self.oom_every = 0
        self.fallback = False
        self.n = 0

    def post(self, url, payload, timeout):
        if url.endswith("/flush_cache"):
            return 200, "Cache flushed."
        if url.endswith("/generate"):
            n = len(payload["input_ids"])
            return 200, {"output_ids": [(n + i + self.probe_shift) % 1000 for i in range(32)],
                         "meta_info": {"finish_reason": {"type": "length", "length": 32}}}
        if url.endswith("/abort_request"):
            if payload.get("abort_all"):
                self.abort_all = True
            else:
                self.aborted_rids.add(payload["rid"])
            return 200, ""
        return 404, "not found"


W = World()
ABORT_IDS = {r.id for r in sp.plan_rounds() if r.abort}


class FakeServer(StubServer):
    def __init__(self, cmd, port, log_path, env=None):
        super().__init__(cmd, port, log_path, env)
        W.req_dir = cmd[cmd.index("--log-requests-target") + 1]

    def start(self):
        W.started += 1
        os.makedirs(W.req_dir, exist_ok=True)     # SGLang creates its request-log directory at start-up

    def log_text(self):
        return "falling back to SGLang's Triton attention backend" if W.fallback else "ready"


class FakeDriver(StubDriver):
    def run(self, argv, timeout_s):
        get = lambda k: argv[argv.index(k) + 1]  # noqa: E731
        n = int(get("--num-prompts"))
        f = f"{W.req_dir}/host_0.log"
        rids = [f"rid{W.n + i}" for i in range(n)]
        W.n += n
        W.aborted_rids, W.abort_all = set(), False
        half = n // 2
        write_log(f, [log_event("request.received", r) for r in rids]
                  + [log_event("request.finished", r, LENGTH) for r in rids[:half]])
        if os.path.basename(get("--output-file")).split("-", 2)[2][:-len(".jsonl")] in ABORT_IDS:
            threading.Event().wait(0.3)      # the aborter polling the log fires now
        lines = []
        for i, r in enumerate(rids[half:]):
            if W.abort_all or r in W.aborted_rids:
                lines.append(log_event("request.finished", r, ABORT_RUNNING))
            elif W.oom_every and i % W.oom_every == 0:
                lines.append(log_event("request.finished", r, ABORT_OOM))
            else:
                lines.append(log_event("request.finished", r, LENGTH))
        write_log(f, lines)
        with open(get("--output-file"), "a") as out:
            out.write(json.dumps(bench_line(n)) + "\n")
        return True, ""


@pytest.fixture
def fake(monkeypatch, tmp_path):
    global W
    W = World()
    mem = iter(range(60000, 61000, 2))
    monkeypatch.setattr(procs, "ServerProcess", FakeServer)
    monkeypatch.setattr(procs, "ClientDriver", FakeDriver)
    monkeypatch.setattr(procs, "gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(procs, "backend_unavailable", lambda b: None)
    monkeypatch.setattr(procs, "ensure_model", lambda shape, root: tmp_path / "models" / shape)
    monkeypatch.setattr(procs, "free_port", lambda: 30001)
    monkeypatch.setattr(procs, "gpu_memory_used_mib", lambda: next(mem))
    monkeypatch.setattr(soak_http, "post_json", lambda *a: W.post(*a))
    monkeypatch.setattr(soak.time, "sleep", lambda s: None)
    monkeypatch.setenv("KVPREFETCH_COMMIT", "feed")
    monkeypatch.setenv("KVPREFETCH_DIRTY", "0")
    return tmp_path


def argv(tmp, *extra):
    return ["--out", str(tmp / "results"), "--log-dir", str(tmp / "logs"), "--request-log-dir", str(tmp / "rl"),
            "--scale", "0.05"] + list(extra)


def test_full_soak_in_one_call(fake, capsys):
    assert soak.main(argv(fake)) == 0
    out = capsys.readouterr().out
    assert "probes before: identical" in out and "soak complete" in out
    doc = rio.load_json(fake / "results" / "soak-h100.json")
    state = rio.load_json(fake / "results" / "soak-h100.state.json")
    for k in ("device", "commit", "soak_requests", "soak_aborted", "failed_requests", "gpu_mem_growth_mb",
              "probe_identical", "rounds", "shards"):
        assert k in doc, k
    assert doc["device"] == "NVIDIA H100 80GB HBM3" and doc["commit"] == "feed"
    assert doc["complete"] and doc["rounds_done"] == 16 and len(doc["rounds"]) == 16
    assert doc["soak_requests"] == sum(r["sent"] for r in doc["rounds"])
    assert doc["failed_requests"] == 0 and doc["soak_aborted"] > 0
    assert doc["soak_completed"] + doc["soak_aborted"] == doc["soak_requests"]
    assert all(r["aborted"] > 0 for r in doc["rounds"] if r["abort"])
    assert all(r["aborted"] == 0 for r in doc["rounds"] if not r["abort"])
    assert doc["probe_identical"] is True and doc["probe_passes"] == 2
    assert doc["gpu_mem_growth_mb"] == 2 * 17     # the fake's memory rises 2 MiB a sample: 16 rounds + end
    sh = doc["shards"][0]
    assert len(sh["warmup"]) == 2 and sh["mem"]["baseline_mib"] is not None
    assert state["probe_reference"]["shard"] == 0 and len(state["probe_reference"]["outputs"]) == 8
    # nothing left: no server is started again
    assert soak.main(argv(fake)) == 0 and W.started == 1
    assert "nothing to run" in capsys.readouterr().out


def test_resume_on_another_machine_and_probe_mismatch(fake, capsys):
    assert soak.main(argv(fake, "--max-rounds", "5")) == 0
    assert "RESUME" in capsys.readouterr().out
    first = rio.load_json(fake / "results" / "soak-h100.json")
    assert first["rounds_done"] == 5 and not first["complete"]
    # the lead copies the state back into a fresh checkout; the next server answers probes differently
    copy = fake / "repo" / "soak.state.json"
    copy.parent.mkdir()
    shutil.copy(fake / "results" / "soak-h100.state.json", copy)
    W.probe_shift = 1
    assert soak.main(argv(fake, "--state", str(copy))) == 0
    doc = rio.load_json(fake / "results" / "soak-h100.json")
    assert doc["complete"] and len(doc["shards"]) == 2 and doc["rounds_done"] == 16
    assert doc["probe_identical"] is False
    assert {d["shard"] for d in doc["probe_diffs"]} == {1} and len(doc["probe_diffs"][0]["diffs"]) == 8
    state = rio.load_json(copy)
    assert rio.load_json(fake / "results" / "soak.state.json") == state    # a copy beside the results
    after = state["shards"][1]["probes"][1]
    assert after["when"] == "after" and after["diffs_vs_before"] == []   # stable within the second server


def test_server_side_failures_are_counted(fake):
    W.oom_every = 3
    assert soak.main(argv(fake, "--max-rounds", "2")) == 0
    doc = rio.load_json(fake / "results" / "soak-h100.json")
    assert doc["failed_requests"] > 0
    assert all(r["server_other_reasons"] == [ABORT_OOM] for r in doc["rounds"])


def test_budget_too_small_starts_nothing(fake, capsys):
    assert soak.main(argv(fake, "--budget-s", "100")) == 0
    assert W.started == 0 and "no server started" in capsys.readouterr().out


def test_fallback_is_an_error(fake):
    W.fallback = True
    assert soak.main(argv(fake)) == 1
    state = rio.load_json(fake / "results" / "soak-h100.state.json")
    assert state["shards"][0]["error"].startswith("kvprefetch fell back") and state["rounds"] == []


def test_plan_change_refuses_to_resume(fake, capsys):
    assert soak.main(argv(fake, "--max-rounds", "1")) == 0
    assert soak.main(argv(fake, "--seed", "5")) == 2
    assert "cannot resume" in capsys.readouterr().out
    assert soak.main(argv(fake, "--seed", "5", "--fresh", "--max-rounds", "1")) == 0


def test_dry_run(fake, capsys):
    assert soak.main(["--dry-run", "--out", str(fake / "results")]) == 0
    out = capsys.readouterr().out
    assert "2400 requests in 16 rounds (6 with aborts)" in out and "call(s) of --budget-s 480" in out
    assert W.started == 0 and not (fake / "results").exists()
