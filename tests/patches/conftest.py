"""Fixtures for the SGLang-plugin tests: SGLang's registries are module globals, so every test that
registers the backend runs against a snapshot that is restored afterwards (in place, because
SGLang's argparse actions hold references to the very same list objects)."""

import pytest

SKIP_REASON = "sglang is not installed (bash .ci/install.sh installs it)"


@pytest.fixture
def sglang_registries(monkeypatch):
    """Yield (ATTENTION_BACKEND_CHOICES, ATTENTION_BACKENDS) with 'kvprefetch' removed and SGLang's
    load-once guard reset; restore all three afterwards."""
    pytest.importorskip("sglang", reason=SKIP_REASON)
    import sglang.srt.plugins as plugins
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES

    saved_choices = list(ATTENTION_BACKEND_CHOICES)
    saved_backends = dict(ATTENTION_BACKENDS)
    ATTENTION_BACKEND_CHOICES[:] = [c for c in ATTENTION_BACKEND_CHOICES if c != "kvprefetch"]
    ATTENTION_BACKENDS.pop("kvprefetch", None)
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    try:
        yield ATTENTION_BACKEND_CHOICES, ATTENTION_BACKENDS
    finally:
        ATTENTION_BACKEND_CHOICES[:] = saved_choices
        ATTENTION_BACKENDS.clear()
        ATTENTION_BACKENDS.update(saved_backends)


@pytest.fixture
def sglang_parser():
    """A fresh instance of SGLang's own command-line parser (built the way launch_server builds it)."""

    pytest.importorskip("sglang", reason=SKIP_REASON)

    def build():
        import argparse

        from sglang.srt.server_args import ServerArgs

        parser = argparse.ArgumentParser(prog="sglang-test")
        ServerArgs.add_cli_args(parser)
        return parser

    return build
