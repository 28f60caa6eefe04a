import soak_probes as probes


def test_prompts_fixed_and_distinct():
    a, b = probes.probe_prompts(), probes.probe_prompts()
    assert a == b and [len(p) for p in a] == list(probes.PROBE_LENS)
    assert len({p[0] for p in a}) == len(a)                       # no probe is a prefix of another
    assert all(4 <= t < 1000 for p in a for t in p)
    assert max(probes.PROBE_LENS) > 16384 and min(probes.PROBE_LENS) == 1
    assert probes.probe_prompts(seed=9) != a


def test_payload_is_greedy_and_fixed_length():
    p = probes.generate_payload([5, 6], 32)
    assert p["input_ids"] == [5, 6] and p["stream"] is False
    assert p["sampling_params"] == {"temperature": 0.0, "max_new_tokens": 32, "ignore_eos": True}


def test_run_probes_one_at_a_time():
    calls = []

    def post(url, payload, timeout):
        calls.append((url, len(payload["input_ids"])))
        n = len(payload["input_ids"])
        if n == 3:
            return 500, "Internal Server Error"
        return 200, {"text": "", "output_ids": [n, n + 1], "meta_info": {"finish_reason": {"type": "length"}}}

    outs = probes.run_probes("http://h:1/", [[1], [1, 2], [1, 2, 3]], post=post)
    assert calls == [("http://h:1/generate", 1), ("http://h:1/generate", 2), ("http://h:1/generate", 3)]
    assert outs[0] == {"output_ids": [1, 2], "finish": "length"}
    assert outs[2]["error"].startswith("HTTP 500")


def test_compare():
    ref = [{"output_ids": [1, 2, 3]}, {"output_ids": [4, 5]}, {"output_ids": [6]}]
    assert probes.compare_probes(ref, [dict(x) for x in ref]) == []
    got = [{"output_ids": [1, 2, 9]}, {"output_ids": [4, 5, 6]}, {"error": "HTTP 0: reset"}]
    d = probes.compare_probes(ref, got, lens=[1, 7, 100])
    assert d[0] == {"probe": 0, "input_len": 1, "why": "output ids differ", "first_diff": 2, "ref": [3],
                    "got": [9], "ref_len": 3, "got_len": 3}
    assert d[1]["first_diff"] == 2 and d[1]["got_len"] == 3
    assert d[2]["why"] == "error: HTTP 0: reset"
    assert probes.compare_probes(ref, ref[:2])[0]["why"] == "3 vs 2 probes"


def test_flush_cache_retries(monkeypatch):
    monkeypatch.setattr(probes.time, "sleep", lambda s: None)
    answers = iter([(400, "busy"), (200, "Cache flushed.")])
    assert probes.flush_cache("http://h:1", post=lambda url, payload, timeout: next(answers)) is True
    assert probes.flush_cache("http://h:1", post=lambda *a: (400, "busy"), tries=2) is False


def test_probes_stop_after_no_answer():
    sent = []

    def post(url, payload, timeout):
        sent.append(len(payload["input_ids"]))
        return (0, "TimeoutError: timed out") if len(sent) == 2 else (200, {"output_ids": [1]})

    outs = probes.run_probes("http://h:1", [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]], post=post, timeout_s=5)
    assert sent == [1, 2]                                   # a hung server is not sent the rest
    assert outs[0] == {"output_ids": [1], "finish": None}
    assert outs[1]["error"].startswith("HTTP 0") and outs[2]["error"].startswith("not sent") and len(outs) == 4
