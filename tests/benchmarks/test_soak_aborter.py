from soak_aborter import Aborter, due_steps, some_count
from soak_request_log import RequestLog
from soak_samples import LENGTH, log_event, write_log

STEPS = ((0.2, "some"), (0.4, "all"), (0.6, "some"))


def test_due_steps_and_count():
    assert due_steps(0, 100, 0, STEPS) == []
    assert due_steps(20, 100, 0, STEPS) == ["some"]
    assert due_steps(45, 100, 0, STEPS) == ["some", "all"]
    assert due_steps(45, 100, 1, STEPS) == ["all"]
    assert due_steps(100, 100, 3, STEPS) == []
    assert due_steps(0, 2, 0, STEPS) == []          # int(0.2 * 2) = 0: still needs one request received
    assert due_steps(1, 2, 0, STEPS) == ["some", "all", "some"]
    assert [some_count(c) for c in (1, 8, 16, 64)] == [1, 1, 2, 8]


def test_aborter_aborts_requests_in_flight(tmp_path):
    f = tmp_path / "h_0.log"
    write_log(f, [log_event("request.received", "old"), log_event("request.finished", "old", LENGTH)])
    log = RequestLog(tmp_path)
    log.poll()
    mark = log.mark()
    posts = []

    def post(url, payload, timeout):
        posts.append((url, payload))
        return 200, ""

    ab = Aborter("http://h:1/", log, mark, sent=10, concurrency=16, seed=3, steps=STEPS, post=post)
    ab.step()
    assert posts == []                                         # nothing received yet
    write_log(f, [log_event("request.received", f"r{i}") for i in range(3)]
              + [log_event("request.finished", "r0", LENGTH)])
    ab.step()                                                  # 3 of 10 received: step 0.2 -> 2 of r1, r2
    assert len(posts) == 2 and {p[1]["rid"] for p in posts} == {"r1", "r2"}
    assert all(p[0] == "http://h:1/abort_request" for p in posts)
    write_log(f, [log_event("request.received", f"r{i}") for i in range(3, 7)])
    ab.step()                                                  # 7 received: 0.4 (all) and 0.6 (some)
    assert posts[2][1] == {"abort_all": True} and len(posts) == 5
    assert [c["mode"] for c in ab.calls] == ["some", "all", "some"] and ab.aborts_sent == 5
    assert "old" not in {p[1].get("rid") for p in posts}       # requests of earlier rounds are never targets


def test_aborter_thread_stops(tmp_path):
    log = RequestLog(tmp_path)
    ab = Aborter("http://h:1", log, log.mark(), sent=10, concurrency=4, seed=1, poll_s=0.01,
                 post=lambda *a: (0, "refused"))
    ab.start()
    ab.stop()
    ab.join(5)
    assert not ab.is_alive() and ab.aborts_sent == 0
