#!/usr/bin/env python3
"""Summarise the compute-sanitizer runs of benchmarks/gpu_host/sanitize.sh into OUTDIR/sanitize.json.

    python benchmarks/sanitize_summary.py OUTDIR [RUN ...]            # RUN: memcheck racecheck synccheck ...
    python benchmarks/sanitize_summary.py OUTDIR RUN ... --unavailable "why"

For each run it reads OUTDIR/sanitize-RUN.log (the tool's report), .rc (its exit code) and .driver.json (what the
driver launched and checked). A run is "clean" only if the tool reported no error and no hazard warning, exited 0,
and the driver finished every launch with correct outputs; otherwise the value says what was found (first lines).
Exit code: 0 if every run is clean, else 1.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results_io as rio  # noqa: E402

RUNS = ("memcheck", "racecheck", "synccheck", "memcheck_bad_indices")
PREFIX = "========="
UNAVAILABLE_HINTS = ("Device not supported", "Unable to find injection library", "not supported on this platform")
_SKIP = ("COMPUTE-SANITIZER", "ERROR SUMMARY", "RACECHECK SUMMARY", "Host Frame", "Saved host backtrace")
MAX_LINES = 4


def counts(log: str) -> Dict[str, Optional[int]]:
    """{'errors': N | None, 'warnings': N | None} from the tool's summary lines (None: no summary line)."""
    errors = warnings = None
    m = re.search(r"ERROR SUMMARY:\s*(\d+) errors?", log)
    if m:
        errors = int(m.group(1))
    m = re.search(r"RACECHECK SUMMARY:\s*\d+ hazards? displayed \((\d+) errors?, (\d+) warnings?\)", log)
    if m:
        errors = max(errors or 0, int(m.group(1)))
        warnings = int(m.group(2))
    return {"errors": errors, "warnings": warnings}


def first_report(log: str, max_lines: int = MAX_LINES) -> str:
    """The first report block of the log (its first lines, prefixes stripped, joined with ' | ')."""
    block: List[str] = []
    for raw in log.splitlines():
        if not raw.startswith(PREFIX):
            continue
        line = raw[len(PREFIX):].strip()
        if not line:
            if block:
                break
            continue
        if any(s in line for s in _SKIP):
            continue
        block.append(line)
        if len(block) >= max_lines:
            break
    return " | ".join(block)


def verdict(log: Optional[str], rc: Optional[int], driver: Optional[Dict[str, Any]]) -> str:
    if log is None:
        return "not run"
    hint = next((h for h in UNAVAILABLE_HINTS if h in log), None)
    if hint:
        return f"unavailable: compute-sanitizer: {first_report(log) or hint}"
    c = counts(log)
    if c["errors"]:
        return f"{c['errors']} error(s): {first_report(log)}"
    if c["warnings"]:
        return f"{c['warnings']} hazard warning(s): {first_report(log)}"
    if rc == 124:
        return "timed out (the tool's report is incomplete)"
    if driver is None or not driver.get("completed"):
        why = (driver or {}).get("exception") or "no driver JSON"
        return f"incomplete: the driver stopped: {why}" + (f" | {first_report(log)}" if first_report(log) else "")
    if c["errors"] is None:
        return f"no summary line in the tool's log (exit code {rc})"
    if rc not in (0, None):
        return f"exit code {rc} with no error reported"
    wrong = driver.get("wrong_outputs") or []
    if wrong:
        return f"{len(wrong)} wrong output(s): {wrong[0]['name']}: {wrong[0]['reason']}"
    if not driver.get("launches"):
        return "no kernel launch ran"
    return "clean"


def _read(path: Path) -> Optional[str]:
    return path.read_text(errors="replace") if path.exists() else None


def summarize(outdir: Path, runs=RUNS, unavailable: Optional[str] = None) -> Dict[str, Any]:
    verdicts: Dict[str, str] = {}
    details: Dict[str, Any] = {}
    drivers = []
    for run in runs:
        if unavailable:
            verdicts[run] = f"unavailable: {unavailable}"
            continue
        log = _read(outdir / f"sanitize-{run}.log")
        rc_s = _read(outdir / f"sanitize-{run}.rc")
        rc = int(rc_s.strip()) if rc_s and rc_s.strip().lstrip("-").isdigit() else None
        driver = rio.load_json(outdir / f"sanitize-{run}.driver.json")
        verdicts[run] = verdict(log, rc, driver)
        drv = driver or {}
        drivers.append(drv)
        details[run] = {"exit_code": rc, **(counts(log) if log else {}), "log": f"sanitize-{run}.log",
                        "launches": drv.get("launches"), "cases": len(drv.get("results") or []),
                        "wrong_outputs": len(drv.get("wrong_outputs") or []), "modules": drv.get("modules"),
                        "bad_tables_tried": drv.get("bad_tables_tried"),
                        "driver_wall_s": drv.get("wall_s")}
    first = next((d for d in drivers if d), {})
    return {"kind": "sanitize", "device": first.get("device"), "commit": first.get("commit"),
            "dirty": first.get("dirty"), **verdicts, "all_clean": all(v == "clean" for v in verdicts.values()),
            "details": details}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("runs", nargs="*", default=list(RUNS))
    ap.add_argument("--unavailable", help="compute-sanitizer could not run: record this reason for every run")
    args = ap.parse_args(argv)
    doc = summarize(args.outdir, args.runs or RUNS, args.unavailable)
    rio.write_json(args.outdir / "sanitize.json", doc)
    print(json.dumps({r: doc[r] for r in (args.runs or RUNS)}, indent=1))
    return 0 if doc["all_clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
