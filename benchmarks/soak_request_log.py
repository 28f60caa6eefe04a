"""SGLang's own per-request log, read as it grows: which requests the server received and how each finished.

The server writes it with `--log-requests --log-requests-level 0 --log-requests-format json
--log-requests-target DIR` (sglang/srt/utils/request_logger.py): one line per event in DIR/<host>_<rank>.log
(rotated hourly), `[YYYY-mm-dd HH:MM:SS] {"timestamp": ..., "event": "request.received" | "request.finished",
"rid": ..., "obj": {...}, "out": {"meta_info": {"finish_reason": {"type": "length" | "stop" | "abort", ...},
"prompt_tokens": ..., "completion_tokens": ...}}}`. Level 0 leaves token ids and text out.
Pure Python."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HEALTH_CHECK_PREFIX = "HEALTH_CHECK"   # sglang.srt.constants.HEALTH_CHECK_RID_PREFIX (/health_generate)
RECEIVED, FINISHED = "request.received", "request.finished"


def server_flags(directory: Path) -> List[str]:
    return ["--log-requests", "--log-requests-level", "0", "--log-requests-format", "json",
            "--log-requests-target", str(directory)]


def parse_line(line: str) -> Optional[Tuple[str, str, Dict[str, Any]]]:
    """(event, rid, meta_info) of one log line; None for other lines and health checks."""
    i = line.find("{")
    if i < 0 or '"request.' not in line:
        return None
    try:
        d = json.loads(line[i:])
    except json.JSONDecodeError:
        return None
    event, rid = d.get("event"), d.get("rid")
    if event not in (RECEIVED, FINISHED) or not isinstance(rid, str) or rid.startswith(HEALTH_CHECK_PREFIX):
        return None
    meta = ((d.get("out") or {}).get("meta_info") or {}) if event == FINISHED else {}
    return event, rid, meta


class RequestLog:
    """Incremental reader of a request-log directory. poll() reads what was appended since the last call (a
    file that shrank, i.e. was rotated, is read again from the start; events are keyed by rid, so a line read
    twice changes nothing)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self._offsets: Dict[str, int] = {}
        self.received: Dict[str, int] = {}            # rid -> arrival order
        self.finished: Dict[str, Dict[str, Any]] = {}  # rid -> meta_info of its finish event

    def poll(self) -> int:
        n = 0
        if not self.dir.is_dir():
            return 0
        for path in sorted(self.dir.iterdir()):
            if not path.is_file():
                continue
            key = str(path)
            off = self._offsets.get(key, 0)
            try:
                size = path.stat().st_size
                if size < off:
                    off = 0
                with open(path, "rb") as f:
                    f.seek(off)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n") + 1          # only whole lines; the rest is read next time
            self._offsets[key] = off + end
            for raw in chunk[:end].splitlines():
                ev = parse_line(raw.decode("utf-8", errors="replace"))
                if ev is None:
                    continue
                event, rid, meta = ev
                if event == RECEIVED and rid not in self.received:
                    self.received[rid] = len(self.received)
                    n += 1
                elif event == FINISHED and rid not in self.finished:
                    self.finished[rid] = meta
                    n += 1
        return n

    def mark(self) -> Tuple[frozenset, frozenset]:
        return frozenset(self.received), frozenset(self.finished)

    def since(self, mark: Tuple[frozenset, frozenset]) -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
        """Requests received and finished after mark (received in arrival order)."""
        got, fin = mark
        received = sorted((r for r in self.received if r not in got), key=self.received.get)
        finished = {r: m for r, m in self.finished.items() if r not in fin}
        return received, finished
