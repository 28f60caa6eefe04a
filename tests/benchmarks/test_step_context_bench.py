"""step_context_bench on a CPU: its arguments, kernel names and report (the GPU part runs on the host)."""
import pytest

import step_context_bench as sc


def test_kernel_names_peers_and_variants():
    a = sc.parse_args(["--kernels", "kvprefetch_nopdl", "fa3", "kvprefetch_npa_x4"])
    assert a.kernels == ["kvprefetch_nopdl", "fa3", "kvprefetch_npa_x4"]
    assert sc.adapter("kvprefetch_nopdl").pdl is False and sc.adapter("fa3").name == "fa3"


@pytest.mark.parametrize("argv", [["--kernels", "bogus"], ["--kernels", "read_bound"], ["--batches", "0"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        sc.parse_args(argv)


def test_report_ratios_against_the_best_peer():
    base = {"batch": 1, "context": 16384}
    doc = {"device": "H", "commit": "c", "model": "llama-3.2-1b", "layers": 16, "page_size": 1,
           "hbm_copy_gbps": 4200.0, "rows": [
               {**base, "kernel": "floor", "step_us": 1000.0},
               {**base, "kernel": "kvprefetch_nopdl", "step_us": 1320.0, "attention_us_per_layer": 20.0,
                "alone_us_per_layer": 17.0, "max_rel_err": 1e-3},
               {**base, "kernel": "fa3", "step_us": 1304.0, "attention_us_per_layer": 19.0,
                "alone_us_per_layer": 18.0, "max_rel_err": 2e-3},
               {**base, "kernel": "xqa", "skipped": "page size 1"},
               {**base, "kernel": "flashinfer_tc", "step_us": 1400.0, "attention_us_per_layer": 25.0,
                "alone_us_per_layer": 24.0, "max_rel_err": float("inf"), "correct": False}]}
    md = sc.render_md(doc)
    assert "| kvprefetch_nopdl | 1,320 | 20.00 | 17.00 | 0.950 |" in md
    assert "| xqa | skip |" in md and "floor (weights only)" in md
    assert "inf WRONG" in md
