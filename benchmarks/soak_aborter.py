"""Client-side aborts during a soak round, through SGLang's own /abort_request endpoint (bench_serving has no
per-request timeout or cancel): a thread that watches the server's request log and, as the round's requests
arrive, aborts some of those in flight by rid ({"rid": ...}) or all of them ({"abort_all": true}).

Steps (soak_plan.ABORT_STEPS): (fraction of the round's requests received, "some" | "all"); each fires once,
when that many have been received and at least one is in flight. "some" = max(1, concurrency // 8) requests
in flight, chosen with a seeded RNG (which ones depends on timing)."""
from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import soak_http
from soak_plan import ABORT_STEPS
from soak_request_log import RequestLog


def some_count(concurrency: int) -> int:
    return max(1, concurrency // 8)


def due_steps(received: int, sent: int, fired: int, steps: Sequence[Tuple[float, str]] = ABORT_STEPS) -> List[str]:
    """Modes of the steps not fired yet (steps[fired:]) whose threshold `received` has reached."""
    out = []
    for frac, mode in steps[fired:]:
        if received < max(1, int(frac * sent)):
            break
        out.append(mode)
    return out


class Aborter(threading.Thread):
    def __init__(self, base_url: str, log: RequestLog, mark: Any, sent: int, concurrency: int, seed: int,
                 poll_s: float = 0.2, steps: Sequence[Tuple[float, str]] = ABORT_STEPS,
                 post: Optional[Callable[..., Tuple[int, Any]]] = None):
        super().__init__(daemon=True)
        self.base_url, self.log, self.mark, self.sent = base_url.rstrip("/"), log, mark, sent
        self.k, self.rng, self.poll_s, self.steps = some_count(concurrency), random.Random(seed), poll_s, list(steps)
        self.post = post or soak_http.post_json
        self.calls: List[Dict[str, Any]] = []
        self._halt = threading.Event()
        self._fired = 0
        self._t0 = time.time()

    @property
    def aborts_sent(self) -> int:
        """Abort calls the server accepted (HTTP 200)."""
        return sum(c["accepted"] for c in self.calls)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set() and self._fired < len(self.steps):
            self.step()
            self._halt.wait(self.poll_s)

    def step(self) -> None:
        self.log.poll()
        received, finished = self.log.since(self.mark)
        in_flight = [r for r in received if r not in finished]
        if not in_flight:
            return
        for mode in due_steps(len(received), self.sent, self._fired, self.steps):
            self._fired += 1
            self.fire(mode, in_flight, len(received))

    def fire(self, mode: str, in_flight: List[str], received: int) -> None:
        url = f"{self.base_url}/abort_request"
        if mode == "all":
            results = [self.post(url, {"abort_all": True}, 10.0)]
            n = len(in_flight)
        else:
            rids = self.rng.sample(in_flight, min(self.k, len(in_flight)))
            results = [self.post(url, {"rid": rid}, 10.0) for rid in rids]
            n = len(rids)
        accepted = sum(1 for status, _ in results if status == 200)
        self.calls.append({"t_s": round(time.time() - self._t0, 2), "mode": mode, "received": received,
                           "in_flight": len(in_flight), "targets": n, "calls": len(results), "accepted": accepted})
