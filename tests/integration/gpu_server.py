"""Start and stop a real SGLang server for the GPU tests (imported by name).

``python -m sglang.launch_server`` as a user types it: SGLang's test helper popen_launch_server runs the ``sglang``
console script, which the offline GPU host's package bundle does not install. Stopping uses SGLang's own
kill_process_tree (the server's scheduler and detokenizer processes go with it).
"""

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health_generate", timeout=10) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def launched_server(model: str, args: list, log_path: str, timeout: float = 600):
    """Yields the base URL once /health_generate answers; the server's stdout+stderr go to ``log_path``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
           "--port", str(port), *map(str, args)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.time() > deadline:
                raise AssertionError(f"server not healthy after {timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(2)
        yield url
    finally:
        from sglang.srt.utils import kill_process_tree

        kill_process_tree(proc.pid)
        proc.wait(timeout=120)


def _tail(path: str, n: int = 6000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-n:]
