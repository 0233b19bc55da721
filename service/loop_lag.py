"""How late the event loop wakes up: the one number that says whether anything blocks every route at once.

Gradio, MCP and the HTTP APIs share one asyncio loop per port. A blocking call in any ``async``
handler or middleware stalls all of them; the monitor sees it as a late wake-up of its own sleep.
Every lag goes to a Prometheus histogram (``rerank_event_loop_lag_seconds`` in ``/metrics``); a lag
over the warning threshold is logged in one line. ``worst`` is kept so a test can fail on any stall.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import CollectorRegistry, Histogram

log = logging.getLogger("rag_augment.loop")

WARN_SECONDS = 0.25
INTERVAL_SECONDS = 0.05


class LoopLagMonitor:
    """A task that sleeps ``interval`` seconds at a time on the loop and records how late each wake-up is."""

    def __init__(self, registry: CollectorRegistry, *, interval: float = INTERVAL_SECONDS,
                 warn: float = WARN_SECONDS) -> None:
        self.interval, self.warn = interval, warn
        self.histogram = Histogram("rerank_event_loop_lag_seconds", "how late the event loop woke up (a blocked loop "
                                   "delays every route)", registry=registry,
                                   buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.worst = 0.0
        self.stalls: list[tuple[float, float]] = []  # (wall time, lag) of each wake-up later than ``warn``
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

    def record(self, lag: float) -> None:
        """One wake-up's lateness: into the histogram, the worst case, and the log when over ``warn``."""
        lag = max(0.0, lag)
        self.histogram.observe(lag)
        self.worst = max(self.worst, lag)
        if lag > self.warn:
            self.stalls.append((time.time(), lag))
            del self.stalls[:-100]
            log.warning("the event loop was blocked for %.0f ms (every route waited); a handler or middleware made a "
                        "blocking call", lag * 1000)

    async def _watch(self) -> None:
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            self.record(time.perf_counter() - due)
