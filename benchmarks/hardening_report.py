#!/usr/bin/env python3
"""Assemble results/hardening-<gpu>.json and .md from the fuzz, sanitizer and soak results of one GPU run.

    python benchmarks/hardening_report.py --from DIR     # the fetched $OUT: fuzz*.json, sanitize.json, soak-*.json
    python benchmarks/hardening_report.py --fuzz F --sanitizer S [--soak K] [--bad-inputs N | --no-collect] [--out DIR]

Keys: device, commit, configs_fuzzed, mismatches (the fuzz's list: seed, desc, err, repro), sanitizer {memcheck,
racecheck, synccheck} ("clean" or what was found), bad_inputs_tried, soak_requests, soak_aborted, failed_requests,
gpu_mem_growth_mb; a missing input gives null. bad_inputs_tried counts the CPU tests that feed the op, the backend
or the plugin bad input (collected with pytest, `-m "not gpu"`, named by BAD_INPUT_NAME), parametrised cases each.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402

SOAK_KEYS = ("soak_requests", "soak_aborted", "failed_requests", "gpu_mem_growth_mb")
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
# Test names that say a bad input is refused or survived: rejects/refused/refusals, invalid..., ..._checked,
# must_be..., bad_..., unknown..., wrong_..., malformed, out_of_range.
BAD_INPUT_NAME = re.compile(r"reject|refus|invalid|_checked|must_be|bad_|unknown|wrong_|malformed|out_of_range")


def bad_input_tests(collected: List[str]) -> List[str]:
    """Node ids (from `pytest --collect-only -q`) of bad-input tests, by the test function's name."""
    out = []
    for line in collected:
        line = line.strip()
        if "::" not in line or " " in line:
            continue
        func = line.split("::")[-1].split("[")[0]
        if BAD_INPUT_NAME.search(func):
            out.append(line)
    return out


def collect_tests(repo_root: Path = rio.REPO_ROOT, python: str = sys.executable, paths=("tests",)) -> List[str]:
    r = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-m", "not gpu", "-p", "no:cacheprovider",
                        *paths], cwd=repo_root, capture_output=True, text=True, timeout=600)
    if r.returncode not in (0, 5):
        raise RuntimeError(f"pytest --collect-only failed ({r.returncode}): {(r.stdout + r.stderr)[-500:]}")
    return r.stdout.splitlines()


def by_file(node_ids: List[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for n in node_ids:
        f = n.split("::")[0]
        out[f] = out.get(f, 0) + 1
    return dict(sorted(out.items()))


def _first(*docs: Optional[Dict[str, Any]], key: str):
    return next((d[key] for d in docs if d and d.get(key) not in (None, "")), None)


def assemble(fuzz: Optional[Dict[str, Any]], sanitizer: Optional[Dict[str, Any]], soak: Optional[Dict[str, Any]],
             bad_inputs: Union[List[str], int, None], sources: Optional[Dict[str, Optional[str]]] = None) -> Dict[str, Any]:
    """bad_inputs: the bad-input tests' node ids, or just their count, or None (not counted)."""
    fuzz, san, soak = fuzz or None, sanitizer or None, soak or None
    n_bad = bad_inputs if isinstance(bad_inputs, int) or bad_inputs is None else len(bad_inputs)
    commit = _first(fuzz, san, soak, key="commit") or rio.git_stamp()[0]
    doc: Dict[str, Any] = {
        "device": _first(fuzz, san, soak, key="device"),
        "commit": commit,
        "configs_fuzzed": fuzz.get("configs_fuzzed") if fuzz else None,
        "mismatches": fuzz.get("mismatches") if fuzz else None,
        "sanitizer": {t: (san.get(t) if san else None) for t in SANITIZER_TOOLS},
        "bad_inputs_tried": n_bad,
        **{k: (soak.get(k) if soak else None) for k in SOAK_KEYS},
    }
    doc["dirty"] = _first(fuzz, san, soak, key="dirty")
    doc["versions"] = _first(fuzz, san, soak, key="versions")
    if fuzz:
        doc["fuzz"] = {k: fuzz.get(k) for k in ("mismatch_count", "worst_rel_err", "worst_lse_err", "worst_case",
                                                 "tolerance", "coverage", "modules", "wall_s", "aborted",
                                                 "stopped_early", "repro", "cases_requested", "first_seed")}
    if san:
        doc["sanitizer_bad_indices"] = san.get("memcheck_bad_indices")
        details = san.get("details") or {}
        doc["bad_device_tables_tried"] = (details.get("memcheck_bad_indices") or {}).get("bad_tables_tried")
        doc["sanitizer_details"] = details
    if isinstance(bad_inputs, list):
        doc["bad_inputs_by_file"] = by_file(bad_inputs)
        doc["bad_input_test_pattern"] = BAD_INPUT_NAME.pattern
    if soak:
        doc["soak_probe_identical"] = soak.get("probe_identical")
    doc["sources"] = sources or {}
    return doc


def _fmt(x) -> str:
    return "—" if x is None else (f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x))


def render_md(doc: Dict[str, Any]) -> str:
    fz = doc.get("fuzz") or {}
    worst = (fz.get("worst_rel_err") or {}).get("by_kv_dtype") or {}
    worst_s = ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) or "—"
    mism = doc.get("mismatches")
    n_mism = fz.get("mismatch_count", len(mism) if mism is not None else None)
    san = doc["sanitizer"]
    rows = [
        ("fuzz vs float64 reference", f"{_fmt(doc['configs_fuzzed'])} configurations, {_fmt(n_mism)} mismatches; "
                                      f"worst rel. error by KV dtype: {worst_s}"
                                      + (f"; aborted: {fz['aborted']}" if fz.get("aborted") else "")),
        *((f"compute-sanitizer {t}", _fmt(san.get(t))) for t in SANITIZER_TOOLS),
        ("memcheck, corrupt page tables (device, validation off)",
         f"{_fmt(doc.get('bad_device_tables_tried'))} launches: {_fmt(doc.get('sanitizer_bad_indices'))}"),
        ("bad inputs refused (CPU tests)", _fmt(doc["bad_inputs_tried"])),
        ("soak", f"{_fmt(doc['soak_requests'])} requests, {_fmt(doc['soak_aborted'])} aborted, "
                 f"{_fmt(doc['failed_requests'])} failed, GPU memory growth {_fmt(doc['gpu_mem_growth_mb'])} MB"
                 + ("" if doc.get("soak_probe_identical") is None
                    else f", probe identical: {doc['soak_probe_identical']}")),
    ]
    commit = doc["commit"] or "unknown"
    lines = [f"# Hardening — {doc['device'] or 'unknown device'}", "",
             f"Commit {commit[:12]}{' (dirty)' if doc.get('dirty') else ''}.", "",
             rio.md_table(["check", "result"], rows, align=["l", "l"])]
    if mism:
        lines += ["## Mismatches", ""]
        lines += [f"- seed {m['seed']}: {m.get('reason') or ''} — {m['desc']} (`{m.get('repro') or ''}`)"
                  for m in mism[:20]]
        if len(mism) > 20:
            lines.append(f"- ... {len(mism) - 20} more in the JSON")
        lines.append("")
    return "\n".join(lines)


def _find(folder: Optional[Path], *patterns: str) -> Optional[Path]:
    if folder is None:
        return None
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, help="folder holding fuzz*.json, sanitize.json, soak*.json")
    ap.add_argument("--fuzz", type=Path)
    ap.add_argument("--sanitizer", type=Path)
    ap.add_argument("--soak", type=Path)
    ap.add_argument("--out", type=Path, default=rio.DEFAULT_OUT)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--bad-inputs", type=int, help="use this count instead of collecting the tests")
    g.add_argument("--no-collect", action="store_true", help="leave bad_inputs_tried null")
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    paths = {"fuzz": args.fuzz or _find(args.src, "fuzz.json", "fuzz-*.json"),
             "sanitizer": args.sanitizer or _find(args.src, "sanitize.json"),
             "soak": args.soak or _find(args.src, "soak-*.json", "soak.json")}
    docs = {k: (rio.load_json(p) if p else None) for k, p in paths.items()}
    slug = rio.device_slug(_first(*docs.values(), key="device") or "")
    for kind in ("fuzz", "soak"):  # results committed earlier for this GPU
        if docs[kind] is None and (rio.DEFAULT_OUT / f"{kind}-{slug}.json").exists():
            paths[kind] = rio.DEFAULT_OUT / f"{kind}-{slug}.json"
            docs[kind] = rio.load_json(paths[kind])
    if args.no_collect:
        bad: Union[List[str], int, None] = None
    elif args.bad_inputs is not None:
        bad = args.bad_inputs
    else:
        bad = bad_input_tests(collect_tests())
    doc = assemble(docs["fuzz"], docs["sanitizer"], docs["soak"], bad,
                   sources={k: (str(p) if p else None) for k, p in paths.items()})
    slug = rio.device_slug(doc["device"] or "")
    rio.write_json(args.out / f"hardening-{slug}.json", doc)
    md = render_md(doc)
    rio.write_text(args.out / f"hardening-{slug}.md", md)
    print(md)
    missing = [k for k, d in docs.items() if d is None]
    if missing:
        print(f"hardening_report: no {', '.join(missing)} results found: recorded as null", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
