"""One JSON POST to the local SGLang server (standard library only): the soak's probes (/generate), aborts
(/abort_request) and cache flushes (/flush_cache). Not a load generator: one request per call."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Optional, Tuple


def post_json(url: str, payload: Optional[dict] = None, timeout_s: float = 120.0) -> Tuple[int, Any]:
    """(HTTP status, parsed JSON body or its text); status 0 with the reason when no response came."""
    data = json.dumps(payload if payload is not None else {}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except Exception as e:  # connection refused, timeout, reset
        return 0, f"{type(e).__name__}: {e}"
    text = body.decode("utf-8", errors="replace")
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text
