"""How long a server's kvprefetch start-up spends getting its decode module, three ways: prebuilt, cold JIT
(nvcc, empty cache), JIT cache (the build just made). Each way in a fresh Python process, as a server start is.

    python benchmarks/startup_probe.py [--out benchmarks/results]     # writes startup-<gpu>.json

Needs nvcc for the cold build, and KVPREFETCH_PREBUILT_DIR for the prebuilt row (skipped without it).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import results_io as rio

CONFIGS = {  # label -> (q dtype, fp8 KV, head_dim): the Llama-3.1-8B shape's modules
    "llama-3.1-8b bf16 KV": ("bf16", False, 128),
    "llama-3.1-8b fp8 KV": ("bf16", True, 128),
}

_CHILD = """
import json, sys
from kvprefetch.jit_kernels import jit_spec, loader
cfg = jit_spec.make_config(sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), 0)
loader.load_module(cfg)
load = loader.module_loads[jit_spec.module_name(cfg)]
print(json.dumps({"module": load.name, "source": load.source, "seconds": round(load.seconds, 3)}))
"""


def probe(q: str, fp8: bool, hd: int, env: dict) -> dict:
    p = subprocess.run([sys.executable, "-c", _CHILD, q, "1" if fp8 else "0", str(hd)], env=env,
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    prebuilt = os.environ.get("KVPREFETCH_PREBUILT_DIR")
    rows = []
    for label, (q, fp8, hd) in CONFIGS.items():
        with tempfile.TemporaryDirectory() as cache:
            jit_env = {k: v for k, v in os.environ.items() if k != "KVPREFETCH_PREBUILT_DIR"}
            jit_env["FLASHINFER_WORKSPACE_BASE"] = cache
            row = {"config": label,
                   "prebuilt": probe(q, fp8, hd, dict(os.environ)) if prebuilt else {"skipped": "no prebuilt dir"},
                   "cold_jit": probe(q, fp8, hd, jit_env),
                   "jit_cache": probe(q, fp8, hd, jit_env)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        name = "cpu"
    doc = {"device": name, **rio.stamp(), "nproc": os.cpu_count(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    rio.write_json(args.out / f"startup-{rio.device_slug(name)}.json", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
