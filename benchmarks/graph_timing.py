"""GPU timing by CUDA-graph replay and CUDA events (needs a CUDA device).

in_sequence: capture fn(0), fn(1), ..., fn(L-1) (L separate layers' buffers) in ONE graph; replay it
    `repeats` times behind a GPU sleep (so the CPU has queued every replay before the GPU reaches the
    first: no launch gap is ever timed), an event pair around each replay; per-layer time = replay time / L.
cold: capture one single-call graph per layer of a rotation; replay them round-robin, an event pair
    around each replay, again all queued behind a GPU sleep. The rotation is long enough that a layer's
    buffers were evicted from L2 before it is used again, and the events between calls keep each call
    isolated (no overlap with the previous kernel's tail, no programmatic dependent launch across calls).
Both check that the GPU was still asleep when the last replay was queued, and time again behind a longer sleep
where it was not: a single short call costs the CPU about as much to queue as the GPU to run, so a hiccup of the
host (another job, the garbage collector) let the GPU catch up and time launch gaps (cold outliers of 1.3-4x).
"""
from __future__ import annotations

import time
import warnings
from typing import Callable, List, Sequence

import torch

_SLEEP_CYCLES_PER_S = 2.0e9          # H100/H200 SM clock is <= ~2 GHz: sleeping longer than asked is harmless
_ENQUEUE_S_PER_REPLAY = 30e-6        # CPU cost of graph.replay() + two event records, usually
_QUEUE_TRIES = 3                     # each retry sleeps 4x longer


def _gpu_sleep(seconds: float) -> None:
    torch.cuda._sleep(int(max(seconds, 1e-4) * _SLEEP_CYCLES_PER_S))


def _enqueue_behind_sleep(enqueue: Callable[[], None], replays: int) -> bool:
    """Run enqueue() (which records the timed work) behind a GPU sleep long enough that the CPU queues every
    replay before the GPU reaches the first. A marker event after the sleep tells whether that held: if the GPU
    had already passed it when the last replay was queued, a launch gap may sit inside some timed event pair
    (short calls, a busy host CPU), so it is done again behind a 4x longer sleep. False if it never held."""
    sleep_s = replays * _ENQUEUE_S_PER_REPLAY + 2e-4
    for _ in range(_QUEUE_TRIES):
        _gpu_sleep(sleep_s)
        marker = torch.cuda.Event()
        marker.record()
        enqueue()
        ahead = not marker.query()
        torch.cuda.synchronize()
        if ahead:
            return True
        sleep_s *= 4
    warnings.warn(f"graph_timing: the GPU caught up with the CPU in {_QUEUE_TRIES} tries; launch gaps may be timed")
    return False


_capture_stream = None


def capture(fn: Callable[[], None], stream=None, pool=None) -> torch.cuda.CUDAGraph:
    """Capture fn() into a CUDA graph (fn must already have run once eagerly: JIT, autotune, workspace).

    Uses capture_begin/capture_end on a side stream rather than `with torch.cuda.graph(...)`, whose
    __enter__ synchronizes and empties the allocator cache on every capture (hundreds of captures here)."""
    global _capture_stream
    if stream is None:
        if _capture_stream is None:
            _capture_stream = torch.cuda.Stream()
        stream = _capture_stream
    g = torch.cuda.CUDAGraph()
    cur = torch.cuda.current_stream()
    stream.wait_stream(cur)
    with torch.cuda.stream(stream):
        if pool is None:
            g.capture_begin()
        else:
            g.capture_begin(pool=pool)
        try:
            fn()
        except BaseException:
            try:
                g.capture_end()
            except Exception:
                pass
            raise
        g.capture_end()
    cur.wait_stream(stream)
    return g


def time_graph_replays(graph: torch.cuda.CUDAGraph, repeats: int, warmup: int = 2) -> List[float]:
    """Microseconds per replay, `repeats` samples."""
    for _ in range(warmup):
        graph.replay()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]

    def enqueue():
        for s, e in zip(starts, ends):
            s.record()
            graph.replay()
            e.record()

    _enqueue_behind_sleep(enqueue, repeats)
    return [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]


def keep_busy(call: Callable[[int], None], layers: int, seconds: float) -> None:
    """Run call(0), call(1), ... for about `seconds` of GPU time, untimed. An H200 left idle while a large shape's
    inputs are built times its first kernels 5–15 % slow, recovering over a few rows (NOTES runs 13h–13j)."""
    t_end = time.time() + seconds
    i = 0
    while time.time() < t_end:
        for _ in range(8):
            call(i % layers)
            i += 1
        torch.cuda.synchronize()


def time_in_sequence(call: Callable[[int], None], layers: int, repeats: int, stream=None) -> List[float]:
    """Per-layer microseconds: one graph of `layers` calls, `repeats` replays."""
    g = capture(lambda: [call(i) for i in range(layers)], stream)
    try:
        return [t / layers for t in time_graph_replays(g, repeats)]
    finally:
        del g


def time_cold(call: Callable[[int], None], sets: Sequence[int], samples: int, stream=None) -> List[float]:
    """Per-call microseconds of single calls rotating over `sets` (one one-call graph per set). The graphs
    share one memory pool: they never run concurrently, and their outputs are not read."""
    pool = torch.cuda.graph_pool_handle()
    graphs = [capture(lambda i=i: call(i), stream, pool) for i in sets]
    try:
        for g in graphs:          # warm-up: one full rotation
            g.replay()
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(samples)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(samples)]

        def enqueue():
            for n in range(samples):
                starts[n].record()
                graphs[n % len(graphs)].replay()
                ends[n].record()

        _enqueue_behind_sleep(enqueue, samples)
        return [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    finally:
        del graphs


def hbm_copy_gbps(device: torch.device, nbytes: int = 1 << 30, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth: (bytes read + bytes written) / median time, in GB/s."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    src.fill_(1)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    _gpu_sleep(2e-3)
    for s, e in zip(starts, ends):
        s.record()
        dst.copy_(src)
        e.record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))[repeats // 2]
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9
