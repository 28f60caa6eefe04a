"""hardening-<gpu>.json/.md from sample fuzz, sanitizer and soak results; the bad-input test count."""
import json

import hardening_report as hr

REQUIRED = {"device", "commit", "configs_fuzzed", "mismatches", "sanitizer", "bad_inputs_tried", "soak_requests",
            "soak_aborted", "failed_requests", "gpu_mem_growth_mb"}
FUZZ = {"kind": "fuzz", "device": "NVIDIA H100 80GB HBM3", "commit": "0123456789abcdef", "dirty": False,
        "versions": {"torch": "2.11.0"}, "configs_fuzzed": 2000, "mismatch_count": 1,
        "mismatches": [{"seed": 17, "desc": "lens=[1] hq=4", "err": 0.05, "lse_err": None, "reason": "rel err 5.0e-02 > 1e-02",
                        "repro": "python benchmarks/fuzz_decode.py --seed 17"}],
        "worst_rel_err": {"overall": 0.05, "by_kv_dtype": {"bf16": 2.1e-3, "fp8_e4m3": 0.05}, "by_head_dim": {"64": 2e-3}},
        "wall_s": 81.0, "aborted": None}
SAN = {"kind": "sanitize", "device": "NVIDIA H100 80GB HBM3", "commit": "0123456789abcdef", "memcheck": "clean",
       "racecheck": "1 hazard warning(s): Warning: Race reported", "synccheck": "clean", "memcheck_bad_indices": "clean",
       "all_clean": False, "details": {"memcheck_bad_indices": {"cases": 33, "launches": 33, "bad_tables_tried": 30}}}
SOAK = {"soak_requests": 5000, "soak_aborted": 12, "failed_requests": 0, "gpu_mem_growth_mb": 1.5, "probe_identical": True}
COLLECTED = """tests/kernel/test_validation.py::test_constructor_rejects[override0-head_dim]
tests/kernel/test_validation.py::test_constructor_rejects[override1-num_qo_heads]
tests/kernel/test_validation.py::test_group_seven_and_fp8_are_accepted
tests/kernel/test_validation.py::test_index_values_are_checked[indptr0-indices0-last0-kv_indptr\\\\[0\\\\]]
tests/integration/test_refusal.py::test_llama_bf16_is_accepted
tests/integration/test_refusal.py::test_shape_refusals[a]
tests/patches/test_patches_cli.py::test_unknown_name_still_rejected

312/344 tests collected (32 deselected) in 6.08s
""".splitlines()


def test_bad_input_tests_by_name():
    ids = hr.bad_input_tests(COLLECTED)
    assert len(ids) == 5 and not any("accepted" in i for i in ids)
    assert hr.by_file(ids) == {"tests/integration/test_refusal.py": 1, "tests/kernel/test_validation.py": 3,
                               "tests/patches/test_patches_cli.py": 1}


def test_assemble_has_the_required_keys():
    doc = hr.assemble(FUZZ, SAN, SOAK, hr.bad_input_tests(COLLECTED))
    assert REQUIRED <= set(doc)
    assert doc["device"] == "NVIDIA H100 80GB HBM3" and doc["commit"] == "0123456789abcdef"
    assert doc["configs_fuzzed"] == 2000 and doc["mismatches"][0]["seed"] == 17
    assert doc["sanitizer"] == {"memcheck": "clean", "racecheck": "1 hazard warning(s): Warning: Race reported",
                                "synccheck": "clean"}
    assert doc["sanitizer_bad_indices"] == "clean" and doc["bad_device_tables_tried"] == 30
    assert doc["bad_inputs_tried"] == 5
    assert (doc["soak_requests"], doc["soak_aborted"], doc["failed_requests"], doc["gpu_mem_growth_mb"]) == (5000, 12, 0, 1.5)
    assert doc["soak_probe_identical"] is True
    json.dumps(doc)


def test_missing_inputs_are_null():
    doc = hr.assemble(FUZZ, None, None, None)
    assert REQUIRED <= set(doc)
    assert doc["sanitizer"] == {"memcheck": None, "racecheck": None, "synccheck": None}
    assert doc["soak_requests"] is None and doc["gpu_mem_growth_mb"] is None and doc["bad_inputs_tried"] is None
    empty = hr.assemble(None, None, None, 7)
    assert empty["configs_fuzzed"] is None and empty["mismatches"] is None and empty["bad_inputs_tried"] == 7
    assert empty["commit"]  # from git (or "unknown")


def test_markdown():
    md = hr.render_md(hr.assemble(FUZZ, SAN, SOAK, 64))
    assert md.startswith("# Hardening — NVIDIA H100 80GB HBM3")
    assert "2,000 configurations, 1 mismatches" in md and "fp8_e4m3 5.0e-02" in md
    assert "| compute-sanitizer memcheck | clean |" in md and "30 launches: clean" in md
    assert "| bad inputs refused (CPU tests) | 64 |" in md and "5,000 requests, 12 aborted, 0 failed" in md
    assert "seed 17" in md and "--seed 17" in md
    md_empty = hr.render_md(hr.assemble(None, None, None, None))
    assert "— configurations" in md_empty


def test_main_from_a_folder(tmp_path):
    src = tmp_path / "gpu_out"
    src.mkdir()
    (src / "fuzz.json").write_text(json.dumps(FUZZ))
    (src / "sanitize.json").write_text(json.dumps(SAN))
    (src / "soak-h100.json").write_text(json.dumps(SOAK))
    assert hr.main(["--from", str(src), "--out", str(tmp_path / "res"), "--bad-inputs", "9"]) == 0
    doc = json.loads((tmp_path / "res" / "hardening-h100.json").read_text())
    assert doc["bad_inputs_tried"] == 9 and doc["soak_requests"] == 5000 and doc["sanitizer"]["memcheck"] == "clean"
    assert doc["sources"]["fuzz"].endswith("fuzz.json")
    assert (tmp_path / "res" / "hardening-h100.md").read_text().startswith("# Hardening")


def test_real_collection_counts_the_validation_tests():
    lines = hr.collect_tests(paths=("tests/kernel/test_validation.py",))
    ids = hr.bad_input_tests(lines)
    assert len(ids) >= 20  # 11 constructor rejections, 7 page-table checks, the env value, run before plan
    assert all("accepted" not in i and "valid_index_values_pass" not in i for i in ids)
