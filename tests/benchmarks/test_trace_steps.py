"""trace_steps on a CPU: a synthetic profiler trace of three decode steps reduced to period, GPU busy and CPU split."""
import gzip
import json

import trace_steps as ts

T = (1, 7)  # (pid, tid) of the launching thread


def ev(name, ts_us, dur, cat, where=T):
    return {"ph": "X", "name": name, "ts": ts_us, "dur": dur, "cat": cat, "pid": where[0], "tid": where[1]}


def three_steps():
    out = []
    for k, t in enumerate((0.0, 1000.0, 2000.0, 3000.0)):
        out.append(ev("cudaGraphLaunch", t + 100, 20, "cuda_runtime"))
        out.append(ev("aten::copy_", t + 10, 30, "cpu_op"))
        out.append(ev("cudaMemcpyAsync", t + 15, 5, "cuda_runtime"))   # nested in the copy: not top level
        out.append(ev("backend.py(10): plan", t + 5, 50, "python_function"))
        out.append(ev("kernel_a", t + 150, 400, "kernel", where=(0, 0)))
        out.append(ev("kernel_b", t + 500, 100, "kernel", where=(0, 0)))  # overlaps kernel_a by 50
    out.append(ev("cudaGraphLaunch", 50, 5, "cuda_runtime", where=(1, 9)))  # another thread's single launch
    return out


def test_union_length_merges_overlaps():
    assert ts.union_length([(0, 10), (5, 15), (20, 25)]) == 20
    assert ts.union_length([]) == 0


def test_bubbles_count_only_long_idle_stretches():
    busy = ts.merged([(0, 10), (12, 20), (60, 70)])   # gaps 2 (a launch gap) and 40 (a host bubble)
    assert ts.bubbles(busy, longer_than=20) == 40


def test_analyze_steps_period_gpu_and_cpu_split():
    a = ts.analyze(three_steps())
    assert a["steps"] == 3 and a["period_us_median"] == 1000
    assert a["gpu_busy_us_per_step"] == 450          # 150..600 per step, overlap counted once
    # busy 150..600, 1150..1600, 2150..2600 in the window: idle 550 µs twice (bubbles), span 2450
    assert a["host_bubble_us_per_step"] == round(1100 / 3, 2) and a["gpu_step_us"] == round(1350 / 3, 2)
    ops = dict(a["top_cpu_ops_us_per_step"])
    assert ops["aten::copy_"] == 30 and "cudaMemcpyAsync" not in ops and ops["cudaGraphLaunch"] == 20
    assert dict(a["top_python_us_per_step"])["backend.py(10): plan"] == 50
    assert dict(a["top_gpu_kernels_us_per_step"]) == {"kernel_a": 400, "kernel_b": 100}


def test_too_few_launches_is_an_error_not_a_number():
    assert "error" in ts.analyze([ev("cudaGraphLaunch", 0, 1, "cuda_runtime")])


def test_load_events_reads_gzip_and_keeps_complete_events(tmp_path):
    p = tmp_path / "x.trace.json.gz"
    with gzip.open(p, "wt") as f:
        json.dump({"traceEvents": three_steps() + [{"ph": "i", "name": "marker", "ts": 1}]}, f)
    assert len(ts.load_events(p)) == len(three_steps())
    assert "3 steps" in ts.render("x", ts.analyze(ts.load_events(p)))
