"""stall_profile on a CPU: kernel-name validation, the section parser and per-call weighting, the headline and
stall columns, --dry-run, and a run with ncu and the profiled child replaced by fakes."""
import json

import pytest

import kernel_grid as kg
import kernel_peers as kp
import l2_ncu as nc
import stall_profile as sp
from test_l2_telemetry import NVTX, csv_line

ISSUE, WARPS, DRAM = "smsp__issue_active.avg.pct_of_peak_sustained_active", \
    "sm__warps_active.avg.pct_of_peak_sustained_active", "dram__throughput.avg.pct_of_peak_sustained_elapsed"
LONG = "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio"
BAR = "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio"
MATH = "smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio"
HEADER = ["ID", "Process ID", NVTX, "Kernel Name", nc.DURATION, ISSUE, WARPS, DRAM, LONG, BAR, MATH,
          "launch__grid_size", "dram__bytes_read.sum"]
UNITS = ["", "", "", "", "nsecond", "%", "%", "%", "", "", "", "", "byte"]


def launch(i, label, name, ns, issue, long_sb, barrier, math="0.1", dram="1000"):
    nvtx = f"<default domain>:l2tel:none <default domain>:{label}:none"
    return [i, "7", nvtx, name, ns, issue, "40", "80", long_sb, barrier, math, "264", dram]


def sample():
    kv = lambda c: nc.call_label(32, 16384, "kvprefetch_q8", c)  # noqa: E731
    fa = lambda c: nc.call_label(32, 16384, "fa3", c)  # noqa: E731
    rows = [launch(0, kv(0), "paged_decode", "400,000", "30", "5.0", "1.0"),
            launch(1, kv(1), "paged_decode", "420,000", "32", "5.2", "1.2"),
            launch(2, fa(0), "flash_fwd", "300,000", "20", "8.0", "0.5"),     # 3/4 of the call's time
            launch(3, fa(0), "flash_combine", "100,000", "60", "0.0", "4.5", dram="200"),
            launch(4, "warmup", "elementwise", "1", "1", "1", "1")]
    return "\n".join(["==PROF== Connected", csv_line(HEADER), csv_line(UNITS), *map(csv_line, rows)]) + "\n"


def test_kernel_names_and_variants():
    assert kg.parse_variant("kvprefetch") == {} and kg.parse_variant("kvprefetch_d0") == {}
    assert kg.parse_variant("kvprefetch_s6_pdl") == {"stages": 6, "pdl": True, "fp8_q": False, "f16_math": False, "lazy_rescale": False,
                                                     "two_blocks": False, "late_trigger": None, "cluster_merge": False, "page_prefetch": False, "tma": False, "early_kv": False, "adaptive_release": None, "pid_ahead": None, "old_loads": None, "swap_ab": None, "short_blocks": None, "splits": None,
                                                     "grid": None}
    assert kg.parse_variant("kvprefetch_q8_x2") == {"stages": None, "pdl": None, "fp8_q": True, "f16_math": False, "lazy_rescale": False,
                                                    "two_blocks": False, "late_trigger": None, "cluster_merge": False, "page_prefetch": False, "tma": False, "early_kv": False, "adaptive_release": None, "pid_ahead": None, "old_loads": None, "swap_ab": None, "short_blocks": None, "splits": 2,
                                                    "grid": None}
    assert kg.parse_variant("kvprefetch_h16") == {"stages": None, "pdl": None, "fp8_q": False, "f16_math": True, "lazy_rescale": False,
                                                  "two_blocks": False, "late_trigger": None, "cluster_merge": False, "page_prefetch": False, "tma": False, "early_kv": False, "adaptive_release": None, "pid_ahead": None, "old_loads": None, "swap_ab": None, "short_blocks": None, "splits": None,
                                                  "grid": None}
    assert kg.variant_name(f16_math=True) == "kvprefetch_h16"
    assert kg.variant_name(pdl=False) == "kvprefetch_nopdl" and kg.parse_variant("kvprefetch_nopdl")["pdl"] is False
    assert kg.variant_name(f16_math=True, lazy_rescale=True) == "kvprefetch_h16_lr"
    assert kg.parse_variant("kvprefetch_h16_lr")["lazy_rescale"] is True
    assert kg.variant_name(splits=16, grid=33) == "kvprefetch_x16g33"
    assert kg.variant_name(pdl=True, two_blocks=True) == "kvprefetch_pdl_b2"
    assert kg.parse_variant("kvprefetch_pdl_b2")["two_blocks"] is True
    assert kg.variant_name(pdl=True, late_trigger=True) == "kvprefetch_pdl_lt"
    assert kg.parse_variant("kvprefetch_pdl_lt")["late_trigger"] is True
    assert kg.variant_name(pdl=True, late_trigger=False, early_kv=True) == "kvprefetch_pdl_et_ek"
    assert kg.parse_variant("kvprefetch_pdl_et_ek")["late_trigger"] is False
    assert kg.variant_name(adaptive_release=False) == "kvprefetch_nar"
    assert kg.parse_variant("kvprefetch_nar")["adaptive_release"] is False
    assert kg.variant_name(pid_ahead=True, splits=2) == "kvprefetch_pa_x2"
    assert kg.parse_variant("kvprefetch_pa_x2") == {**kg.parse_variant("kvprefetch_x2"), "pid_ahead": True}
    assert kg.variant_name(pid_ahead=False) == "kvprefetch_npa" and kg.parse_variant("kvprefetch_npa")["pid_ahead"] is False
    assert kg.variant_name(cluster_merge=True, splits=8) == "kvprefetch_cm_x8"
    assert kg.parse_variant("kvprefetch_cm_x8") == {**kg.parse_variant("kvprefetch_x8"), "cluster_merge": True}
    assert kg.variant_name(page_prefetch=True) == "kvprefetch_pp"
    assert kg.variant_name(tma=True, splits=2) == "kvprefetch_tma_x2"
    assert kg.variant_name(pdl=True, early_kv=True) == "kvprefetch_pdl_ek"
    assert kg.parse_variant("kvprefetch_pdl_ek") == {**kg.parse_variant("kvprefetch_pdl"), "early_kv": True}
    assert kg.parse_variant("kvprefetch_tma_x2") == {**kg.parse_variant("kvprefetch_x2"), "tma": True}
    assert kg.parse_variant("kvprefetch_s3_pp") == {**kg.parse_variant("kvprefetch_s3"), "page_prefetch": True}
    assert kg.parse_variant("kvprefetch_x16g33")["splits"] == 16 and kg.parse_variant("kvprefetch_x16g33")["grid"] == 33
    assert kg.variant_name(pdl=False, old_loads=True) == "kvprefetch_nopdl_ol"
    assert kg.parse_variant("kvprefetch_nopdl_nol")["old_loads"] is False
    assert kg.parse_variant("kvprefetch_nopdl_ol_x4") == {**kg.parse_variant("kvprefetch_nopdl_x4"), "old_loads": True}
    assert kg.variant_name(stages=3, pdl=False, old_loads=False, short_blocks=4) == "kvprefetch_s3_nopdl_nol_sb4"
    assert kg.variant_name(pdl=False, swap_ab=True, short_blocks=4) == "kvprefetch_nopdl_sw_sb4"
    assert kg.parse_variant("kvprefetch_nopdl_sw") == {**kg.parse_variant("kvprefetch_nopdl"), "swap_ab": True}
    assert kg.parse_variant("kvprefetch_s3_nopdl_nol_sb4") == {**kg.parse_variant("kvprefetch_s3_nopdl_nol"), "short_blocks": 4}
    with pytest.raises(ValueError, match="short_blocks"):
        kp.variant(**kg.parse_variant("kvprefetch_sb3_x8"))  # a fixed split count sets the short splits too
    assert kg.parse_variant("kvprefetch_") is None and kg.parse_variant("fa3") is None
    with pytest.raises(SystemExit):
        sp.parse_args(["--kernels", "kvprefetch", "flash"])
    with pytest.raises(SystemExit):
        sp.parse_args(["--page-size", "12"])


def test_parser_weights_launches_by_duration_and_averages_calls():
    m = sp.aggregate(sp.launches(sample()))
    assert set(m) == {(32, 16384, "kvprefetch_q8"), (32, 16384, "fa3")}
    kv = m[(32, 16384, "kvprefetch_q8")]
    assert kv["calls"] == 2 and kv["kernels_per_call"] == [1]
    assert kv["duration_us"] == pytest.approx(410.0) and kv["metrics"][ISSUE] == pytest.approx(31.0)
    fa = m[(32, 16384, "fa3")]
    assert fa["duration_us"] == pytest.approx(400.0) and fa["kernels_per_call"] == [2]
    assert fa["metrics"][ISSUE] == pytest.approx(0.75 * 20 + 0.25 * 60)
    assert fa["metrics"]["launch__grid_size"] == pytest.approx(264)
    assert fa["metrics"]["dram__bytes_read.sum"] == pytest.approx(1200)  # a counter: both launches' bytes
    assert kv["metrics"]["dram__bytes_read.sum"] == pytest.approx(1000)
    assert nc.DURATION not in fa["metrics"]


def test_headline_and_top_stalls():
    metrics = {ISSUE: 31.0, DRAM: 80.0, LONG: 5.1, BAR: 1.1, MATH: 0.1, "dram__bytes_read.sum": 1.5e6}
    h = sp.headline(metrics, 1e6)
    assert h["issue active %"] == 31.0 and h["DRAM % of peak"] == 80.0 and h["warps active %"] is None
    assert h[sp.DRAM_PER_KV] == pytest.approx(1.5) and sp.headline({}, 1e6)[sp.DRAM_PER_KV] is None
    assert sp.top_stalls(metrics, 2) == [("long_scoreboard", 5.1), ("barrier", 1.1)]
    assert sp.top_stalls({}) == []


def test_dry_run_names_the_sections_and_the_child(monkeypatch, capsys):
    monkeypatch.setattr(nc, "find", lambda explicit=None: "/opt/nvidia/nsight-compute/2025.3.1/ncu")
    assert sp.main(["--dry-run", "--fp8", "--kernels", "kvprefetch", "kvprefetch_q8", "xqa"]) == 0
    out = capsys.readouterr().out
    assert "fp8_e4m3" in out and "kvprefetch_q8" in out
    cmd = out.split("command: ", 1)[1]
    for part in ("--section WarpStateStats", "--section LaunchStats", "--nvtx-include l2tel/", "--child", "--fp8",
                 "--kernels kvprefetch ", "--metrics dram__bytes_read.sum,"):
        assert part in cmd


def test_run_with_fake_ncu_writes_rows_skips_and_table(monkeypatch, tmp_path):
    entries = [{"batch": 32, "ctx": 16384, "kernel": "kvprefetch_q8", "max_rel_err": 3e-2},
               {"batch": 32, "ctx": 16384, "kernel": "fa3", "max_rel_err": 3e-2},
               {"batch": 32, "ctx": 16384, "kernel": "xqa", "skipped": "XQA needs page size 16/32/64/128"}]

    def profile(cmd, log, timeout_s):
        with open(cmd[cmd.index("--manifest") + 1], "w") as f:
            json.dump({"device": "NVIDIA H100 80GB HBM3", "capability": "9.0", "cuda": "13.0", "entries": entries}, f)
        return 0, sample()

    monkeypatch.setattr(nc, "find", lambda explicit=None: "/fake/ncu")
    monkeypatch.setattr(nc, "version", lambda ncu: "Version 2025.3.1.0")
    monkeypatch.setattr(nc, "profile", profile)
    args = ["--out", str(tmp_path), "--fp8", "--shapes", "32x16K", "--kernels", "kvprefetch_q8", "fa3", "xqa"]
    assert sp.main(args) == 0
    doc = json.loads((tmp_path / "stalls-h100.json").read_text())
    rows = {r["kernel"]: r for r in doc["rows"]}
    assert rows["kvprefetch_q8"]["shape"]["kv_dtype"] == "fp8_e4m3" and rows["kvprefetch_q8"]["skipped"] is None
    assert rows["fa3"]["top_stalls"][0] == ["long_scoreboard", 6.0] and rows["fa3"]["kernels_per_call"] == [2]
    assert rows["xqa"]["skipped"].startswith("XQA needs")
    assert "commit" in doc and doc["sections"] == list(sp.SECTIONS)
    md = (tmp_path / "stalls-h100.md").read_text()
    assert "| kvprefetch_q8 | 410.0 | 31.0 |" in md and "long_scoreboard 5.10" in md and "skipped: XQA needs" in md
