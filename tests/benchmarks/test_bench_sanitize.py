"""The compute-sanitizer driver's launch list (coverage of every kernel path, modules prebuilt), its table
corruptions, its plumbing on the CPU (a fake kernel), the log summary, and sanitize.sh against a fake tool."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import fuzz_cases as fc
import sanitize_cases as sc
import sanitize_decode as sd
import sanitize_summary as ss
from kvprefetch.jit_kernels import paged_decode_reference
from kvprefetch.jit_kernels.decode import split_count

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_host" / "sanitize.sh"


@pytest.mark.parametrize("quick", [False, True])
def test_launches_cover_every_path(quick):
    launches = sc.kernel_launches(quick)
    assert {ln.q_dtype for ln in launches} == {"bf16", "f16"} and {ln.fp8 for ln in launches} == {False, True}
    assert {(ln.prefetch, ln.bulk) for ln in launches} == {(0, False), (2, False), (2, True)}
    for d in (64, 128, 256):
        of_d = [ln for ln in launches if ln.head_dim == d]
        assert {ln.group for ln in of_d} == {1, 7, 16}, d
        assert {ln.page for ln in of_d} == {1, 16, 128}, d
    assert {(ln.cap > 0, ln.lse) for ln in launches} == {(a, b) for a in (False, True) for b in (False, True)}
    assert any(ln.layout3d for ln in launches)
    for ln in launches:  # on an H100 with one block per SM (the fewest splits) and with two
        for blocks in (132, 264):
            splits = split_count(len(ln.lens), ln.hkv, blocks)
            acts = [fc.active_splits(n, splits, 128) for n in ln.lens]
            if len(ln.lens) > 1:
                assert 0 in acts and 1 in acts and max(acts) >= 2, (ln.name, acts)  # empty, single, merged
            else:
                assert max(acts) >= 2, ln.name


def test_graph_replays_change_the_split_shape():
    splits = split_count(len(sc.GRAPH.lens), sc.GRAPH.hkv, 132)
    shapes = [tuple(fc.active_splits(n, splits, 128) for n in lens) for lens in (sc.GRAPH.lens,) + sc.GRAPH_REPLAYS]
    assert len(set(shapes)) == len(shapes) and any(0 in s for s in shapes)


def test_every_module_the_driver_loads_is_prebuilt_by_the_test_set():
    from kvprefetch.jit_kernels.jit_spec import make_config
    from kvprefetch.jit_kernels.prebuild import configs

    mods = {ln.module for ln in sc.kernel_launches()} | {sc.GRAPH.module} | {ln.module for ln in sc.BAD_LAUNCHES}
    assert set(sc.module_configs(quick=True)) <= set(sc.module_configs())
    assert {make_config(*m) for m in mods} <= set(configs("tests"))


def _table(lens=sc.BAD_LENS, page=16):
    pages = [-(-n // page) for n in lens]
    indptr = torch.tensor([0] + list(torch.tensor(pages).cumsum(0)), dtype=torch.int32)
    indices = torch.arange(sum(pages), dtype=torch.int32)
    last = torch.tensor([n - (p - 1) * page for n, p in zip(lens, pages)], dtype=torch.int32)
    return indptr, indices, last


@pytest.mark.parametrize("case", sc.BAD_CASES, ids=lambda c: c.name)
def test_each_corruption_changes_the_table_outside_the_intact_requests(case):
    indptr, indices, last = _table()
    new = sd.corrupt(case.name, indptr.clone(), indices.clone(), last.clone(), pool_pages=200, page=16)
    assert any(not torch.equal(a, b) for a, b in zip((indptr, indices, last), new))
    for b in case.intact:  # the intact requests keep their pages and lengths
        beg, end = int(new[0][b]), int(new[0][b + 1])
        assert (beg, end) == (int(indptr[b]), int(indptr[b + 1])) and int(new[2][b]) == int(last[b])
        assert torch.equal(new[1][beg:end], indices[beg:end])


def test_unknown_corruption_is_refused():
    with pytest.raises(ValueError, match="unknown corruption"):
        sd.corrupt("nope", *_table(), pool_pages=10, page=16)


# ---- the driver's plumbing with a fake kernel on the CPU
class FakeKernel:
    def __init__(self, valid_table=None):
        self.config, self.valid_table = SimpleNamespace(tag="fake"), valid_table

    def num_splits_for(self, batch):
        return 4

    def plan(self, indptr, indices, last):
        self.table = (indptr, indices, last)

    def run(self, q, k, v, *, logits_soft_cap, k_scale, v_scale, out, lse, sm_scale=None):
        table = self.valid_table or self.table  # a kernel that survives corrupt tables: right answer anyway
        ref, ref_lse = paged_decode_reference(q, k, v, *table, logits_soft_cap=logits_soft_cap, k_scale=k_scale,
                                              v_scale=v_scale)
        out.copy_(ref.to(out.dtype))
        if lse is not None:
            lse.copy_(ref_lse.float())


def _driver(monkeypatch, kernel):
    drv = sd.Driver(device="cpu")
    monkeypatch.setattr(drv, "wrapper", lambda ln, max_batch=8: kernel)
    return drv


def test_driver_valid_launches_on_a_fake_kernel(monkeypatch):
    drv = _driver(monkeypatch, FakeKernel())
    small = [sc.Launch(ln.name, ln.q_dtype, ln.fp8, 64, 0, False, ln.group, ln.hkv, ln.page, (0, 1, 33, 70),
                       cap=ln.cap, lse=ln.lse, layout3d=ln.layout3d) for ln in sc.kernel_launches(quick=True)[:6]]
    for i, ln in enumerate(small):
        drv.run_valid(ln, seed=i)
    assert drv.launches == len(small) and all(r["ok"] for r in drv.results), drv.results


def test_driver_bad_tables_check_only_intact_requests(monkeypatch):
    kernel = FakeKernel()
    drv = _driver(monkeypatch, kernel)
    ln = sc.Launch("bad", "bf16", False, 64, 0, False, 2, 1, 16, (40, 90, 70))
    real_inputs = drv.inputs

    def inputs(ln_, lens, seed, spare_pages=3):  # the fake computes from the valid table, as if clamped
        inp = real_inputs(ln_, lens, seed, spare_pages)
        kernel.valid_table = (inp.indptr, inp.indices, inp.last_len)
        return inp

    monkeypatch.setattr(drv, "inputs", inputs)
    for case in sc.BAD_CASES:
        drv.run_bad(ln, case, seed=3)
    assert len(drv.results) == len(sc.BAD_CASES) and all(r["ok"] and r["bad_table"] for r in drv.results), drv.results


def test_driver_list_needs_no_gpu(capsys):
    assert sd.main(["--list"]) == 0
    assert sd.main(["--list", "--bad-indices"]) == 0
    out = capsys.readouterr().out
    assert "graph_replay" in out and "last_len_over_page" in out and "valid_after_bad" in out


# ---- log summary
CLEAN = "========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n"
MEMCHECK_ERR = """========= COMPUTE-SANITIZER
========= Invalid __global__ read of size 16 bytes
=========     at void kvp::paged_decode_kernel<__nv_bfloat16, __nv_bfloat16, 128, 3, 0, false>(kvp::DecodeParams)+0x1a30 in paged_decode.cuh:170
=========     by thread (3,0,0) in block (0,1,2)
=========     Address 0x7f00001000 is out of bounds
=========     and is 4,096 bytes after the nearest allocation at 0x7effff000 of size 4,096 bytes
=========     Saved host backtrace up to driver entry point at kernel launch time
=========         Host Frame: [0x2fa1c] in libcuda.so.1
=========
========= ERROR SUMMARY: 1 error
"""
RACE_WARN = """========= COMPUTE-SANITIZER
========= Warning: Race reported between Read access at kvp::paged_decode_kernel+0x100 in paged_decode.cuh:200
=========     and Write access at kvp::paged_decode_kernel+0x200 in paged_decode.cuh:210 [16 hazards]
=========
========= RACECHECK SUMMARY: 1 hazard displayed (0 errors, 1 warning)
"""
RACE_ERR = RACE_WARN.replace("Warning: Race", "Error: Race").replace("(0 errors, 1 warning)", "(1 error, 0 warnings)")
UNSUPPORTED = "========= COMPUTE-SANITIZER\n========= Error: Device not supported\n"
DRIVER_OK = {"completed": True, "launches": 41, "wrong_outputs": [], "results": [{}] * 41}


@pytest.mark.parametrize("log,rc,driver,expect", [
    (CLEAN, 0, DRIVER_OK, "clean"),
    (MEMCHECK_ERR, 1, DRIVER_OK, "1 error(s): Invalid __global__ read of size 16 bytes | at void kvp::paged_decode_kernel"),
    (RACE_ERR, 1, DRIVER_OK, "1 error(s): Error: Race reported between Read access"),
    (RACE_WARN, 0, DRIVER_OK, "1 hazard warning(s): Warning: Race reported"),
    (UNSUPPORTED, 1, None, "unavailable: compute-sanitizer: Error: Device not supported"),
    (CLEAN, 124, DRIVER_OK, "timed out"),
    (CLEAN, 1, {"completed": False, "exception": "RuntimeError: CUDA error: an illegal memory access"},
     "incomplete: the driver stopped: RuntimeError: CUDA error: an illegal memory access"),
    (CLEAN, 0, None, "incomplete: the driver stopped: no driver JSON"),
    (CLEAN, 0, {**DRIVER_OK, "wrong_outputs": [{"name": "x", "reason": "rel err 1e-1"}]}, "1 wrong output(s): x: rel err 1e-1"),
    (CLEAN, 0, {**DRIVER_OK, "launches": 0}, "no kernel launch ran"),
    ("========= COMPUTE-SANITIZER\n", 0, DRIVER_OK, "no summary line in the tool's log (exit code 0)"),
    (None, None, None, "not run"),
])
def test_verdict(log, rc, driver, expect):
    assert ss.verdict(log, rc, driver).startswith(expect)


def test_first_report_skips_host_frames_and_stops_at_the_block_end():
    text = ss.first_report(MEMCHECK_ERR, max_lines=10)
    assert "Host Frame" not in text and "ERROR SUMMARY" not in text and text.count(" | ") == 4


def test_summarize_folder(tmp_path):
    for run, log, rc in (("memcheck", CLEAN, 0), ("racecheck", RACE_WARN, 0), ("synccheck", CLEAN, 0)):
        (tmp_path / f"sanitize-{run}.log").write_text(log)
        (tmp_path / f"sanitize-{run}.rc").write_text(f"{rc}\n")
        (tmp_path / f"sanitize-{run}.driver.json").write_text(json.dumps({**DRIVER_OK, "device": "NVIDIA H100 80GB HBM3",
                                                                          "commit": "abc"}))
    doc = ss.summarize(tmp_path)
    assert doc["memcheck"] == "clean" and doc["racecheck"].startswith("1 hazard warning")
    assert doc["memcheck_bad_indices"] == "not run" and not doc["all_clean"]
    assert doc["device"] == "NVIDIA H100 80GB HBM3" and doc["commit"] == "abc"
    assert doc["details"]["memcheck"]["launches"] == 41 and doc["details"]["memcheck"]["cases"] == 41
    assert ss.summarize(tmp_path, ["memcheck", "synccheck"])["all_clean"]
    assert ss.summarize(tmp_path, unavailable="no tool")["memcheck"] == "unavailable: no tool"


# ---- sanitize.sh against a stand-in tool and driver
FAKE_TOOL = """#!/usr/bin/env bash
# stands in for compute-sanitizer: records its arguments, runs the target, writes a report to --log-file
[ -n "${NEED_LIBS_BESIDE:-}" ] && { [ -f "$(dirname "$0")/libsanitizer-collection.so" ] || exit 13; }
log=/dev/stdout
echo "$@" >> "${FAKE_ARGS_LOG:-/dev/null}"
while [ $# -gt 0 ]; do
  case $1 in
    --version) echo "Version 2099.1"; exit 0 ;;
    --log-file) log=$2; shift 2 ;;
    --tool|--leak-check|--error-exitcode|--kernel-name|--print-limit) shift 2 ;;
    *) break ;;
  esac
done
"$@"; rc=$?
printf '========= COMPUTE-SANITIZER\\n========= ERROR SUMMARY: %s errors\\n' "${FAKE_ERRORS:-0}" > "$log"
[ "${FAKE_ERRORS:-0}" = 0 ] && exit $rc || exit 1
"""
FAKE_DRIVER = """import json, sys
out = sys.argv[sys.argv.index("--out") + 1]
json.dump({"completed": True, "launches": 3, "wrong_outputs": [], "results": [{}, {}, {}], "device": "Fake GPU",
           "commit": "abc", "bad": "--bad-indices" in sys.argv}, open(out, "w"))
"""


def _fakes(tmp_path):
    tool = tmp_path / "compute-sanitizer"
    tool.write_text(FAKE_TOOL)
    tool.chmod(0o755)
    drv = tmp_path / "driver.py"
    drv.write_text(FAKE_DRIVER)
    return tool, drv


def _run_script(tmp_path, *runs, **env):
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": sys.executable, "CUDA_HOME": str(tmp_path / "none")}
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), *runs], capture_output=True, text=True,
                          env={**base, **env}, timeout=120)


def test_script_clean_run(tmp_path):
    tool, drv = _fakes(tmp_path)
    r = _run_script(tmp_path, COMPUTE_SANITIZER=str(tool), SANITIZE_DRIVER=str(drv), FAKE_ARGS_LOG=str(tmp_path / "args"))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "out" / "sanitize.json").read_text())
    assert all(doc[k] == "clean" for k in ss.RUNS)
    bad = json.loads((tmp_path / "out" / "sanitize-memcheck_bad_indices.driver.json").read_text())
    assert bad["bad"] and not json.loads((tmp_path / "out" / "sanitize-memcheck.driver.json").read_text())["bad"]
    args = (tmp_path / "args").read_text()
    assert "--tool racecheck" in args and "--tool synccheck" in args and "--leak-check no" in args
    assert "--kernel-name kns=paged_decode" in args and "--error-exitcode 1" in args


def test_script_reports_errors(tmp_path):
    tool, drv = _fakes(tmp_path)
    r = _run_script(tmp_path, "memcheck", COMPUTE_SANITIZER=str(tool), SANITIZE_DRIVER=str(drv), FAKE_ERRORS="2")
    assert r.returncode == 1
    assert json.loads((tmp_path / "out" / "sanitize.json").read_text())["memcheck"].startswith("2 error(s)")


@pytest.mark.skipif(bool(glob.glob("/usr/local/cuda*/bin/compute-sanitizer")), reason="a real compute-sanitizer is here")
def test_script_without_the_tool_says_so_and_fails(tmp_path):
    _, drv = _fakes(tmp_path)
    r = _run_script(tmp_path, SANITIZE_DRIVER=str(drv), PYTHONPATH="")
    assert r.returncode == 3 and "compute-sanitizer not found" in r.stderr
    assert json.loads((tmp_path / "out" / "sanitize.json").read_text())["memcheck"].startswith("unavailable:")


@pytest.mark.skipif(bool(glob.glob("/usr/local/cuda*/bin/compute-sanitizer")), reason="a real compute-sanitizer is here")
def test_script_lays_out_the_pip_package_flat(tmp_path):
    tool, drv = _fakes(tmp_path)
    pkg = tmp_path / "site" / "nvidia" / "cuda_sanitizer_api"
    (pkg / "bin").mkdir(parents=True)
    (pkg / "lib").mkdir()
    (pkg / "bin" / "compute-sanitizer").write_text(tool.read_text())  # as the wheel ships it: not executable
    (pkg / "lib" / "libsanitizer-collection.so").write_text("")
    r = _run_script(tmp_path, "memcheck", SANITIZE_DRIVER=str(drv), PYTHONPATH=str(tmp_path / "site"),
                    NEED_LIBS_BESIDE="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "out" / "sanitize.json").read_text())["memcheck"] == "clean"


def test_script_refuses_unknown_runs(tmp_path):
    tool, drv = _fakes(tmp_path)
    r = _run_script(tmp_path, "memchek", COMPUTE_SANITIZER=str(tool), SANITIZE_DRIVER=str(drv))
    assert r.returncode == 2 and "unknown run 'memchek'" in r.stderr


def test_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)
