"""step_host_cost.py on the CPU: arguments, the bench_one_batch command, the serving TPOT lookup, the report."""
import pytest

import results_io as rio
import step_host_cost as hc


def test_bad_arguments_name_the_flag():
    with pytest.raises(SystemExit):
        hc.parse_args(["--output-len", "1"])
    with pytest.raises(SystemExit):
        hc.parse_args(["--batch-sizes", "0"])


def test_one_batch_command_loads_plugins_and_names_the_backend(tmp_path):
    args = hc.parse_args(["--input-lens", "8192", "16384"])
    cmd = hc.one_batch_cmd("kvprefetch", tmp_path / "m", args, tmp_path / "r.jsonl")
    assert "load_plugins()" in cmd[2] and "one_batch" in cmd[2]
    assert cmd[cmd.index("--attention-backend") + 1] == "kvprefetch"
    assert cmd[cmd.index("--input-len") + 1: cmd.index("--input-len") + 3] == ["8192", "16384"]
    assert cmd[cmd.index("--load-format") + 1] == "dummy"


def test_dry_run_needs_no_gpu(capsys):
    assert hc.main(["--dry-run", "--backends", "kvprefetch", "--models", "llama-3.2-1b"]) == 0
    out = capsys.readouterr().out
    assert "plan_graph" in out and "--attention-backend kvprefetch" in out


def test_serving_tpot_takes_concurrency_1_page_1_rows(tmp_path):
    row = dict(model="llama-3.1-8b", backend="fa3", input_len=8192, max_concurrency=1, page_size=1, tpot_ms_p50=6.8)
    rio.write_json(tmp_path / "serving-h100.json", {"rows": [row, {**row, "max_concurrency": 8, "tpot_ms_p50": 11.0},
                                                             {**row, "page_size": 16, "tpot_ms_p50": 9.9}]})
    assert hc.serving_tpot(tmp_path, "h100") == {("llama-3.1-8b", "fa3", 8192): 6.8}


def test_report_sets_steps_beside_serving_tpot():
    doc = {"device": "H100", "commit": "abc",
           "rows": [{"part": "metadata", "batch": 1, "context": 16384, "page_size": 16, "host_us": 21.0,
                     "to_gpu_done_us": 30.0, "calls": 300},
                    {"part": "step", "model": "llama-3.1-8b", "backend": "fa3", "input_len": 8192, "batch": 1,
                     "median_step_ms": 7.3, "serving_tpot_ms": 6.8},
                    {"part": "step", "model": "llama-3.1-8b", "backend": "triton", "skipped": "deadline reached"}]}
    md = hc.render_md(doc)
    assert "| 1 | 21.0 | 30.0 |" in md
    assert "7.300" in md and "6.800" in md and "0.500" in md
    assert "deadline reached" in md
