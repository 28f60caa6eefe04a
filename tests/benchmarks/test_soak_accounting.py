import json

import serving_procs as procs
from soak_accounting import classify_round, client_errors, is_deliberate_abort
from soak_request_log import RequestLog, parse_line
from soak_samples import (ABORT_OOM, ABORT_QUEUED, ABORT_RUNNING, DISCONNECT_ERROR, HTTP_ERROR, LENGTH,
                          bench_line, log_event, write_log)


def meta(fr):
    return {"finish_reason": fr, "prompt_tokens": 10, "completion_tokens": 5}


def test_bench_serving_output_line_is_read_and_errors_counted(tmp_path):
    f = tmp_path / "bench.jsonl"
    errors = [""] * 8 + [DISCONNECT_ERROR, HTTP_ERROR]
    f.write_text("#Input tokens: 640\n" + json.dumps(bench_line(10, errors)) + "\n")
    result = procs.read_result(f)     # the same reader serving_bench uses (last JSON line with output_throughput)
    assert result["completed"] == 8
    ce = client_errors(result, 10)
    assert ce["count"] == 2
    assert ce["samples"] == ["aiohttp.client_exceptions.ClientPayloadError: Response payload is not completed",
                             HTTP_ERROR]
    # without --output-details: sent - completed
    assert client_errors(bench_line(10, errors, details=False), 10)["count"] == 2
    assert client_errors(None, 10) == {"count": 10, "samples": ["no bench_serving result"]}


def test_deliberate_abort_messages():
    assert is_deliberate_abort(meta(ABORT_RUNNING)) and is_deliberate_abort(meta(ABORT_QUEUED))
    assert not is_deliberate_abort(meta(ABORT_OOM)) and not is_deliberate_abort(meta(LENGTH))
    assert not is_deliberate_abort(meta({"type": "abort", "message": "Aborted", "status_code": 400}))


def test_clean_round():
    rids = [f"r{i}" for i in range(10)]
    acc = classify_round(10, bench_line(10), rids, {r: meta(LENGTH) for r in rids}, aborts_sent=0)
    assert (acc["completed"], acc["aborted"], acc["failed"]) == (10, 0, 0)
    assert acc["prompt_tokens"] == 100 and acc["completion_tokens"] == 50


def test_abort_round_counts_aborts_not_failures():
    rids = [f"r{i}" for i in range(10)]
    fin = {r: meta(LENGTH) for r in rids[:6]}
    fin.update({rids[6]: meta(ABORT_RUNNING), rids[7]: meta(ABORT_QUEUED), rids[8]: meta(ABORT_RUNNING)})
    # rids[9]: aborted before the scheduler got it (received, no finish line); bench_serving saw 10 x HTTP 200
    acc = classify_round(10, bench_line(10), rids, fin, aborts_sent=2)
    assert (acc["completed"], acc["aborted"], acc["failed"]) == (6, 4, 0)
    assert acc["server_aborted_deliberate"] == 3 and acc["server_never_finished"] == 1


def test_same_aborts_without_abort_calls_are_failures():
    rids = [f"r{i}" for i in range(10)]
    fin = {r: meta(LENGTH) for r in rids[:8]}
    fin[rids[8]] = meta(ABORT_RUNNING)
    acc = classify_round(10, bench_line(10), rids, fin, aborts_sent=0)
    assert (acc["completed"], acc["aborted"], acc["failed"]) == (8, 0, 2)
    assert acc["server_other_reasons"] == [ABORT_RUNNING]


def test_server_side_abort_and_client_errors_are_failures():
    rids = [f"r{i}" for i in range(10)]
    fin = {r: meta(LENGTH) for r in rids[:7]}
    fin[rids[7]] = meta(ABORT_OOM)           # the server gave up on its own: HTTP 200 but a failure
    fin[rids[8]] = meta(ABORT_RUNNING)       # ours
    fin[rids[9]] = meta(LENGTH)
    errors = [""] * 9 + [DISCONNECT_ERROR]   # the client lost r9's stream although the server finished it
    acc = classify_round(10, bench_line(10, errors), rids, fin, aborts_sent=1)
    assert (acc["completed"], acc["aborted"], acc["failed"]) == (7, 1, 2)
    assert acc["server_other_reasons"] == [ABORT_OOM]


def test_no_client_result_or_missing_requests():
    rids = [f"r{i}" for i in range(10)]
    acc = classify_round(10, None, rids, {r: meta(LENGTH) for r in rids}, aborts_sent=0)
    assert (acc["completed"], acc["aborted"], acc["failed"]) == (0, 0, 10)
    acc = classify_round(10, bench_line(10), rids[:9], {r: meta(LENGTH) for r in rids[:9]}, aborts_sent=0)
    assert (acc["completed"], acc["failed"]) == (9, 1)         # one request never reached the server


def test_request_log_parse_and_incremental_read(tmp_path):
    d = tmp_path / "reqlog"
    d.mkdir()
    f = d / "host_0.log"
    assert parse_line("[x] plain server log line") is None
    assert parse_line(log_event("request.received", "HEALTH_CHECK_abc")) is None
    ev = parse_line(log_event("request.finished", "a", LENGTH))
    assert ev[0] == "request.finished" and ev[1] == "a" and ev[2]["finish_reason"] == LENGTH
    log = RequestLog(d)
    write_log(f, [log_event("request.received", "a"), log_event("request.received", "b")])
    partial = log_event("request.finished", "a", LENGTH)
    write_log(f, [partial[:40]])                        # half a line: not read yet
    assert log.poll() == 2
    mark = log.mark()
    write_log(f, [partial[40:], log_event("request.received", "c"), log_event("request.finished", "c", LENGTH)])
    assert log.poll() == 3
    received, finished = log.since(mark)
    assert received == ["c"] and set(finished) == {"a", "c"}
    # hourly rotation: the file is renamed and a new one starts; nothing is counted twice
    f.rename(d / "host_0.log.2026-11-27_20")
    write_log(f, [log_event("request.received", "d")])
    assert log.poll() == 1 and list(log.received) == ["a", "b", "c", "d"]
    assert RequestLog(tmp_path / "missing").poll() == 0
