"""Markdown and PNG rendering of both results files, from fake rows."""
import pytest

import kernel_grid as kg
import kernel_report
import kernel_rows as kr
import serving_report
import serving_rows as sr

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def kernel_doc():
    rows = []
    for cfg in kg.select_configs() + kg.select_configs(fp8=True, quick=True):
        for sh in kg.shapes_for(cfg, kg.QUICK_GRID):
            for l2 in kg.REGIMES:
                for k, eff in (("read_bound", 0.95), ("kvprefetch", 0.85), ("flashinfer_cc", 0.7), ("xqa", 0.8)):
                    if k == "xqa" and cfg.page_size == 1:
                        rows.append(kr.make_row(sh, l2, k, skipped="XQA supports page_size 16/32/64/128 only"))
                        continue
                    us = sh.total_bytes / (3.0e12 * eff) * 1e6 + 3.0
                    rows.append(kr.make_row(sh, l2, k, timing=kr.summarize([us]), hbm_copy_gbps=3000.0,
                                            max_rel_err=None if k == "read_bound" else (0.03 if k == "xqa" else 1e-3),
                                            layers=32, cold_sets=2))
    return {"device": "NVIDIA H100 80GB HBM3", "commit": "abc", "dirty": True,
            "versions": {"torch": "2.11.0", "flashinfer": "0.6.15.post1", "sglang": "0.5.17", "cuda": "13.0"},
            "hbm_copy_gbps": 3000.0, "l2_mb": 50.0, "rows": kr.derive(rows)}


def test_kernel_md():
    md = kernel_report.render_md(kernel_doc())
    assert md.startswith("# Decode-attention kernel benchmark — NVIDIA H100 80GB HBM3")
    assert "(dirty)" in md and "3,000 GB/s" in md
    assert "## KV bf16, 32/8 heads, head_dim 128, page 1 — in_sequence" in md
    assert "## KV fp8_e4m3, 32/8 heads, head_dim 128, page 16 — cold" in md
    assert "XQA supports page_size 16/32/64/128 only" in md       # skip reasons listed
    assert "⚠" in md and "Flagged" in md                          # xqa fails the 2e-2 guard in this fake
    assert "| 1 | 1K | 32 |" in md
    assert "## Summary (kvprefetch)" in md
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        lines = [l for l in block.splitlines() if l.startswith("|")]
        if lines:
            assert len({l.count(" | ") for l in lines if "\\|" not in l}) == 1, block


def test_kernel_png(tmp_path):
    pytest.importorskip("matplotlib")
    p = tmp_path / "k.png"
    assert kernel_report.render_png(kernel_doc(), p) is None
    assert p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 10_000


def test_kernel_png_without_rows(tmp_path):
    pytest.importorskip("matplotlib")
    assert kernel_report.render_png({"rows": []}, tmp_path / "x.png") == "no rows with % HBM"


def serving_doc():
    rows = []
    for m in sr.MODELS:
        for i, b in enumerate(sr.BACKENDS):
            for w in sr.parse_workloads(None):
                srv = sr.Server(m, b, 1, "bf16")
                if b == "fa3" and m == "llama-3.2-1b":
                    rows.append(sr.make_row(srv, w, 16, [], skipped="FA3 not staged"))
                    continue
                base = 1000.0 * w.max_concurrency / (1 + w.input_len / 8192) * (1 + 0.05 * i)
                runs = [{"output_throughput": base * f, "median_tpot_ms": 8.0 / f, "p99_tpot_ms": 9.0 / f,
                         "median_ttft_ms": 500.0, "completed": sr.num_prompts_for(w)} for f in (0.98, 1.0, 1.03)]
                rows.append(sr.make_row(srv, w, sr.num_prompts_for(w), runs, attention_backend=b))
    return {"device": "NVIDIA H100 80GB HBM3", "commit": "abc", "dirty": False, "versions": {"sglang": "0.5.17"},
            "rows": sr.derive(rows)}


def test_serving_md():
    md = serving_report.render_md(serving_doc())
    assert md.startswith("# SGLang serving benchmark — NVIDIA H100 80GB HBM3")
    assert "## llama-3.1-8b — page 1, KV bf16" in md and "## llama-3.2-1b — page 1, KV bf16" in md
    assert "×fa3" in md and "×best other" in md
    assert "FA3 not staged" in md
    assert "8K in / 256 out, conc 1" in md and "1K in / 128 out, conc 64" in md
    kv_line = next(l for l in md.splitlines() if l.startswith("| 8K in / 256 out, conc 1 | kvprefetch"))
    assert "0.87x" in kv_line                  # 1.0 / 1.15 (triton is 15% faster in the fake)


def test_serving_md_names_the_kvprefetch_knobs_of_its_runs():
    doc = serving_doc()
    assert "kvprefetch knobs" not in serving_report.render_md(doc)
    doc["runs"] = [{"kvprefetch_env": {"KVPREFETCH_PREFILL_BACKEND": "fa3"}}, {"kvprefetch_env": {}}]
    assert "kvprefetch knobs set for these runs: `KVPREFETCH_PREFILL_BACKEND=fa3`" in serving_report.render_md(doc)


def test_serving_png(tmp_path):
    pytest.importorskip("matplotlib")
    p = tmp_path / "s.png"
    assert serving_report.render_png(serving_doc(), p) is None
    assert p.read_bytes()[:8] == PNG_MAGIC
