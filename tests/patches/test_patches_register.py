"""Registration through SGLang's own plugin loader, idempotence, and the lazy factory."""

import logging
import sys
import types

import pytest

pytest.importorskip("sglang", reason="sglang is not installed (bash .ci/install.sh installs it)")
pytestmark = pytest.mark.sglang


def test_load_plugins_registers_choice_and_factory(sglang_registries, monkeypatch, caplog):
    from sglang.srt.plugins import load_plugins

    from kvprefetch.patches import create_kvprefetch_backend

    choices, backends = sglang_registries
    assert "kvprefetch" not in choices and "kvprefetch" not in backends

    monkeypatch.setenv("SGLANG_PLUGINS", "kvprefetch")  # SGLang's own filter: only our plugin
    with caplog.at_level(logging.INFO):
        load_plugins()

    # load_plugins() logs a failing plugin and carries on, so look for its error too.
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
    assert "kvprefetch" in choices
    assert backends["kvprefetch"] is create_kvprefetch_backend


def test_apply_is_idempotent(sglang_registries):
    from kvprefetch.patches import apply, create_kvprefetch_backend

    choices, backends = sglang_registries
    before = [c for c in choices]
    for _ in range(3):
        apply()
    assert choices.count("kvprefetch") == 1
    assert choices == before + ["kvprefetch"]
    assert backends["kvprefetch"] is create_kvprefetch_backend


def test_apply_after_load_plugins_changes_nothing(sglang_registries, monkeypatch):
    from sglang.srt.plugins import load_plugins

    from kvprefetch.patches import apply

    choices, backends = sglang_registries
    monkeypatch.setenv("SGLANG_PLUGINS", "kvprefetch")
    load_plugins()
    snapshot = (list(choices), dict(backends))
    apply()
    load_plugins()  # SGLang's own guard makes this a no-op
    assert (list(choices), dict(backends)) == snapshot


def _fake_integration(monkeypatch):
    """Stand in for kvprefetch.integration.backend (the CUDA side) and record what it is called with."""
    calls = []
    fake = types.ModuleType("kvprefetch.integration.backend")

    def create_backend(model_runner):
        calls.append(model_runner)
        return ("kvprefetch-backend", model_runner)

    fake.create_backend = create_backend
    monkeypatch.setitem(sys.modules, "kvprefetch.integration.backend", fake)
    return calls


def test_factory_calls_integration_create_backend(sglang_registries, monkeypatch):
    from kvprefetch.patches import apply

    calls = _fake_integration(monkeypatch)
    apply()
    _, backends = sglang_registries
    runner = object()
    assert backends["kvprefetch"](runner) == ("kvprefetch-backend", runner)
    assert calls == [runner]


def test_model_runner_backend_builder_reaches_factory(sglang_registries, monkeypatch):
    """SGLang's model runner builds each side of a prefill/decode split with this function (SGLang
    0.5.17 internals): a registered name reaches our factory, an unknown one is refused."""
    from sglang.srt.model_executor.model_runner_components.attention_backend_setup import (
        _build_full_attention_backend_from_str as build,
    )

    from kvprefetch.patches import apply

    calls = _fake_integration(monkeypatch)
    runner = types.SimpleNamespace()
    with pytest.raises(ValueError, match="Invalid attention backend: kvprefetch"):
        build(model_runner=runner, backend_str="kvprefetch", init_new_workspace=False)
    apply()
    backend = build(model_runner=runner, backend_str="kvprefetch", init_new_workspace=False)
    assert backend == ("kvprefetch-backend", runner)
    assert calls == [runner] and runner.init_new_workspace is False
