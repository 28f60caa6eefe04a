"""Result files: device slug, commit stamp, package versions, atomic JSON, row merging, markdown tables.

Pure Python (no torch, no GPU) so the CPU tests can exercise every function here.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"

_TRUE = {"1", "true", "yes", "y", "dirty"}
_FALSE = {"0", "false", "no", "n", "clean", ""}


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA H200' -> 'h200', 'NVIDIA H100 PCIe' -> 'h100'.

    The first word that looks like a GPU model (letters then digits, e.g. h100, a100, b200, l40s,
    rtx4090) wins; otherwise the whole name, slugified.
    """
    words = re.findall(r"[a-z0-9]+", name.lower())
    words = [w for w in words if w not in ("nvidia", "geforce", "tesla", "amd", "instinct")]
    for i, w in enumerate(words):
        if re.fullmatch(r"[a-z]{1,4}\d{2,4}[a-z]?", w):
            return w
        if re.fullmatch(r"[a-z]{1,4}", w) and i + 1 < len(words) and re.fullmatch(r"\d{3,4}[a-z]?", words[i + 1]):
            return w + words[i + 1]        # 'RTX 4090' -> rtx4090
    slug = "-".join(words)
    return slug or "unknown"


def _parse_dirty(value: str) -> Optional[bool]:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return None


def git_stamp(repo_root: Path = REPO_ROOT, env: Optional[Dict[str, str]] = None) -> Tuple[str, Optional[bool]]:
    """(commit, dirty). KVPREFETCH_COMMIT / KVPREFETCH_DIRTY win (the GPU host copy has no .git);
    else ask git; else ('unknown', None)."""
    env = os.environ if env is None else env
    commit = env.get("KVPREFETCH_COMMIT")
    dirty_s = env.get("KVPREFETCH_DIRTY")
    dirty: Optional[bool] = _parse_dirty(dirty_s) if dirty_s is not None else None
    if commit and dirty_s is not None:
        return commit, dirty
    git_commit, git_dirty = "unknown", None
    try:
        r = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True, text=True,
                           timeout=10)
        if r.returncode == 0 and r.stdout.strip():
            git_commit = r.stdout.strip()
            s = subprocess.run(["git", "-C", str(repo_root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
            if s.returncode == 0:
                git_dirty = bool(s.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return (commit or git_commit), (dirty if dirty_s is not None else git_dirty)


def package_versions(names: Dict[str, str]) -> Dict[str, Optional[str]]:
    """{'torch': 'torch', 'flashinfer': 'flashinfer-python'} -> {'torch': '2.11.0', 'flashinfer': None}.
    Reads installed metadata only: importing sglang takes 10+ s."""
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for key, dist in names.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


DEFAULT_PACKAGES = {
    "torch": "torch",
    "flashinfer": "flashinfer-python",
    "sglang": "sglang",
    "sglang_kernel": "sglang-kernel",
    "triton": "triton",
    "kvprefetch": "kvprefetch",
}


def write_json(path: Path, obj: Any) -> None:
    """Atomic write (tmp file + rename): a job killed mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(out: Path, stem: str, doc: Dict[str, Any], md: str) -> None:
    """<out>/<stem>.json (the document) and <out>/<stem>.md (its table), and say so."""
    write_json(Path(out) / f"{stem}.json", doc)
    write_text(Path(out) / f"{stem}.md", md)
    print(f"wrote {out}/{stem}.json and .md")


def load_json(path: Path) -> Optional[Dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def merge_rows(old: Iterable[Dict[str, Any]], new: Iterable[Dict[str, Any]],
               key: Callable[[Dict[str, Any]], Tuple]) -> List[Dict[str, Any]]:
    """Rows of `new` replace rows of `old` with the same key; other old rows are kept, in order
    (old rows first, then rows whose key was not in old)."""
    new = list(new)
    new_by_key = {key(r): r for r in new}
    out: List[Dict[str, Any]] = []
    seen = set()
    for r in old:
        k = key(r)
        if k in new_by_key:
            if k not in seen:
                out.append(new_by_key[k])
                seen.add(k)
        else:
            out.append(r)
    for r in new:
        k = key(r)
        if k not in seen:
            out.append(new_by_key[k])
            seen.add(k)
    return out


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[Sequence[str]] = None) -> str:
    """GitHub markdown table. align: per column 'l' or 'r' (default: first column left, rest right)."""
    if align is None:
        align = ["l"] + ["r"] * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]

    def cell(x: Any) -> str:
        s = "" if x is None else str(x)
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(cell(x) for x in r) + " |")
    return "\n".join(lines) + "\n"


def fmt_num(x: Optional[float], nd: int = 1) -> str:
    if x is None:
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def fmt_tokens(n: int) -> str:
    """1024 -> '1K', 131072 -> '128K', 512 -> '512'."""
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def stamp(extra_versions: Optional[Dict[str, Optional[str]]] = None) -> Dict[str, Any]:
    """{commit, dirty, versions} for a results file header."""
    commit, dirty = git_stamp()
    versions = package_versions(DEFAULT_PACKAGES)
    if extra_versions:
        versions.update(extra_versions)
    return {"commit": commit, "dirty": dirty, "versions": versions}
