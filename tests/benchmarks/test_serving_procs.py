"""serving_procs on a CPU: the server process (a fake HTTP server), the bench_serving client in one process and
per run (a fake `sglang.benchmark.serving`), result and fall-back parsing, the host checks."""
import json
import os
import sys
import textwrap
from pathlib import Path

import serving_bench as sb
import serving_procs as sp
import serving_rows as sr


def test_wait_gpu_idle_without_nvidia_smi(monkeypatch):
    monkeypatch.setattr(sp, "gpu_memory_used_mib", lambda: None)
    monkeypatch.setattr(sp.time, "sleep", lambda s: None)
    sp.wait_gpu_idle()
    seq = iter([9000, 9000, 100])
    monkeypatch.setattr(sp, "gpu_memory_used_mib", lambda: next(seq))
    sp.wait_gpu_idle()


def test_read_result_and_fallback(tmp_path):
    f = tmp_path / "r.jsonl"
    assert sp.read_result(f) is None
    f.write_text(json.dumps({"output_throughput": 1.0}) + "\nnot json\n" + json.dumps({"output_throughput": 2.0}) + "\n")
    assert sp.read_result(f)["output_throughput"] == 2.0
    log = "INFO start\nWARNING kvprefetch: no nvcc\n  -> falling back to SGLang's Triton attention backend\n"
    assert "falling back" in sp.fallback_line(log)
    assert sp.fallback_line("all good") is None


def test_backend_unavailable_checks_plugin_and_fa3(monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [])
    assert "plugin not installed" in sp.backend_unavailable("kvprefetch")
    assert sp.backend_unavailable("triton") is None
    monkeypatch.setattr(sp.importlib.util, "find_spec", lambda name: None)
    assert sp.backend_unavailable("fa3") == "sgl_kernel not installed"


# ------------------------------------------------------------------ real child processes, fake programs

FAKE_SERVER = textwrap.dedent("""
    import sys, time, http.server
    port = int(sys.argv[1]); delay = float(sys.argv[2])
    t0 = time.time()
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" and time.time() - t0 > delay
            self.send_response(200 if ok else 503); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    print("fake server up", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


def test_server_process_lifecycle(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "wait_gpu_idle", lambda: None)
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    port = sp.free_port()
    srv = sp.ServerProcess([sys.executable, str(script), str(port), "0.5"], port, tmp_path / "s.log")
    srv.start()
    try:
        ok, msg = srv.wait_healthy(30, poll_s=0.2)
        assert ok, msg
    finally:
        srv.stop(timeout_s=10)
    assert srv.proc.poll() is not None and not srv.healthy()
    assert "fake server up" in srv.log_text()


def test_server_process_reports_early_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "wait_gpu_idle", lambda: None)
    srv = sp.ServerProcess([sys.executable, "-c", "import sys; print('boom: bad flag'); sys.exit(3)"], sp.free_port(),
                           tmp_path / "s.log")
    srv.start()
    ok, msg = srv.wait_healthy(30, poll_s=0.2)
    srv.stop(timeout_s=5)
    assert not ok and "code 3" in msg and "boom" in msg


FAKE_SERVING = textwrap.dedent("""
    import json, sys
    def cli_main():
        a = sys.argv[1:]
        get = lambda k: a[a.index(k) + 1]
        if get("--seed") == "99":
            raise RuntimeError("server said no")
        n = int(get("--num-prompts"))
        with open(get("--output-file"), "a") as f:
            f.write(json.dumps({"output_throughput": 100.0 + int(get("--seed")), "median_tpot_ms": 5.0,
                                "p99_tpot_ms": 6.0, "median_ttft_ms": 50.0, "completed": n}) + "\\n")
""")


def fake_sglang(root: Path) -> Path:
    (root / "sglang" / "benchmark").mkdir(parents=True)
    (root / "sglang" / "__init__.py").write_text("")
    (root / "sglang" / "benchmark" / "__init__.py").write_text("")
    (root / "sglang" / "benchmark" / "serving.py").write_text(FAKE_SERVING)
    return root


def test_client_driver_runs_jobs_in_one_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(fake_sglang(tmp_path / "fake")))
    d = sp.ClientDriver(tmp_path / "client.log", env)
    try:
        assert d.ready(60)[0]
        w = sr.Workload(1024, 8, 2)
        out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
        ok, _ = d.run(sb.client_argv(w, tmp_path, 1, 16, 1, out1, 1), 60)
        assert ok and sp.read_result(out1)["output_throughput"] == 101.0
        ok, why = d.run(sb.client_argv(w, tmp_path, 1, 16, 99, out2, 0), 60)
        assert not ok and "server said no" in why and sp.read_result(out2) is None
        ok, _ = d.run(sb.client_argv(w, tmp_path, 1, 16, 2, out2, 0), 60)     # still alive after a failure
        assert ok and sp.read_result(out2)["output_throughput"] == 102.0
    finally:
        d.close()
    assert not d.alive()


def test_run_client_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(fake_sglang(tmp_path / "fake")))
    # `python -m sglang.benchmark.serving` needs a __main__ hook in the fake
    p = tmp_path / "fake" / "sglang" / "benchmark" / "serving.py"
    p.write_text(p.read_text() + "\nif __name__ == '__main__':\n    cli_main()\n")
    out = tmp_path / "o.jsonl"
    ok, _ = sp.run_client_once(sb.client_argv(sr.Workload(1024, 8, 2), tmp_path, 1, 16, 3, out, 1),
                               tmp_path / "c.log", 60, env)
    assert ok and sp.read_result(out)["output_throughput"] == 103.0
