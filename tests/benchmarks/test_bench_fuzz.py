"""The fuzz's case generator (determinism, validity, coverage), its judge, its checker's plumbing (a fake kernel on
the CPU) and its summary."""
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

import fuzz_cases as fc
import fuzz_check
import fuzz_decode
from kvprefetch.jit_kernels import paged_decode_reference
from kvprefetch.jit_kernels.decode import MIN_CHUNK_TOKENS, split_count

SEEDS = range(2000)
H100_BLOCKS = 132  # one block per SM: the fewest splits any config gets on an H100


def test_same_seed_same_case_and_seeds_differ():
    for s in range(200):
        assert fc.random_case(random.Random(s)) == fc.random_case(random.Random(s))
    descs = {fc.describe(fc.random_case(random.Random(s))) for s in range(200)}
    assert len(descs) > 190


def test_cases_are_valid_and_bounded():
    for s in SEEDS:
        c = fc.random_case(random.Random(s))
        json.dumps(c)  # the case is its own record
        assert c["hq"] % c["hkv"] == 0 and 1 <= c["hq"] // c["hkv"] <= 16
        assert c["d"] in (64, 128, 256) and c["page"] in (1, 2, 4, 8, 16, 32, 64, 128)
        assert 1 <= len(c["lens"]) <= fc.MAX_BATCH and all(0 <= n <= fc.LONG_CTX for n in c["lens"])
        assert sum(c["lens"]) * (c["hkv"] * c["d"] // 64) <= fc.KV_ROW_BUDGET
        assert c["k_scale"] > 0 and c["v_scale"] > 0 and c["sm_scale"] > 0 and c["cap"] >= 0
        assert not c["layout3d"] or c["page"] == 1


def test_2000_seeds_cover_every_dimension():
    seen = {}
    for s in SEEDS:
        c = fc.random_case(random.Random(s))
        splits = split_count(len(c["lens"]), c["hkv"], H100_BLOCKS)
        for t in fc.case_traits(c, splits, MIN_CHUNK_TOKENS):
            seen[t] = seen.get(t, 0) + 1
    want = ({f"q:{q}" for q in ("bf16", "f16")} | {f"kv:{k}" for k in ("bf16", "f16", "fp8_e4m3")}
            | {f"d:{d}" for d in (64, 128, 256)} | {f"group:{g}" for g in (1, 2, 4, 7, 8, 16)}
            | {f"page:{p}" for p in (1, 2, 4, 8, 16, 32, 64, 128)}
            | {"pf:0", "pf:2", "lse", "no_lse", "cap", "no_cap", "len_1", "len_0", "exact_page_multiple",
               f"len_{fc.LONG_CTX}", "long_ctx", "split", "unsplit", "split_and_unsplit_in_batch", "layout3d",
               "strided", "fp8_scales"})
    assert want <= set(seen), sorted(want - set(seen))
    assert seen["fp8_scales"] >= 200 and seen[f"len_{fc.LONG_CTX}"] >= 5 and seen["split"] >= 300


def test_every_fuzz_module_is_in_the_prebuilt_test_set():
    from kvprefetch.jit_kernels.jit_spec import make_config
    from kvprefetch.jit_kernels.prebuild import configs

    needed = {make_config(*fc.module_key(fc.random_case(random.Random(s)))) for s in SEEDS}
    assert len(needed) == 24 and needed <= set(configs("tests"))


@pytest.mark.parametrize("length,splits,active", [(0, 8, 0), (1, 8, 1), (128, 8, 1), (129, 8, 2), (900, 26, 8),
                                                   (900, 6, 6), (131072, 256, 256), (1000, 1, 1)])
def test_active_splits_follow_the_kernels_chunking(length, splits, active):
    assert fc.active_splits(length, splits, 128) == active


# short requests (splits under 512 tokens) use the short count: 1 x 16K at 49 splits runs 33 of 512 tokens
@pytest.mark.parametrize("length,splits,short,active", [(16384, 49, 33, 32), (65536, 49, 33, 49), (4096, 12, 8, 8),
                                                         (2048, 6, 4, 4), (1024, 3, 2, 2), (4096, 33, 33, 32)])
def test_active_splits_with_a_short_split_count(length, splits, short, active):
    assert fc.active_splits(length, splits, 128, short) == active


def test_cases_for_groups_by_wrapper_and_keeps_seeds():
    pairs = fc.cases_for(range(300))
    assert sorted(s for s, _ in pairs) == list(range(300))
    keys = [fc.wrapper_key(c) for _, c in pairs]
    assert keys == sorted(keys)


# ---- judge
def _ref(b=3, h=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, h, d, generator=g, dtype=torch.float64), torch.randn(b, h, generator=g, dtype=torch.float64)


def test_judge_passes_close_outputs_and_fails_nan():
    ref, lse = _ref()
    ok = fuzz_check.judge(ref.to(torch.bfloat16), lse.float(), ref, lse, fp8=False)
    assert ok["ok"] and ok["err"] < 5e-3 and ok["lse_err"] < 1e-2
    bad = ref.to(torch.bfloat16)
    bad[1, 2, 3] = math.nan
    r = fuzz_check.judge(bad, lse.float(), ref, lse, fp8=False)
    assert not r["ok"] and "NaN output" in r["reason"]
    lse_bad = lse.float().clone()
    lse_bad[0, 0] = math.nan
    assert not fuzz_check.judge(ref.float(), lse_bad, ref, lse, fp8=False)["ok"]


def test_judge_is_per_request_so_a_small_norm_request_is_not_hidden():
    ref, _ = _ref(b=2)
    ref[1] *= 1e-3  # a long request: small output norm
    out = ref.clone()
    out[1] += 5e-5  # 5 % of that request, 0.003 % of the batch
    r = fuzz_check.judge(out.float(), None, ref, ref[:, :, 0], fp8=False, lens=[1, 100000])
    assert not r["ok"] and "request 1, length 100000" in r["reason"]


def test_judge_tolerance_depends_on_kv_dtype():
    ref, _ = _ref()
    out = ref * (1 + 2e-2)
    assert not fuzz_check.judge(out, None, ref, ref[:, :, 0], fp8=False)["ok"]
    assert fuzz_check.judge(out, None, ref, ref[:, :, 0], fp8=True)["ok"]


def test_judge_empty_request_needs_zeros_and_minus_inf_lse():
    ref, lse = _ref(b=2)
    ref[1] = 0
    lse[1] = -math.inf
    out, out_lse = ref.float().clone(), lse.float().clone()
    assert fuzz_check.judge(out, out_lse, ref, lse, fp8=False)["ok"]
    out[1, 0, 0] = 1e-3
    assert not fuzz_check.judge(out, out_lse, ref, lse, fp8=False)["ok"]
    out[1] = 0
    out_lse[1, 0] = 0.0
    assert not fuzz_check.judge(out, out_lse, ref, lse, fp8=False)["ok"]


# ---- check_case through a fake kernel (the reference itself), on the CPU
class FakeKernel:
    """Stands in for the loaded wrapper: writes the reference's answer, optionally with a defect."""

    def __init__(self, defect=None):
        self.defect, self.config = defect, SimpleNamespace(tag="fake")

    def config_for(self, batch):
        return self.config

    def num_splits_for(self, batch):
        return 4

    def short_splits_for(self, batch):
        return 2

    def short_chunk_for(self, batch):
        return 512

    def plan(self, indptr, indices, last):
        self.table = (indptr, indices, last)

    def run(self, q, k, v, *, sm_scale, logits_soft_cap, k_scale, v_scale, out, lse):
        ref, ref_lse = paged_decode_reference(q, k, v, *self.table, sm_scale=sm_scale, logits_soft_cap=logits_soft_cap,
                                              k_scale=k_scale, v_scale=v_scale)
        out.copy_(ref.to(out.dtype))
        if lse is not None:
            lse.copy_(ref_lse.float())
        if self.defect == "skip_one":
            out[0, 0, 0] = math.nan
        if self.defect == "write_past_heads":
            out.as_strided((1,), (1,), out.storage_offset() + out.shape[1] * out.shape[2]).fill_(0.0)
        return out


def _small_case(**kw):
    c = dict(lens=[1, 0, 37, 16], hq=8, hkv=2, d=64, page=4, q_dtype="bf16", fp8=False, pf=0, cap=0.0, lse=True,
             k_scale=1.0, v_scale=1.0, sm_scale=0.125, layout3d=False, strided=False)
    c.update(kw)
    return c


@pytest.mark.parametrize("kw", [{}, dict(fp8=True, k_scale=0.5, v_scale=1.7, q_dtype="f16"), dict(cap=30.0, lse=False),
                                dict(page=1, layout3d=True), dict(strided=True)])
def test_check_case_plumbing_passes_a_correct_kernel(monkeypatch, kw):
    monkeypatch.setattr(fuzz_check.WrapperCache, "get", lambda self, case: FakeKernel())
    res = fuzz_check.check_case(_small_case(**kw), 7, fuzz_check.WrapperCache(device="cpu"), device="cpu")
    assert res["ok"], res["reason"]
    assert res["seed"] == 7 and res["module"] == "fake"
    assert res["kv"] == ("fp8_e4m3" if kw.get("fp8") else kw.get("q_dtype", "bf16"))


@pytest.mark.parametrize("defect,case_kw,needle", [("skip_one", {}, "NaN output"),
                                                   ("write_past_heads", dict(strided=True), "outside out's heads")])
def test_check_case_catches_defects(monkeypatch, defect, case_kw, needle):
    monkeypatch.setattr(fuzz_check.WrapperCache, "get", lambda self, case: FakeKernel(defect))
    res = fuzz_check.check_case(_small_case(**case_kw), 7, fuzz_check.WrapperCache(device="cpu"), device="cpu")
    assert not res["ok"] and needle in res["reason"]


# ---- summary and CLI
def _result(seed, ok=True, err=1e-3, kv="bf16", d=128):
    return dict(seed=seed, ok=ok, err=err, lse_err=1e-4, reason="" if ok else "rel err big", desc=f"case {seed}",
                kv=kv, d=d, module="m", num_splits=4)


def test_summarize():
    rows = [_result(0), _result(1, err=4e-3, kv="fp8_e4m3", d=64), _result(2, ok=False, err=0.5, d=256),
            _result(3, ok=False, err=math.nan)]
    s = fuzz_decode.summarize(rows, cases_requested=10, first_seed=0, wall_s=1.23, aborted=None, coverage={"split": 2})
    assert s["configs_fuzzed"] == 4 and s["mismatch_count"] == 2
    assert [m["seed"] for m in s["mismatches"]] == [2, 3]
    assert s["mismatches"][0]["repro"] == "python benchmarks/fuzz_decode.py --seed 2"
    assert s["worst_rel_err"]["by_kv_dtype"] == {"bf16": 0.5, "fp8_e4m3": 4e-3}
    assert s["worst_rel_err"]["by_head_dim"] == {"128": 1e-3, "256": 0.5, "64": 4e-3}
    assert s["worst_case"]["seed"] == 2 and s["wall_s"] == 1.2
    json.dumps(s)


def test_out_path(tmp_path):
    assert fuzz_decode.out_path(tmp_path / "f.json", "h100") == tmp_path / "f.json"
    assert fuzz_decode.out_path(tmp_path, "h100") == tmp_path / "fuzz-h100.json"
    assert fuzz_decode.out_path(None, "h200").name == "fuzz-h200.json"


def test_cli_list_needs_no_gpu(capsys):
    assert fuzz_decode.main(["--list", "3", "--first-seed", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("5: lens=[")


def _fake_gpu(monkeypatch, check):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(fuzz_check, "check_case", check)


def test_run_loop_writes_the_summary_and_fails_on_a_mismatch(monkeypatch, tmp_path, capsys):
    def check(case, seed, wrappers):
        return {**_result(seed, ok=seed != 3, err=0.5 if seed == 3 else 1e-3, kv=fc.kv_dtype_name(case), d=case["d"]),
                "desc": fc.describe(case)}

    _fake_gpu(monkeypatch, check)
    out = tmp_path / "fuzz.json"
    assert fuzz_decode.main(["--cases", "25", "--chunk", "10", "--out", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["device"] == "NVIDIA H100 80GB HBM3" and "commit" in doc and "versions" in doc
    assert doc["configs_fuzzed"] == 25 and [m["seed"] for m in doc["mismatches"]] == [3]
    assert doc["coverage"]["split"] + doc["coverage"]["unsplit"] == 25 and doc["aborted"] is None
    printed = capsys.readouterr().out
    assert "MISMATCH seed 3" in printed and "--seed 3" in printed and printed.count("worst rel err in chunk") == 3


def test_run_loop_stops_when_the_cuda_context_is_lost(monkeypatch, tmp_path):
    def check(case, seed, wrappers):
        if seed == 5:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return _result(seed)

    _fake_gpu(monkeypatch, check)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: (_ for _ in ()).throw(RuntimeError("illegal memory access")))
    out = tmp_path / "fuzz.json"
    assert fuzz_decode.main(["--cases", "20", "--out", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["aborted"].startswith("CUDA context lost at seed 5")
    assert doc["mismatches"][-1]["reason"].startswith("exception: RuntimeError: CUDA error")


def test_run_loop_deadline_stops_early_without_failing(monkeypatch, tmp_path):
    _fake_gpu(monkeypatch, lambda case, seed, wrappers: _result(seed))
    out = tmp_path / "fuzz.json"
    assert fuzz_decode.main(["--cases", "50", "--deadline-s", "0", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["configs_fuzzed"] == 0 and doc["stopped_early"].startswith("deadline")


def test_one_seed_verbose_repro(monkeypatch, capsys):
    monkeypatch.setattr(fuzz_check, "check_case", lambda case, seed, wrappers: _result(seed, ok=False, err=0.2))
    assert fuzz_decode.main(["--seed", "42"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("seed 42: lens=[") and "MISMATCH: rel err big" in out and "active splits per request" in out
    assert json.loads(out.splitlines()[1]) == fc.random_case(random.Random(42))
