"""graph_timing's queue check on a CPU: fake CUDA events and sleep record what would have run on the GPU."""
import pytest
import torch

import graph_timing as gt


class FakeCuda:
    def __init__(self, caught_up):
        self.caught_up = list(caught_up)  # per try: had the GPU passed the sleep when queuing ended?
        self.sleeps = []

    def sleep(self, cycles):
        self.sleeps.append(cycles)

    def event(self, enable_timing=False):
        fake = self

        class Event:
            def record(self):
                pass

            def query(self):
                return fake.caught_up.pop(0)

        return Event()


@pytest.fixture
def fake(monkeypatch):
    def install(caught_up):
        f = FakeCuda(caught_up)
        monkeypatch.setattr(torch.cuda, "_sleep", f.sleep)
        monkeypatch.setattr(torch.cuda, "Event", f.event)
        monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
        return f
    return install


def test_queue_ahead_first_time(fake):
    f = fake([False])
    calls = []
    assert gt._enqueue_behind_sleep(lambda: calls.append(1), replays=10)
    assert calls == [1] and len(f.sleeps) == 1


def test_caught_up_queue_is_timed_again_behind_a_longer_sleep(fake):
    f = fake([True, False])
    calls = []
    assert gt._enqueue_behind_sleep(lambda: calls.append(1), replays=10)
    assert calls == [1, 1]
    assert f.sleeps[1] == 4 * f.sleeps[0]


def test_gives_up_with_a_warning(fake):
    fake([True] * gt._QUEUE_TRIES)
    with pytest.warns(UserWarning, match="caught up"):
        assert not gt._enqueue_behind_sleep(lambda: None, replays=10)
