"""kernel_bench.run() end to end on a CPU: torch.cuda queries and the GPU-only modules (graph_timing,
kernel_peers, read_bound) are replaced by fakes, so what is tested is the orchestration: which rows come
out, skip reasons, correctness flags, merging into an existing file, the deadline, the files written."""
import sys
import types

import pytest

import kernel_bench
import kernel_grid as kg
import kernel_rows as kr
import results_io as rio

torch = pytest.importorskip("torch")

US = {"read_bound": 8.0, "kvprefetch": 10.0, "kvprefetch_d0": 11.0, "flashinfer_cc": 15.0, "flashinfer_tc": 12.0,
      "sglang_triton": 20.0, "xqa": 9.0}


class FakeKernel:
    def __init__(self, name, prob):
        self.name, self.prob, self.us = name, prob, US[name] * (1.5 if prob.shape.page_size == 1 else 1.0)
        self.prefetch_distance = 2 if name == "kvprefetch" else (0 if name == "kvprefetch_d0" else None)
        self.note = None

    def __call__(self, layer):
        return ("out", self.name)


def make_fake_modules(calls):
    kp = types.ModuleType("kernel_peers")

    class Unsupported(Exception):
        pass

    class Problem:
        def __init__(self, shape, layers, device, seed=0):
            self.shape, self.layers = shape, layers
            self.kv = list(range(layers))
            calls["problems"].append((shape.batch, shape.ctx, shape.page_size, layers))

        def max_rel_err(self, out):
            return 0.5 if out[1] == "sglang_triton" else 1e-3

        def free(self):
            pass

    class Cache:
        def __init__(self, device):
            pass

    def factory(name):
        def make(prob, cache):
            calls["constructed"].append((name, prob.shape.page_size))
            if name == "fa3":
                raise Unsupported("FA3 not importable (sgl_kernel.flash_attn: ImportError: x); stage it")
            if name == "flashinfer_cudnn":
                raise RuntimeError("ninja: build stopped: subcommand failed")
            if name == "xqa" and prob.shape.page_size not in (16, 32, 64, 128):
                raise Unsupported(f"XQA supports page_size 16/32/64/128 only (got {prob.shape.page_size})")
            return FakeKernel(name, prob)
        return make

    kp.Unsupported = Unsupported
    kp.Problem = Problem
    kp.Cache = Cache
    kp.ADAPTERS = {k: factory(k) for k in kg.ALL_KERNELS if k != "read_bound"}
    kp.prebuild_xqa = lambda specs, cap, log: None

    gt = types.ModuleType("graph_timing")
    gt.hbm_copy_gbps = lambda dev: 3000.0

    def time_in_sequence(fn, layers, reps, stream=None):
        calls["timed"].append(("in_sequence", getattr(fn, "name", "read_bound"), layers, reps))
        return [fn.us] * reps

    def time_cold(fn, sets, samples, stream=None):
        calls["timed"].append(("cold", getattr(fn, "name", "read_bound"), len(sets), samples))
        return [fn.us * 1.2] * samples

    gt.time_in_sequence = time_in_sequence
    gt.time_cold = time_cold
    gt.keep_busy = lambda fn, layers, seconds: calls.setdefault("busy", []).append((layers, seconds))

    rb = types.ModuleType("read_bound")

    class ReadBound:
        def __init__(self, buffers, sm_count):
            self.us = US["read_bound"]

        def __call__(self, i):
            return None

    rb.ReadBound = ReadBound
    rb.self_test = lambda dev, sm: None
    return {"kernel_peers": kp, "graph_timing": gt, "read_bound": rb}


@pytest.fixture
def fake_gpu(monkeypatch):
    calls = {"problems": [], "constructed": [], "timed": []}
    for name, mod in make_fake_modules(calls).items():
        monkeypatch.setitem(sys.modules, name, mod)
    props = types.SimpleNamespace(L2_cache_size=50 << 20, multi_processor_count=132, total_memory=80 << 30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (78 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(kernel_bench, "_cuda_dead", lambda t: None)
    monkeypatch.setenv("KVPREFETCH_COMMIT", "c0ffee")
    monkeypatch.setenv("KVPREFETCH_DIRTY", "0")
    return calls


def test_quick_run_rows_and_files(fake_gpu, tmp_path):
    assert kernel_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    doc = rio.load_json(tmp_path / "kernel-h100.json")
    assert (tmp_path / "kernel-h100.md").exists()
    for k in ("device", "commit", "dirty", "versions", "hbm_copy_gbps", "rows", "runs", "l2_mb", "sm_count"):
        assert k in doc
    assert doc["commit"] == "c0ffee" and doc["dirty"] is False and doc["hbm_copy_gbps"] == 3000.0
    assert set(doc["versions"]) >= {"torch", "flashinfer", "sglang", "cuda"}
    rows = doc["rows"]
    # 5 shapes x 9 kernels x 2 regimes, nothing silently dropped
    assert len(rows) == 5 * 9 * 2
    assert {r["kernel"] for r in rows} == set(kg.ALL_KERNELS)
    for r in rows:
        assert set(kr.ROW_FIELDS) <= set(r)
        assert r["page_size"] == 16 and r["kv_dtype"] == "bf16" and r["l2"] in ("in_sequence", "cold")
    fa3 = [r for r in rows if r["kernel"] == "fa3"]
    assert all(r["skipped"].startswith("FA3 not importable") and r["us"] is None for r in fa3)
    cudnn = [r for r in rows if r["kernel"] == "flashinfer_cudnn"]
    assert all("ninja" in r["skipped"] for r in cudnn)
    tri = [r for r in rows if r["kernel"] == "sglang_triton"]
    assert all(r["correct"] is False and r["max_rel_err"] == 0.5 and r["us"] for r in tri)
    kv = [r for r in rows if r["kernel"] == "kvprefetch"]
    assert all(r["prefetch_distance"] == 2 and r["correct"] is True for r in kv)
    # best peer: xqa (9 us) beats kvprefetch in the fake
    ins = [r for r in kv if r["l2"] == "in_sequence"]
    assert all(r["best_peer"] == "xqa" and r["speedup_over_best_peer"] == pytest.approx(0.9) for r in ins)
    assert all(r["us_over_read_bound"] == pytest.approx(10 / 8) for r in ins)
    # config-level failures are not retried on every shape
    assert sum(1 for c in fake_gpu["constructed"] if c[0] == "flashinfer_cudnn") == 1
    assert sum(1 for c in fake_gpu["constructed"] if c[0] == "fa3") == 1
    # both regimes timed for every kernel that ran, L >= 32
    assert {t[0] for t in fake_gpu["timed"]} == {"in_sequence", "cold"}
    layers = {(b, c): L for b, c, _, L in fake_gpu["problems"]}
    assert layers[(1, 1024)] == 51                 # 32 layers of 4 MiB would fit in 4x L2: more layers
    assert layers[(8, 2048)] == 32
    assert layers[(32, 16384)] == 31               # 2 GiB layers: as many as fit in 85% of 78 GiB - 4 GiB


def test_rows_merge_across_runs(fake_gpu, tmp_path):
    assert kernel_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    assert kernel_bench.main(["--quick", "--fp8", "--only", "kvprefetch", "--out", str(tmp_path)]) == 0
    doc = rio.load_json(tmp_path / "kernel-h100.json")
    assert len(doc["runs"]) == 2
    bf16 = [r for r in doc["rows"] if r["kv_dtype"] == "bf16"]
    fp8 = [r for r in doc["rows"] if r["kv_dtype"] == "fp8_e4m3"]
    assert len(bf16) == 90 and len(fp8) == 5 * 2 * 2        # kvprefetch + read_bound
    # rerunning the same selection replaces rows instead of duplicating them
    assert kernel_bench.main(["--quick", "--only", "kvprefetch", "--out", str(tmp_path)]) == 0
    doc = rio.load_json(tmp_path / "kernel-h100.json")
    assert len(doc["rows"]) == 90 + 20
    assert len({kr.row_key(r) for r in doc["rows"]}) == len(doc["rows"])


def test_deadline_stops_early_and_keeps_rows(fake_gpu, tmp_path, capsys):
    assert kernel_bench.main(["--quick", "--deadline-s", "0.000001", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "STOPPED" in out
    doc = rio.load_json(tmp_path / "kernel-h100.json")
    assert doc["rows"] == [] and doc["runs"][-1]["stopped"].startswith("deadline")


def test_page1_xqa_is_a_skipped_row(fake_gpu, tmp_path):
    assert kernel_bench.main(["--page-sizes", "1", "--only", "xqa", "--out", str(tmp_path)]) == 0
    rows = rio.load_json(tmp_path / "kernel-h100.json")["rows"]
    xqa = [r for r in rows if r["kernel"] == "xqa"]
    assert len(xqa) == 14 * 2 and all("page_size 16/32/64/128" in r["skipped"] for r in xqa)


def test_render_only_and_dry_run(fake_gpu, tmp_path, capsys):
    assert kernel_bench.main(["--quick", "--out", str(tmp_path)]) == 0
    (tmp_path / "kernel-h100.md").unlink()
    assert kernel_bench.main(["--render-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "kernel-h100.md").read_text().startswith("# Decode-attention kernel benchmark")
    assert kernel_bench.main(["--dry-run"]) == 0
    assert "estimate" in capsys.readouterr().out


def test_config_level_failures():
    class Unsup(Exception):
        pass

    class KernelUnavailableError(RuntimeError):
        pass

    cl = kernel_bench._config_level
    assert cl(ImportError("No module named sgl_kernel"), Unsup)
    assert cl(Unsup("page size"), Unsup)
    assert cl(KernelUnavailableError("no sm_90 device"), Unsup)
    assert cl(RuntimeError("Ninja build failed"), Unsup)
    assert cl(ValueError("head_dim: expected one of (64, 128, 256), got 96"), Unsup)
    assert not cl(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), Unsup)
    assert not cl(AssertionError("q.shape[0] <= attn_logits.shape[0]"), Unsup)
    r = kernel_bench._reason(RuntimeError("first line\nmiddle\nlast line"))
    assert r == "RuntimeError: first line ... last line"


def test_stages_and_pdl_flags_add_variant_kernels_after_ours():
    args = kernel_bench.parse_args(["--stages", "6", "--pdl", "--quick"])
    _, _, kernels = kernel_bench.selected(args)
    assert kernels.index("kvprefetch_s6") == kernels.index("kvprefetch_d0") + 1
    assert kernels.index("kvprefetch_pdl") == kernels.index("kvprefetch_s6") + 1
    with pytest.raises(SystemExit):
        kernel_bench.parse_args(["--stages", "9"])


def test_splits_flag_adds_fixed_split_variants():
    import kernel_grid as kg
    import kernel_peers as kp

    args = kernel_bench.parse_args(["--splits", "1", "4", "--quick"])
    _, _, kernels = kernel_bench.selected(args)
    assert kernels[kernels.index("kvprefetch_d0") + 1:][:2] == ["kvprefetch_x1", "kvprefetch_x4"]
    assert kg.variant_name(stages=6, pdl=True, splits=2) == "kvprefetch_s6_pdl_x2"
    cls = kp.variant(splits=4)
    assert cls.name == "kvprefetch_x4" and cls.splits == 4 and issubclass(cls, kp.KvPrefetch)
    for bad in ("0", "65"):
        with pytest.raises(SystemExit):
            kernel_bench.parse_args(["--splits", bad])


def test_variant_flag_composes_any_named_variant():
    import kernel_grid as kg

    args = kernel_bench.parse_args(["--variant", "kvprefetch_s6_pdl_h16_b2", "kvprefetch_h16_b2", "--quick"])
    _, _, kernels = kernel_bench.selected(args)
    assert kernels[kernels.index("kvprefetch_d0") + 1:][:2] == ["kvprefetch_s6_pdl_h16_b2", "kvprefetch_h16_b2"]
    spec = kernel_bench.experiment_specs(args)[0]
    assert (spec["stages"], spec["pdl"], spec["f16_math"], spec["two_blocks"]) == (6, True, True, True)
    assert kg.variant_name(**spec) == "kvprefetch_s6_pdl_h16_b2"
    for bad in ("kvprefetch", "kvprefetch_d0", "fa3", "kvprefetch_b2_pdl"):
        with pytest.raises(SystemExit):
            kernel_bench.parse_args(["--variant", bad])


def test_grid_splits_flag_keeps_short_splits_in_a_wider_grid():
    import kernel_grid as kg
    import kernel_peers as kp

    args = kernel_bench.parse_args(["--grid-splits", "16:33", "--quick"])
    _, _, kernels = kernel_bench.selected(args)
    assert "kvprefetch_x16g33" in kernels
    cls = kp.variant(**kg.parse_variant("kvprefetch_x16g33"))
    assert cls.splits == 16 and cls.grid == 33

    class Planner:
        def num_splits_for(self, batch_size):
            return 99

        def short_splits_for(self, batch_size):
            return 99

    fixed = kp._fixed_splits(Planner, 16, 33)()
    assert fixed.num_splits_for(1) == 33 and fixed.short_splits_for(1) == 16 and fixed.short_chunk_for(1) == 512
    for bad in ("16", "33:16", "0:4", "a:b", "16:65"):
        with pytest.raises(SystemExit):
            kernel_bench.parse_args(["--grid-splits", bad])


def test_two_blocks_flag_pairs_with_each_pdl_row():
    import kernel_grid as kg
    import kernel_peers as kp

    _, _, kernels = kernel_bench.selected(kernel_bench.parse_args(["--pdl", "--no-pdl", "--two-blocks", "--quick"]))
    assert {"kvprefetch_pdl", "kvprefetch_nopdl", "kvprefetch_pdl_b2", "kvprefetch_nopdl_b2"} <= set(kernels)
    _, _, kernels = kernel_bench.selected(kernel_bench.parse_args(["--two-blocks", "--late-trigger", "--quick"]))
    assert "kvprefetch_b2" in kernels and "kvprefetch_pdl_lt" in kernels
    cls = kp.variant(**kg.parse_variant("kvprefetch_pdl_b2"))
    assert cls.two_blocks and cls.pdl and cls.late_trigger is None  # None: the product's release


def test_cluster_merge_flag_pairs_with_each_fixed_split_count():
    import kernel_grid as kg
    import kernel_peers as kp

    _, _, kernels = kernel_bench.selected(kernel_bench.parse_args(["--cluster-merge", "--splits", "8", "16", "--quick"]))
    assert {"kvprefetch_x8", "kvprefetch_x16", "kvprefetch_cm", "kvprefetch_cm_x8", "kvprefetch_cm_x16"} <= set(kernels)
    cls = kp.variant(**kg.parse_variant("kvprefetch_cm_x8"))
    assert cls.cluster_merge and cls.splits == 8 and cls.name == "kvprefetch_cm_x8"


def test_read_bound_last_moves_only_the_read_row():
    _, _, first = kernel_bench.selected(kernel_bench.parse_args(["--quick"]))
    _, _, last = kernel_bench.selected(kernel_bench.parse_args(["--quick", "--read-bound-last"]))
    assert first[0] == "read_bound" and last[-1] == "read_bound" and last[:-1] == first[1:]


def test_shapes_flag_replaces_the_grid():
    _, grid, _ = kernel_bench.selected(kernel_bench.parse_args(["--shapes", "32x512,24x2K", "--quick"]))
    assert grid == [(32, 512), (24, 2048)]
    _, grid, _ = kernel_bench.selected(kernel_bench.parse_args([]))
    assert tuple(grid) == kg.GRID
