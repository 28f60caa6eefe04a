"""Sample files in the formats the soak reads, written from SGLang 0.5.17's code:

* bench_serving's --output-file line with --output-details (sglang/benchmark/serving.py: the `result` dict,
  then `result | result_details` with input_lens, output_lens, ttfts, itls, generated_texts, errors);
* the server's JSON request log (sglang/srt/utils/request_logger.py + log_utils.py: `[date time] {json}`
  lines with event request.received / request.finished, level 0)."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

DISCONNECT_ERROR = ("Traceback (most recent call last):\n  File \"serving.py\", line 700, in "
                    "async_request_sglang_generate\n    async for chunk_bytes in response.content:\n"
                    "aiohttp.client_exceptions.ClientPayloadError: Response payload is not completed\n")
HTTP_ERROR = "Internal Server Error: {\"error\": \"boom\"}"


def bench_line(num_prompts: int, errors: Optional[Sequence[str]] = None, details: bool = True) -> Dict[str, Any]:
    errors = list(errors) if errors is not None else [""] * num_prompts
    ok = sum(1 for e in errors if not e)
    result = {
        "tag": None, "backend": "sglang", "dataset_name": "random-ids", "request_rate": float("inf"),
        "max_concurrency": 64, "sharegpt_output_len": None, "random_input_len": 128, "random_output_len": 64,
        "random_range_ratio": 0.0, "server_info": {"version": "0.5.17"}, "duration": 3.2, "completed": ok,
        "total_input_tokens": 64 * ok, "total_output_tokens": 32 * ok, "request_throughput": ok / 3.2,
        "input_throughput": 1.0, "output_throughput": 100.0, "total_throughput": 200.0,
        "mean_e2e_latency_ms": 400.0, "median_e2e_latency_ms": 380.0, "median_ttft_ms": 0.0,
        "median_tpot_ms": 3.0, "median_itl_ms": 3.0, "concurrency": 20.0,
    }
    if details:
        result.update(input_lens=[64] * num_prompts, output_lens=[32] * num_prompts, ttfts=[0.0] * num_prompts,
                      itls=[[]] * num_prompts, generated_texts=[""] * num_prompts, errors=errors)
    return result


def log_event(event: str, rid: str, finish: Optional[Dict[str, Any]] = None, prompt_tokens: int = 10,
              completion_tokens: int = 5) -> str:
    d: Dict[str, Any] = {"timestamp": "2026-11-27T20:17:09.322202", "event": event, "rid": rid,
                         "obj": {"rid": rid, "stream": True, "log_metrics": True}}
    if event == "request.finished":
        d["out"] = {"meta_info": {"id": rid, "finish_reason": finish, "prompt_tokens": prompt_tokens,
                                  "completion_tokens": completion_tokens, "e2e_latency": 0.1}}
    return "[2026-11-27 20:17:09] " + json.dumps(d) + "\n"


LENGTH = {"type": "length", "length": 5}
ABORT_RUNNING = {"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}
ABORT_QUEUED = {"type": "abort", "message": "Abort in waiting queue"}
ABORT_OOM = {"type": "abort", "message": "Out of memory even after retracting all other requests in the decode "
             "batch. Aborting the last request.", "status_code": 500, "err_type": None}


def write_log(path, lines: List[str], mode: str = "a") -> None:
    with open(path, mode) as f:
        f.write("".join(lines))
