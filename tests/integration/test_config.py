"""KVPREFETCH_* environment knobs (integration/config.py)."""

import pytest

from kvprefetch.integration.config import (
    ENV_DISABLE,
    ENV_PREFETCH_DISTANCE,
    ENV_VALIDATE,
    KvPrefetchConfig,
    load_config,
)


def test_defaults_when_unset():
    cfg = load_config({})
    assert cfg == KvPrefetchConfig(prefetch_distance=None, disable=False, validate=False)
    assert cfg.warnings == ()
    assert "kernel default" in cfg.describe()


@pytest.mark.parametrize("raw,expected", [("0", 0), ("4", 4), (" 8 ", 8), ("", None)])
def test_prefetch_distance(raw, expected):
    cfg = load_config({ENV_PREFETCH_DISTANCE: raw})
    assert cfg.prefetch_distance == expected
    assert cfg.warnings == ()


@pytest.mark.parametrize("raw", ["abc", "1.5", "-3", "0x10", "9"])
def test_invalid_prefetch_distance_warns_and_uses_default(raw):
    cfg = load_config({ENV_PREFETCH_DISTANCE: raw})
    assert cfg.prefetch_distance is None
    assert len(cfg.warnings) == 1 and ENV_PREFETCH_DISTANCE in cfg.warnings[0]


@pytest.mark.parametrize("raw,expected", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("y", True), ("on", True),
    ("0", False), ("false", False), ("No", False), ("n", False), ("off", False), ("", False),
])
def test_bools_sglang_style(raw, expected):
    cfg = load_config({ENV_DISABLE: raw, ENV_VALIDATE: raw})
    assert cfg.disable is expected and cfg.validate is expected
    assert cfg.warnings == ()


def test_invalid_bool_warns_and_keeps_default():
    cfg = load_config({ENV_DISABLE: "maybe", ENV_VALIDATE: "2"})
    assert cfg.disable is False and cfg.validate is False
    assert len(cfg.warnings) == 2
    assert any(ENV_DISABLE in w for w in cfg.warnings) and any(ENV_VALIDATE in w for w in cfg.warnings)


def test_reads_os_environ(monkeypatch):
    monkeypatch.setenv(ENV_PREFETCH_DISTANCE, "3")
    monkeypatch.setenv(ENV_DISABLE, "1")
    monkeypatch.delenv(ENV_VALIDATE, raising=False)
    cfg = load_config()
    assert (cfg.prefetch_distance, cfg.disable, cfg.validate) == (3, True, False)
    text = cfg.describe()
    assert "prefetch_distance=3" in text and "disable=1" in text and "validate=0" in text


def test_config_module_imports_neither_torch_nor_sglang():
    import subprocess
    import sys

    code = (
        "import sys; import kvprefetch.integration.config, kvprefetch.integration.refusal, "
        "kvprefetch.integration.roles; "
        "bad = [m for m in ('torch', 'sglang') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_prefill_backend_choice():
    assert load_config({}).prefill_backend == "auto"
    assert load_config({"KVPREFETCH_PREFILL_BACKEND": " FA3 "}).prefill_backend == "fa3"
    assert load_config({"KVPREFETCH_PREFILL_BACKEND": "flashinfer"}).prefill_backend == "flashinfer"
    bad = load_config({"KVPREFETCH_PREFILL_BACKEND": "triton"})
    assert bad.prefill_backend == "auto" and "KVPREFETCH_PREFILL_BACKEND" in bad.warnings[0]
    assert "prefill=fa3 (KVPREFETCH_PREFILL_BACKEND)" in load_config({"KVPREFETCH_PREFILL_BACKEND": "fa3"}).describe()


def test_pdl_knob():
    """Off unless asked: the serving measurement (NOTES.md, run 15a); ``auto`` is the kernel layer's choice."""
    assert load_config({}).pdl is False and "pdl=0 (KVPREFETCH_PDL)" in load_config({}).describe()
    assert load_config({"KVPREFETCH_PDL": ""}).pdl is False
    assert load_config({"KVPREFETCH_PDL": "1"}).pdl is True
    assert load_config({"KVPREFETCH_PDL": " 0 "}).pdl is False
    assert load_config({"KVPREFETCH_PDL": "On"}).pdl is True and load_config({"KVPREFETCH_PDL": "AUTO"}).pdl is None
    assert "pdl=auto (KVPREFETCH_PDL)" in load_config({"KVPREFETCH_PDL": "auto"}).describe()
    bad = load_config({"KVPREFETCH_PDL": "maybe"})
    assert bad.pdl is False and "KVPREFETCH_PDL" in bad.warnings[0] and "using 0" in bad.warnings[0]
