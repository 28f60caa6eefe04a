"""Refuse to patch an SGLang release this project was not tested against."""

from __future__ import annotations

# The one place the tested range lives (pyproject's `sglang` extra pins the same release).
TESTED_SGLANG_SPECIFIER = ">=0.5.17,<0.5.18"


def installed_sglang_version() -> str:
    """The installed SGLang's version, read from its package metadata (does not import sglang)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        raise RuntimeError(
            "kvprefetch.patches: SGLang is not installed (no 'sglang' distribution found); "
            f"install sglang{TESTED_SGLANG_SPECIFIER}, e.g. `pip install 'kvprefetch[sglang]'`."
        ) from None


def check_sglang_version(installed: str | None = None) -> str:
    """Return the installed version if it is in TESTED_SGLANG_SPECIFIER, else raise RuntimeError."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if installed is None:
        installed = installed_sglang_version()
    try:
        ok = Version(installed) in SpecifierSet(TESTED_SGLANG_SPECIFIER, prereleases=True)
    except InvalidVersion:
        ok = False
    if not ok:
        raise RuntimeError(
            f"kvprefetch.patches: installed SGLang {installed} is outside the tested range "
            f"sglang{TESTED_SGLANG_SPECIFIER}, so the 'kvprefetch' attention backend was NOT registered. "
            f"Install a tested release (`pip install 'sglang{TESTED_SGLANG_SPECIFIER}'`), or port "
            "kvprefetch/patches to the new SGLang release and widen TESTED_SGLANG_SPECIFIER in "
            "patches/version_guard.py."
        )
    return installed
