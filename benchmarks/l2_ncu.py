"""Nsight Compute for l2_telemetry.py: finding ncu, its command line, running it, and its `--csv --page raw` output
-> per-call L2 / DRAM numbers, each kernel launch attributed to its (shape, kernel, call) by the NVTX push/pop
range it was launched in. Pure Python (no torch), so the CPU tests cover it.

The measured calls run inside ranges `l2tel` > `l2.<batch>x<ctx>.<kernel>.c<call>`; the raw page has one
row per profiled launch, a units row under the header, and an NVTX column (header starting "thread
Domain:Push/Pop_Range") whose text holds the range stack. Only the call label is parsed out of that text,
so its exact layout (domain, payload, colour fields) does not matter.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

TAG = "l2tel"   # outer range of every measured call: ncu --nvtx-include "l2tel/"
HIT = "lts__t_sector_hit_rate.pct"
SECTORS = "lts__t_sectors.sum"
DRAM_PCT = "dram__throughput.avg.pct_of_peak_sustained_elapsed"
DRAM_READ = "dram__bytes_read.sum"
DURATION = "gpu__time_duration.sum"
METRICS = (HIT, SECTORS, DRAM_PCT, DRAM_READ, DURATION)

_LABEL = re.compile(r"l2\.(\d+)x(\d+)\.([A-Za-z0-9_]+)\.c(\d+)")
# Lines that mean ncu could not collect anything; the first one found is the rows' skip reason.
FATAL_MARKERS = ("ERR_NVGPUCTRPERM", "LibraryNotLoaded", "ERR_NVGPUCTRBUSY", "==ERROR==",
                 "No kernels were profiled")
_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}   # ncu's unit prefixes are decimal
_TIME_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
            "second": 1e6, "s": 1e6}


def find(explicit: Optional[str] = None) -> Optional[str]:
    cands = [explicit or os.environ.get("NCU"), shutil.which("ncu")]
    cands += sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"), reverse=True)
    cands += ["/usr/local/cuda/bin/ncu"] + sorted(glob.glob("/usr/local/cuda-*/bin/ncu"), reverse=True)
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def command(ncu: str, log: Path, child: Sequence[str], collect: Optional[Sequence[str]] = None) -> List[str]:
    """`--print-units base`: plain byte / nsecond / sector units; `--log-file`: ncu's output (the CSV included)
    apart from the child's own output. ``collect``: what to measure (default: this module's METRICS)."""
    collect = list(collect) if collect is not None else ["--metrics", ",".join(METRICS)]
    return [ncu, "--clock-control", "none", "--cache-control", "all", "--target-processes", "all",
            "--csv", "--page", "raw", "--print-units", "base", *collect,
            "--nvtx", "--nvtx-include", f"{TAG}/", "--log-file", str(log), *child]


def profiled(ncu: str, child_argv: Callable[[Path], List[str]], timeout_s: float,
             collect: Optional[Sequence[str]] = None) -> Tuple[int, str, Dict[str, Any], List[str]]:
    """Run the child (``child_argv(manifest_path)``) under ncu: (exit code, ncu's text, the child's manifest, the
    command line)."""
    with tempfile.TemporaryDirectory(prefix="ncu-") as td:
        log, manifest = Path(td) / "ncu.log", Path(td) / "manifest.json"
        cmd = command(ncu, log, child_argv(manifest), collect)
        rc, text = profile(cmd, log, timeout_s)
        try:
            man = json.loads(manifest.read_text())
        except (OSError, ValueError):
            man = {}
    return rc, text, man, cmd


def describe_command(explicit: Optional[str], child_argv: Callable[[Path], List[str]],
                     collect: Optional[Sequence[str]] = None) -> str:
    """For --dry-run: where ncu is and the command line a run would use (placeholder temporary paths)."""
    ncu = find(explicit)
    td = Path(tempfile.gettempdir()) / "ncu-XXXX"
    cmd = command(ncu or "ncu", td / "ncu.log", child_argv(td / "manifest.json"), collect)
    return (f"ncu: {ncu or 'NOT FOUND (a run would write every row skipped)'}\n"
            f"command: {shlex.join(cmd)}")


def version(ncu: str) -> Optional[str]:
    try:
        r = subprocess.run([ncu, "--version"], capture_output=True, text=True, timeout=60)
        return ([l.strip() for l in r.stdout.splitlines() if l.strip()] or [None])[-1]
    except (OSError, subprocess.SubprocessError):
        return None


def profile(cmd: List[str], log: Path, timeout_s: float) -> Tuple[int, str]:
    """Run ncu + child, echo their lines, return (exit code, 124 on timeout; ncu log + output) for the parser."""
    lines: List[str] = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True)
    except OSError as e:
        return 127, f"==ERROR== could not start ncu: {e}"
    timed_out: List[bool] = []

    def kill() -> None:            # ncu and the profiled child: the whole process group
        timed_out.append(True)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if not line.startswith('"'):          # progress and ncu messages; CSV rows stay quiet
                print(line, end="", flush=True)
        rc = proc.wait()
    finally:
        timer.cancel()
    if timed_out:
        rc = 124
        lines.append(f"==ERROR== ncu + child killed after {timeout_s:.0f} s\n")
    text = log.read_text(errors="replace") if log.exists() else ""
    return rc, text + "\n" + "".join(lines)


def call_label(batch: int, ctx: int, kernel: str, call: int) -> str:
    return f"l2.{batch}x{ctx}.{kernel}.c{call}"


def number(cell: Any) -> Optional[float]:
    """'1,234.5' -> 1234.5; '', 'n/a' -> None."""
    s = str(cell or "").strip().replace(",", "")
    try:
        return float(s)
    except ValueError:
        return None


def scaled(value: Optional[float], unit: str, base: str) -> Optional[float]:
    """value in `unit` ('Mbyte', 'sector', 'Ksector', ...) expressed in `base` ('byte', 'sector')."""
    if value is None:
        return None
    u = (unit or "").strip().lower()
    if u.endswith(base) and u[: -len(base)] in _PREFIX:
        return value * _PREFIX[u[: -len(base)]]
    if u == "":
        return value
    raise ValueError(f"unknown unit {unit!r} (expected a multiple of {base})")


def to_us(value: Optional[float], unit: str) -> Optional[float]:
    if value is None:
        return None
    u = (unit or "nsecond").strip().lower()
    if u not in _TIME_US:
        raise ValueError(f"unknown time unit {unit!r}")
    return value * _TIME_US[u]


def read_raw(text: str) -> Tuple[List[str], Dict[str, str], List[Dict[str, str]]]:
    """(header, units by column, one dict per launch). Skips ncu's '==PROF==' / '==WARNING==' lines and anything
    else that is not a row of the table (e.g. the profiled program's own output on the same stream)."""
    lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("==")]
    header: List[str] = []
    units: Dict[str, str] = {}
    rows: List[Dict[str, str]] = []
    for cells in csv.reader(lines):
        if cells and cells[0] == "ID" and "Kernel Name" in cells:
            if not header:
                header = cells
            continue                       # a repeated header (several processes) is skipped
        if not header or len(cells) != len(header):
            continue
        if cells[0] == "" and not units:
            units = dict(zip(header, cells))
        elif cells[0].strip().isdigit():
            rows.append(dict(zip(header, cells)))
    # the same table read twice (log file and the output stream both hold it) must not double each call
    unique = {(r.get("Process ID"), r["ID"]): r for r in reversed(rows)}
    return header, units, [unique[k] for k in dict.fromkeys((r.get("Process ID"), r["ID"]) for r in rows)]


def unmeasured_reason(text: str, rc: int) -> str:
    """Why a profiled run left a row without numbers: ncu's own error, else the child's exit, else no attribution."""
    return fatal_reason(text) or (f"profiled child exited {rc}" if rc else
                                  "no profiled launch was attributed to its NVTX ranges")


def fatal_reason(text: str) -> Optional[str]:
    for marker in FATAL_MARKERS:
        for line in text.splitlines():
            if marker in line:
                return line.strip()[:400]
    return None


def call_of(row: Dict[str, str], header: List[str]) -> Optional[Dict[str, Any]]:
    """{batch, ctx, kernel, call} of the call range a launch sits in; None outside every call range."""
    labels = {m.group(0) for h in header if "Push/Pop_Range" in h for m in _LABEL.finditer(row.get(h, ""))}
    if len(labels) > 1:
        raise ValueError(f"launch {row.get('ID')} is inside several call ranges: {sorted(labels)}")
    if not labels:
        return None
    m = _LABEL.fullmatch(labels.pop())
    return {"batch": int(m.group(1)), "ctx": int(m.group(2)), "kernel": m.group(3), "call": int(m.group(4))}


def launches(text: str) -> List[Dict[str, Any]]:
    """One record per profiled launch that sits in a call range: label fields + the metrics in base units."""
    header, units, rows = read_raw(text)
    out = []
    for r in rows:
        call = call_of(r, header)
        if call is None:
            continue
        out.append({
            **call, "name": r.get("Kernel Name", "?"),
            "hit_pct": number(r.get(HIT)),
            "sectors": scaled(number(r.get(SECTORS)), units.get(SECTORS, ""), "sector"),
            "dram_pct": number(r.get(DRAM_PCT)),
            "dram_bytes": scaled(number(r.get(DRAM_READ)), units.get(DRAM_READ, ""), "byte"),
            "duration_us": to_us(number(r.get(DURATION)), units.get(DURATION, "")),
        })
    return out


def _per_call(ks: List[Dict[str, Any]]) -> Dict[str, Any]:
    dur = sum(k["duration_us"] or 0.0 for k in ks)
    if all(k["sectors"] is not None and k["hit_pct"] is not None for k in ks) and sum(k["sectors"] for k in ks) > 0:
        hit = sum(k["hit_pct"] * k["sectors"] for k in ks) / sum(k["sectors"] for k in ks)
        weighting = "sectors"
    else:
        hit = max(ks, key=lambda k: k["duration_us"] or 0.0)["hit_pct"]
        weighting = "longest kernel"
    dram = (sum((k["dram_pct"] or 0.0) * (k["duration_us"] or 0.0) for k in ks) / dur) if dur > 0 else None
    return {"duration_us": dur, "l2_hit_pct": hit, "hit_weighting": weighting, "dram_pct_peak": dram,
            "dram_read_bytes": sum(k["dram_bytes"] or 0.0 for k in ks), "kernels": len(ks),
            "names": [k["name"] for k in ks]}


def aggregate(records: Iterable[Dict[str, Any]]) -> Dict[Tuple[int, int, str], Dict[str, Any]]:
    """(batch, ctx, kernel) -> per-call values averaged over its calls. Per call: durations and DRAM bytes summed
    over the call's launches (a split-KV merge is a second launch), the L2 hit rate weighted by each launch's
    L2 sectors (the longest launch's when a sector count is missing), DRAM % of peak weighted by duration."""
    calls: Dict[Tuple, Dict[int, List[Dict[str, Any]]]] = {}
    for r in records:
        calls.setdefault((r["batch"], r["ctx"], r["kernel"]), {}).setdefault(r["call"], []).append(r)
    out = {}
    for key, by_call in calls.items():
        per = [_per_call(by_call[c]) for c in sorted(by_call)]

        def mean(f: str) -> Optional[float]:
            xs = [p[f] for p in per if p[f] is not None]
            return sum(xs) / len(xs) if xs else None

        counts = sorted({p["kernels"] for p in per})
        out[key] = {
            "l2_hit_pct": mean("l2_hit_pct"), "dram_pct_peak": mean("dram_pct_peak"),
            "dram_read_mb": mean("dram_read_bytes") / 1e6, "duration_us": mean("duration_us"),
            "kernels_per_call": counts[0] if len(counts) == 1 else counts, "calls": len(per),
            "hit_weighting": "sectors" if all(p["hit_weighting"] == "sectors" for p in per) else "longest kernel",
            "kernel_names": sorted({n for p in per for n in p["names"]}),
        }
    return out
