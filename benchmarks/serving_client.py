#!/usr/bin/env python3
"""Run SGLang's own `python -m sglang.benchmark.serving` several times in ONE process (it takes ~10 s to
import; a serving point has 3+ repeats). Reads one JSON job per stdin line, {"id": ..., "argv": [...]} (the
exact command-line arguments of `python -m sglang.benchmark.serving`), runs `cli_main()` with that argv, and
prints a marker line `@@KVP-JOB <id> ok|failed <reason>` when it is done. Results go to the job's own
--output-file (bench_serving appends one JSON line per run). An empty line or EOF ends the process."""
from __future__ import annotations

import json
import sys
import traceback

MARK = "@@KVP-JOB"


def main() -> int:
    try:
        from sglang.benchmark.serving import cli_main
    except ImportError:  # older layout
        from sglang.bench_serving import cli_main
    print(f"{MARK} ready ok", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            break
        job = json.loads(line)
        status, reason = "ok", ""
        sys.argv = ["sglang.benchmark.serving"] + [str(a) for a in job["argv"]]
        try:
            cli_main()
        except SystemExit as e:
            if e.code not in (0, None):
                status, reason = "failed", f"SystemExit({e.code})"
        except BaseException as e:  # report and keep serving the next job
            traceback.print_exc()
            status, reason = "failed", f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
        sys.stdout.flush()
        print(f"{MARK} {job['id']} {status} {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
