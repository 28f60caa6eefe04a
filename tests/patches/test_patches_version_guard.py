"""The SGLang version guard: accepted range, and the message when it refuses."""

import pytest

from kvprefetch.patches import version_guard
from kvprefetch.patches.version_guard import TESTED_SGLANG_SPECIFIER, check_sglang_version


@pytest.mark.parametrize("version", ["0.5.17", "0.5.17.post1", "0.5.17+cu130"])
def test_tested_releases_pass(version):
    assert check_sglang_version(version) == version


@pytest.mark.parametrize("version", ["0.5.16", "0.5.18", "0.6.0", "0.5.18rc1", "not-a-version"])
def test_other_releases_refused_with_a_clear_message(version):
    with pytest.raises(RuntimeError) as exc:
        check_sglang_version(version)
    msg = str(exc.value)
    assert f"installed SGLang {version}" in msg
    assert TESTED_SGLANG_SPECIFIER in msg
    assert "pip install 'sglang>=0.5.17,<0.5.18'" in msg
    assert "TESTED_SGLANG_SPECIFIER" in msg  # what to change when porting


def test_missing_sglang_is_reported(monkeypatch):
    import importlib.metadata as md

    def no_such_dist(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", no_such_dist)
    with pytest.raises(RuntimeError, match="SGLang is not installed"):
        version_guard.installed_sglang_version()


@pytest.mark.sglang
def test_installed_sglang_is_in_range():
    pytest.importorskip("sglang", reason="sglang is not installed (bash .ci/install.sh installs it)")
    assert check_sglang_version() == version_guard.installed_sglang_version()


@pytest.mark.sglang
def test_apply_refuses_and_registers_nothing_on_untested_sglang(sglang_registries, monkeypatch):
    pytest.importorskip("sglang", reason="sglang is not installed (bash .ci/install.sh installs it)")
    from kvprefetch.patches import apply

    monkeypatch.setattr(version_guard, "installed_sglang_version", lambda: "0.5.18")
    with pytest.raises(RuntimeError, match=r"installed SGLang 0\.5\.18 is outside the tested range"):
        apply()
    choices, backends = sglang_registries
    assert "kvprefetch" not in choices and "kvprefetch" not in backends
