"""The processes a serving benchmark drives: a real SGLang server (its own process group, a log file, /health,
a clean stop), SGLang's bench_serving as a client (several runs in one Python process: serving_client.py, or one
process per run), and the host facts they need (GPU name and memory, free ports, whether a backend can run).
Used by serving_bench.py and soak.py."""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
FALLBACK_MARKERS = ("falling back to SGLang's Triton", "KVPREFETCH_DISABLE=1")


def gpu_name() -> str:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=20)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def backend_unavailable(backend: str) -> Optional[str]:
    """Why a backend cannot be served here (None: it can), checked without importing sglang."""
    if backend == "fa3":
        spec = importlib.util.find_spec("sgl_kernel")
        if spec is None or not spec.submodule_search_locations:
            return "sgl_kernel not installed"
        pkg = Path(list(spec.submodule_search_locations)[0])
        if not list(pkg.glob("flash_ops*.so")):
            return f"FA3 not staged ({pkg}/flash_ops.abi3.so missing: stage it with stage_fa3.sh)"
    if backend == "kvprefetch":
        from importlib import metadata

        names = {ep.name for ep in metadata.entry_points(group="sglang.srt.plugins")}
        if "kvprefetch" not in names:
            return ("kvprefetch SGLang plugin not installed (no 'sglang.srt.plugins' entry point): "
                    "python3 -m pip install --no-deps --no-index --no-build-isolation --target /tmp/site .")
    return None


def ensure_model(shape: str, root: Path) -> Path:
    d = Path(root) / shape
    if (d / "config.json").exists() and (d / "tokenizer.json").exists():
        return d
    try:
        from kvprefetch.integration.model_folder import write_model_folder
    except ImportError:  # not pip-installed: load the module from this checkout
        spec = importlib.util.spec_from_file_location("_kvp_model_folder",
                                                      HERE.parent / "integration" / "model_folder.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        write_model_folder = mod.write_model_folder
    write_model_folder(str(d), shape=shape)
    return d


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> Dict[str, str]:
    env = dict(os.environ)
    for k, v in (("SGLANG_USE_SGL_FA3_KERNEL", "1"), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1")):
        env.setdefault(k, v)
    return env


class ServerProcess:
    """A launch_server process in its own process group, its output in a log file."""

    def __init__(self, cmd: Sequence[str], port: int, log_path: Path, env: Optional[Dict[str, str]] = None):
        self.cmd, self.port, self.log_path, self.env = list(cmd), port, Path(log_path), env
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_healthy(self, timeout_s: float, poll_s: float = 2.0) -> Tuple[bool, str]:
        t0 = time.time()
        while time.time() - t0 < timeout_s:
            if self.proc.poll() is not None:
                return False, f"server exited with code {self.proc.returncode}: {self.log_tail()}"
            if self.healthy():
                return True, f"healthy after {time.time() - t0:.0f} s"
            time.sleep(poll_s)
        return False, f"no /health after {timeout_s:.0f} s: {self.log_tail()}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 3) -> str:
        lines = [l for l in self.log_text().splitlines() if l.strip()]
        return " / ".join(lines[-n:])[-400:]

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM to the server, wait; then SIGKILL what is left of its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # stragglers (scheduler/detokenizer) of OUR server's group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()
        t0 = time.time()   # let the port go and the GPU memory be freed before the next server starts
        while time.time() - t0 < 20 and self.healthy():
            time.sleep(1)
        wait_gpu_idle()


def gpu_memory_used_mib() -> Optional[int]:
    """Used memory of the busiest GPU this process may use (CUDA_VISIBLE_DEVICES as plain indices), in MiB:
    another job on another GPU of the host must not show up in a server's figures."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [x.strip() for x in visible.split(",")] if visible.strip() else []
    only = [f"--id={','.join(ids)}"] if ids and all(x.isdigit() for x in ids) else []
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", *only],
                           capture_output=True, text=True, timeout=20)
        if r.returncode == 0 and r.stdout.strip():
            return max(int(float(x)) for x in r.stdout.split())
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return None


def wait_gpu_idle(limit_mib: int = 4096, timeout_s: float = 45.0) -> None:
    """Until the GPU's used memory is back under limit_mib (the stopped server's processes are gone);
    a fixed 3 s where nvidia-smi is missing."""
    t0 = time.time()
    used = gpu_memory_used_mib()
    if used is None:
        time.sleep(3)
        return
    while used is not None and used > limit_mib and time.time() - t0 < timeout_s:
        time.sleep(1)
        used = gpu_memory_used_mib()


class ClientDriver:
    """serving_client.py as a long-lived child: one sglang import for all runs against a server."""

    def __init__(self, log_path: Path, env: Optional[Dict[str, str]] = None):
        from serving_client import MARK

        self.mark = MARK
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "serving_client.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env,
                                     start_new_session=True)
        self.q: "queue.Queue[Optional[str]]" = queue.Queue()
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()
        self.n = 0

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line)
        self.q.put(None)

    def _wait_mark(self, job_id: str, timeout_s: float) -> Tuple[bool, str]:
        t0 = time.time()
        while True:
            left = timeout_s - (time.time() - t0)
            if left <= 0:
                return False, f"client timed out after {timeout_s:.0f} s"
            try:
                line = self.q.get(timeout=min(left, 5.0))
            except queue.Empty:
                continue
            if line is None:
                return False, f"client exited (code {self.proc.poll()})"
            self.log.write(line)
            if line.startswith(self.mark):
                parts = line.strip().split(" ", 3)
                if len(parts) >= 3 and parts[1] == job_id:
                    return parts[2] == "ok", (parts[3] if len(parts) > 3 else "")
        # unreachable

    def ready(self, timeout_s: float = 180.0) -> Tuple[bool, str]:
        return self._wait_mark("ready", timeout_s)

    def run(self, argv: Sequence[str], timeout_s: float) -> Tuple[bool, str]:
        self.n += 1
        job_id = f"j{self.n}"
        try:
            self.proc.stdin.write(json.dumps({"id": job_id, "argv": list(argv)}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            return False, f"client process gone ({type(e).__name__})"
        ok, why = self._wait_mark(job_id, timeout_s)
        if not ok and "timed out" in why:
            self.kill()
        return ok, why

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        try:
            if self.alive():
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
        except Exception:
            self.kill()
        self.log.close()


def run_client_once(argv: Sequence[str], log_path: Path, timeout_s: float, env=None) -> Tuple[bool, str]:
    with open(log_path, "a") as log:
        try:
            r = subprocess.run([sys.executable, "-m", "sglang.benchmark.serving"] + list(argv), stdout=log,
                               stderr=subprocess.STDOUT, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            return False, f"client timed out after {timeout_s:.0f} s"
    return r.returncode == 0, f"exit code {r.returncode}"


def read_result(path: Path) -> Optional[Dict[str, Any]]:
    """The last JSON line bench_serving appended to its --output-file."""
    try:
        lines = [l for l in Path(path).read_text().splitlines() if l.strip()]
    except OSError:
        return None
    for l in reversed(lines):
        try:
            d = json.loads(l)
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and "output_throughput" in d:
            return d
    return None


def fallback_line(log_text: str) -> Optional[str]:
    for line in log_text.splitlines():
        if any(m in line for m in FALLBACK_MARKERS):
            return line.strip()[-300:]
    return None
