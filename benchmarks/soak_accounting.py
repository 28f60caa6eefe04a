"""One soak round's requests counted as completed, aborted (on purpose, by the client) or failed.

Two views are combined, because neither alone tells aborts from failures:
* the client (bench_serving's output line with --output-details): a request whose HTTP call failed has a
  non-empty entry in "errors". A request the server aborted still ends with HTTP 200, so bench_serving
  counts it as completed;
* the server (its per-request log, soak_request_log.py): every request it received, and each finish reason.
  "length"/"stop" = completed. A deliberate abort finishes as {"type": "abort", "message": "Aborted"} (running
  or chunked-prefill request: scheduler `FINISH_ABORT()`) or "Abort in waiting queue" (queued), with no
  status code. An abort that reaches a request before the tokenizer manager hands it to the scheduler ends it
  with no finish line (RequestAbortedError): received, never finished.

aborted = deliberate abort finishes + (received, never finished), counted only in rounds where the client
sent an abort; completed = min(server "length"/"stop" finishes, sent - aborted) - client errors; failed = the
rest of the requests sent. So any request not shown to be completed or deliberately aborted is a failure:
HTTP errors, aborts the server made on its own (any status code, any other message), requests the server
never received or never finished in a round without aborts, a client that gave no result. The two views
cannot be matched request by request (bench_serving does not see rids), so a request that failed in both
views is counted twice: `failed` is an upper bound when it is not 0, exact when it is 0.
Pure Python.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

DELIBERATE_ABORT_MESSAGES = ("Aborted", "Abort in waiting queue")
OK_FINISH_TYPES = ("length", "stop")


def finish_type(meta: Dict[str, Any]) -> Optional[str]:
    fr = meta.get("finish_reason")
    return fr.get("type") if isinstance(fr, dict) else (fr if isinstance(fr, str) else None)


def is_deliberate_abort(meta: Dict[str, Any]) -> bool:
    fr = meta.get("finish_reason")
    return (isinstance(fr, dict) and fr.get("type") == "abort" and fr.get("status_code") is None
            and fr.get("message") in DELIBERATE_ABORT_MESSAGES)


def client_errors(result: Optional[Dict[str, Any]], sent: int) -> Dict[str, Any]:
    """{count, samples} of requests the client saw fail. No result line: every request is unaccounted for."""
    if result is None:
        return {"count": sent, "samples": ["no bench_serving result"]}
    errors = result.get("errors")
    if isinstance(errors, list):
        bad = [str(e) for e in errors if e]
        samples: List[str] = []
        for e in bad:
            e = e.strip().splitlines()[-1][:300] if e.strip() else e[:300]
            if e not in samples:
                samples.append(e)
            if len(samples) == 3:
                break
        return {"count": len(bad), "samples": samples}
    completed = int(result.get("completed") or 0)
    return {"count": max(0, sent - completed), "samples": [] if completed >= sent else ["completed < sent"]}


def classify_round(sent: int, result: Optional[Dict[str, Any]], received: Sequence[str],
                   finished: Dict[str, Dict[str, Any]], aborts_sent: int) -> Dict[str, Any]:
    """Counts for one round (see the module docstring). received: rids the server logged as received in the
    round; finished: rid -> meta_info of those that finished; aborts_sent: abort calls the server accepted."""
    metas = list(finished.values())
    ok = sum(finish_type(m) in OK_FINISH_TYPES for m in metas)
    deliberate = sum(is_deliberate_abort(m) for m in metas) if aborts_sent else 0
    other = len(metas) - ok - deliberate
    never_finished = sum(1 for r in received if r not in finished)
    cli = client_errors(result, sent)
    aborted = min(sent, deliberate + (never_finished if aborts_sent else 0))
    completed = max(0, min(ok, sent - aborted) - cli["count"])
    failed = sent - completed - aborted
    other_reasons: List[Any] = []
    for m in metas:
        if finish_type(m) not in OK_FINISH_TYPES and not (aborts_sent and is_deliberate_abort(m)):
            fr = m.get("finish_reason")
            if fr not in other_reasons:
                other_reasons.append(fr)
    return {
        "sent": sent, "completed": completed, "aborted": aborted, "failed": failed,
        "client_errors": cli["count"], "client_error_samples": cli["samples"],
        "server_received": len(received), "server_finished_ok": ok, "server_aborted_deliberate": deliberate,
        "server_finished_other": other, "server_never_finished": never_finished,
        "server_other_reasons": other_reasons[:3],
        "prompt_tokens": sum(int(m.get("prompt_tokens") or 0) for m in metas),
        "completion_tokens": sum(int(m.get("completion_tokens") or 0) for m in metas),
    }
