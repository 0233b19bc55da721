"""How late the event loop wakes up: the one number that says whether anything blocks every route at once.

Gradio, MCP and the HTTP APIs share one asyncio loop per port. A blocking call in any ``async``
handler or middleware stalls all of them; the monitor sees it as a late wake-up of its own sleep.
Every lag goes to a Prometheus histogram (``rerank_event_loop_lag_seconds`` in ``/metrics``); a lag
over the warning threshold is logged in one line. ``worst`` is kept so a test can fail on any stall.

A late wake-up has two causes with different cures: the loop itself was kept busy or blocked (a handler's blocking
call: fix the handler), or the whole process was starved (the CPU taken by other processes, or the GIL held by a long
C call of another thread): a plain thread in the process, :class:`Heartbeat`, was late over the same span, and the
loop's thread used little CPU meanwhile. Each stall says which (``Stall.starved``). A full pass of the garbage
collector holds the GIL for its whole length on whichever thread happened to trigger it, the loop's included: its
time is the process held up, never the loop's own CPU.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import threading
import time
from typing import NamedTuple

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("rag_augment.loop")

WARN_SECONDS = 0.25
INTERVAL_SECONDS = 0.05


class Stall(NamedTuple):
    """One wake-up later than the warning threshold."""

    at: float  # wall time
    lag: float  # seconds late
    starved: bool  # the whole process was held up, not the loop alone


class Heartbeat:
    """A daemon thread that wakes every ``interval`` seconds and keeps when it did: the process's own pulse, against
    which a late loop is judged (a thread with no work of its own is late only when the process is starved)."""

    def __init__(self, interval: float = INTERVAL_SECONDS, keep: int = 4096) -> None:
        self.interval = interval
        self.beats: collections.deque[float] = collections.deque([time.perf_counter()], maxlen=keep)
        self._thread = threading.Thread(target=self._run, name="loop-lag-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.beats.append(time.perf_counter())

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without a beat between ``start`` and ``end`` (perf_counter seconds)."""
        beats = list(self.beats)
        before = [b for b in beats if b < start][-1:] or [start]
        points = before + [b for b in beats if start <= b <= end] + [end]
        return float(np.diff(points).max())


class FullCollections:
    """The garbage collector's full passes (generation 2), each with the thread it ran on and when: the one kind of
    pass long enough to matter (a full walk of every object not frozen, hundreds of ms in a heap that grew)."""

    def __init__(self, keep: int = 256) -> None:
        self.passes: collections.deque[tuple[int, float, float]] = collections.deque(maxlen=keep)
        self._started = 0.0
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self._started = time.perf_counter()
            else:
                self.passes.append((threading.get_ident(), self._started, time.perf_counter()))

    def time_on(self, thread: int, start: float, end: float) -> float:
        """Seconds of full passes that ``thread`` ran between ``start`` and ``end`` (perf_counter seconds)."""
        return sum(max(0.0, min(e, end) - max(s, start)) for t, s, e in list(self.passes) if t == thread)


_WATCHERS: tuple[Heartbeat, FullCollections] | None = None
_WATCHERS_LOCK = threading.Lock()


def _watchers() -> tuple[Heartbeat, FullCollections]:
    """The process's one heartbeat thread and one record of full collections, both started on first use."""
    global _WATCHERS
    with _WATCHERS_LOCK:
        if _WATCHERS is None:
            _WATCHERS = (Heartbeat(), FullCollections())
        return _WATCHERS


def heartbeat() -> Heartbeat:
    """The process's one heartbeat thread."""
    return _watchers()[0]


def full_collections() -> FullCollections:
    """The process's one record of full garbage-collection passes."""
    return _watchers()[1]


def starved(lag: float, *, loop_cpu: float, pulse_gap: float, collecting: float = 0.0) -> bool:
    """Whether a late wake-up was the process being starved rather than the loop being blocked: the heartbeat thread
    went without a beat for at least half the lag, while the loop's own thread used under half of it in CPU (a handler
    computing on the loop, even in a C call that holds the GIL, uses its thread's CPU; a handler blocked in I/O or a
    sleep leaves the heartbeat beating). ``collecting``: seconds of that CPU spent in full garbage-collection passes,
    which hold up every thread alike and are not the handler's doing."""
    return pulse_gap >= lag / 2 and loop_cpu - collecting < lag / 2


class LoopLagMonitor:
    """A task that sleeps ``interval`` seconds at a time on the loop and records how late each wake-up is."""

    def __init__(self, registry: CollectorRegistry, *, interval: float = INTERVAL_SECONDS,
                 warn: float = WARN_SECONDS) -> None:
        self.interval, self.warn = interval, warn
        self.histogram = Histogram("rerank_event_loop_lag_seconds", "how late the event loop woke up (a blocked loop "
                                   "delays every route)", registry=registry,
                                   buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.worst = 0.0
        self.stalls: list[Stall] = []  # each wake-up later than ``warn``, the newest 100
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start watching the running loop (once; call from inside it)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="loop-lag-monitor")

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def record(self, lag: float, *, starved: bool = False) -> None:
        """One wake-up's lateness: into the histogram, the worst case, and the log when over ``warn``."""
        lag = max(0.0, lag)
        self.histogram.observe(lag)
        self.worst = max(self.worst, lag)
        if lag > self.warn:
            self.stalls.append(Stall(time.time(), lag, starved))
            del self.stalls[:-100]
            if starved:
                log.warning("the event loop woke %.0f ms late because the whole process was held up (the CPU taken by "
                            "other processes, the GIL held by another thread's long call, or a full garbage-collection "
                            "pass)", lag * 1000)
            else:
                log.warning("the event loop was blocked for %.0f ms (every route waited); a handler or middleware "
                            "made a blocking call", lag * 1000)

    async def _watch(self) -> None:
        pulse, passes, me = heartbeat(), full_collections(), threading.get_ident()
        while True:
            cpu, slept = time.thread_time(), time.perf_counter()
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            lag = now - slept - self.interval
            self.record(lag, starved=lag > self.warn and starved(
                lag, loop_cpu=time.thread_time() - cpu, pulse_gap=pulse.longest_gap(slept, now),
                collecting=passes.time_on(me, slept, now)))
