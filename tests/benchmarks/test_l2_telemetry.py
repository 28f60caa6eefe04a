"""l2_telemetry on a CPU: the ncu raw-CSV parser and per-call aggregation, --dry-run, and the runs where ncu is
missing, cannot read the counters, or measures (ncu and the profiled child replaced by fakes)."""
import json

import pytest

import l2_ncu as nc
import l2_telemetry as l2

NVTX = "thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg"
HEADER = ["ID", "Process ID", "Process Name", "Host Name", NVTX,
          "Id:Domain:Start/Stop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg", "Kernel Name", "Context", "Stream",
          "Block Size", "Grid Size", "Device", "CC", nc.DRAM_READ, nc.DRAM_PCT, nc.DURATION, nc.HIT, nc.SECTORS]
UNITS = ["", "", "", "", "", "", "", "", "", "", "", "", "", "byte", "%", "nsecond", "%", "sector"]


def csv_line(cells):
    return ",".join('"' + str(c).replace('"', '""') + '"' for c in cells)


def launch(i, label, name, dram_bytes, dram_pct, ns, hit, sectors):
    nvtx = (f"<default domain>:l2tel:none:none:none:none:none:none "
            f"<default domain>:{label}:none:none:none:none:none:none")
    return [i, "4242", "python3", "127.0.0.1", nvtx, "", name, "1", "7", "(128, 1, 1)", "(8, 8, 16)", "0", "9.0",
            dram_bytes, dram_pct, ns, hit, sectors]


def sample(batch=8, ctx=2048):
    """flashinfer_tc: two launches per call (split-KV attention + merge); kvprefetch: one; thousands separators."""
    fi = lambda c: nc.call_label(batch, ctx, "flashinfer_tc", c)  # noqa: E731
    kp = lambda k, c: nc.call_label(batch, ctx, k, c)  # noqa: E731
    rows = [
        launch(0, kp("kvprefetch_d0", 0), "paged_decode<...>", "67,371,008", "80.5", "30,000", "10.0", "2,100,000"),
        launch(1, kp("kvprefetch_d0", 1), "paged_decode<...>", "67,108,864", "81.5", "32,000", "12.0", "2,100,000"),
        launch(2, kp("kvprefetch_pf2", 0), "paged_decode<...>", "67,108,864", "85", "28,000", "40", "2,000,000"),
        launch(3, kp("kvprefetch_pf2", 1), "paged_decode<...>", "67,108,864", "85", "28,000", "40", "2,000,000"),
        launch(4, fi(0), "BatchPrefillWithPagedKVCacheKernel", "67,108,864", "75", "36,000", "20", "3,000,000"),
        launch(5, fi(0), "MergeStatesKernel", "1,000,000", "15", "4,000", "80", "1,000,000"),
        launch(6, fi(1), "BatchPrefillWithPagedKVCacheKernel", "67,108,864", "75", "36,000", "20", "3,000,000"),
        launch(7, fi(1), "MergeStatesKernel", "1,000,000", "15", "4,000", "80", "1,000,000"),
    ]
    lines = ["==PROF== Connected to process 4242 (/usr/bin/python3.12)",
             "==PROF== Profiling \"paged_decode\" - 0: 0%....50%....100% - 3 passes",
             csv_line(HEADER), csv_line(UNITS)]
    for r in rows:
        lines.append(csv_line(r))
        lines.append("[l2]   kvprefetch_d0    profiled (rel.err 1.0e-03)")   # the child's output, same stream
    lines.append("==PROF== Disconnected from process 4242")
    return "\n".join(lines) + "\n"


def test_parser_sums_launches_of_one_call_and_weights_hit_rate_by_sectors():
    m = nc.aggregate(nc.launches(sample()))
    assert set(m) == {(8, 2048, "kvprefetch_d0"), (8, 2048, "kvprefetch_pf2"), (8, 2048, "flashinfer_tc")}
    fi = m[(8, 2048, "flashinfer_tc")]
    assert fi["kernels_per_call"] == 2 and fi["calls"] == 2
    assert fi["duration_us"] == pytest.approx(40.0)                       # 36,000 + 4,000 ns
    assert fi["dram_read_mb"] == pytest.approx(68.108864)
    assert fi["l2_hit_pct"] == pytest.approx((20 * 3e6 + 80 * 1e6) / 4e6)  # 35 %, not the plain mean 50 %
    assert fi["dram_pct_peak"] == pytest.approx((75 * 36 + 15 * 4) / 40)
    assert fi["hit_weighting"] == "sectors"
    assert fi["kernel_names"] == ["BatchPrefillWithPagedKVCacheKernel", "MergeStatesKernel"]
    d0 = m[(8, 2048, "kvprefetch_d0")]
    assert d0["kernels_per_call"] == 1
    assert d0["duration_us"] == pytest.approx(31.0) and d0["l2_hit_pct"] == pytest.approx(11.0)
    assert d0["dram_read_mb"] == pytest.approx((67371008 + 67108864) / 2 / 1e6)


def test_parser_reads_a_table_seen_twice_once():
    once = nc.aggregate(nc.launches(sample()))
    assert nc.aggregate(nc.launches(sample() + "\n" + sample())) == once


def test_parser_scales_prefixed_units_ignores_unlabelled_launches_and_falls_back_to_the_longest_kernel():
    units = list(UNITS)
    units[13:18] = ["Mbyte", "%", "usecond", "%", ""]
    label = nc.call_label(1, 16384, "fa3", 0)
    text = "\n".join([csv_line(HEADER), csv_line(units),
                      csv_line(launch(0, label, "flash_fwd", "67.1", "90", "40.5", "5", "")),
                      csv_line(launch(1, label, "flash_combine", "0.5", "10", "3.5", "60", "")),
                      csv_line(launch(2, "warmup", "elementwise", "1", "1", "1", "1", "1"))])
    m = nc.aggregate(nc.launches(text))
    assert list(m) == [(1, 16384, "fa3")]
    r = m[(1, 16384, "fa3")]
    assert r["duration_us"] == pytest.approx(44.0) and r["dram_read_mb"] == pytest.approx(67.6)
    assert r["l2_hit_pct"] == 5 and r["hit_weighting"] == "longest kernel"


def test_parser_without_a_table_and_fatal_reasons():
    assert nc.launches("==PROF== Connected\n==ERROR== something\n") == []
    text = ("==PROF== Connected to process 1\n==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to "
            "access NVIDIA GPU Performance Counters on the target device 0.\n")
    assert "ERR_NVGPUCTRPERM" in nc.fatal_reason(text)
    assert nc.fatal_reason("==PROF== Disconnected\n") is None
    assert nc.number("1,234.5") == 1234.5 and nc.number("n/a") is None


def test_kernels():
    assert l2.kernels(4) == ["kvprefetch_d0", "kvprefetch_pf4", "flashinfer_tc", "fa3"]


def test_dry_run_prints_plan_and_ncu_command(monkeypatch, capsys):
    monkeypatch.setattr(nc, "find", lambda explicit=None: "/opt/nvidia/nsight-compute/2025.1.0/ncu")
    assert l2.main(["--dry-run", "--distance", "4"]) == 0
    out = capsys.readouterr().out
    assert "['1x16K', '8x2K', '32x16K']" in out and "kvprefetch_pf4" in out
    cmd = out.split("command: ", 1)[1]
    assert cmd.startswith("/opt/nvidia/nsight-compute/2025.1.0/ncu --clock-control none")
    for part in ("--nvtx --nvtx-include l2tel/", "--csv --page raw", nc.SECTORS, "--child", "--distance 4"):
        assert part in cmd


def rows_of(tmp_path, slug="h100"):
    doc = json.loads((tmp_path / f"l2-{slug}.json").read_text())
    assert (tmp_path / f"l2-{slug}.md").exists()
    return doc, {(r["shape"]["batch"], r["shape"]["ctx"], r["kernel"]): r for r in doc["rows"]}


def test_ncu_not_found_writes_every_row_skipped(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(nc, "find", lambda explicit=None: None)
    monkeypatch.setattr(l2, "device_name", lambda: "NVIDIA H100 80GB HBM3")
    assert l2.main(["--out", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().out
    doc, rows = rows_of(tmp_path)
    assert len(rows) == 12 and all("ncu) not found" in r["skipped"] for r in rows.values())
    assert doc["ncu_version"] is None and "commit" in doc and "versions" in doc
    assert rows[(1, 16384, "kvprefetch_d0")]["prefetch_distance"] == 0
    assert rows[(1, 16384, "kvprefetch_pf2")]["prefetch_distance"] == 2


def fake_profile(text, entries):
    """ncu + child: the child writes its manifest (path from the command line); ncu's output is `text`."""
    def profile(cmd, log, timeout_s):
        man = cmd[cmd.index("--manifest") + 1]
        with open(man, "w") as f:
            json.dump({"device": "NVIDIA H100 80GB HBM3", "capability": "9.0", "l2_mb": 50.0, "cuda": "13.0",
                       "prefetch_mode": "line", "entries": entries}, f)
        return 0, text
    return profile


def entries(batch, ctx, distance=2):
    return [{"batch": batch, "ctx": ctx, "kernel": "kvprefetch_d0", "prefetch_distance": 0, "max_rel_err": 1e-3},
            {"batch": batch, "ctx": ctx, "kernel": f"kvprefetch_pf{distance}", "prefetch_distance": distance,
             "max_rel_err": 1e-3},
            {"batch": batch, "ctx": ctx, "kernel": "flashinfer_tc", "max_rel_err": 2e-3},
            {"batch": batch, "ctx": ctx, "kernel": "fa3", "skipped": "FA3 not importable (sgl_kernel.flash_attn)"}]


def test_no_counter_permission_writes_rows_skipped_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.setattr(nc, "find", lambda explicit=None: "/fake/ncu")
    monkeypatch.setattr(nc, "version", lambda ncu: "Version 2025.1.0.0")
    text = ("==PROF== Connected to process 4242\n==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to "
            "access NVIDIA GPU Performance Counters on the target device 0.\n==PROF== Disconnected\n")
    monkeypatch.setattr(nc, "profile", fake_profile(text, entries(8, 2048)))
    assert l2.main(["--out", str(tmp_path), "--shapes", "8x2048"]) == 1
    doc, rows = rows_of(tmp_path)
    assert doc["device"] == "NVIDIA H100 80GB HBM3" and doc["ncu_version"] == "Version 2025.1.0.0"
    assert all("ERR_NVGPUCTRPERM" in rows[(8, 2048, k)]["skipped"] for k in ("kvprefetch_d0", "flashinfer_tc"))
    assert rows[(8, 2048, "fa3")]["skipped"].startswith("FA3 not importable")


def test_measured_run_writes_rows_and_merges(monkeypatch, tmp_path):
    monkeypatch.setattr(nc, "find", lambda explicit=None: "/fake/ncu")
    monkeypatch.setattr(nc, "version", lambda ncu: "Version 2025.1.0.0")
    monkeypatch.setattr(nc, "profile", fake_profile(sample(), entries(8, 2048)))
    assert l2.main(["--out", str(tmp_path), "--shapes", "8x2048"]) == 0
    doc, rows = rows_of(tmp_path)
    r = rows[(8, 2048, "flashinfer_tc")]
    assert r["skipped"] is None and r["kernels_per_call"] == 2 and r["l2_hit_pct"] == pytest.approx(35.0)
    assert r["kv_mb"] == pytest.approx(2 * 8 * 2048 * 8 * 128 * 2 / 1e6)
    assert r["shape"] == {"batch": 8, "ctx": 2048, "page_size": 16, "num_qo_heads": 32, "num_kv_heads": 8,
                          "head_dim": 128}
    assert "prefetch_distance" not in r and rows[(8, 2048, "kvprefetch_pf2")]["prefetch_distance"] == 2
    assert rows[(8, 2048, "fa3")]["skipped"].startswith("FA3 not importable")
    assert "--nvtx-include l2tel/" in doc["ncu_command"]
    md = (tmp_path / "l2-h100.md").read_text()
    assert "| flashinfer_tc |" in md and "Fastest peer here (under ncu): flashinfer_tc" in md

    # a second run at another distance keeps the first run's rows
    monkeypatch.setattr(nc, "profile", fake_profile("", entries(8, 2048, distance=4)))
    assert l2.main(["--out", str(tmp_path), "--shapes", "8x2048", "--distance", "4"]) == 1
    _, rows = rows_of(tmp_path)
    assert rows[(8, 2048, "kvprefetch_pf2")]["skipped"] is None
    assert "no profiled launch" in rows[(8, 2048, "kvprefetch_pf4")]["skipped"]
