"""The loop-lag monitor tells a blocked loop from a starved process."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from service.loop_lag import Heartbeat, LoopLagMonitor, starved

pytestmark = pytest.mark.unit


def hold_the_gil() -> None:
    """About half a second (more on a slower CPU) inside one C call that never lets the GIL go: a regular expression
    backtracking."""
    re.match(r"(a+)+$", "a" * 23 + "b")


def stalls_while(block, warn: float = 0.25) -> list:
    """The stalls (later than ``warn``) a monitor records while ``block(loop)`` runs once on a loop it watches."""
    async def run() -> list:
        monitor = LoopLagMonitor(CollectorRegistry(), interval=0.02, warn=warn)
        monitor.start()
        await asyncio.sleep(0.1)
        await block()
        await asyncio.sleep(0.1)
        await monitor.stop()
        return monitor.stalls

    return asyncio.run(run())


def test_a_blocking_call_on_the_loop_is_blocked_not_starved():
    async def sleep_on_the_loop():
        time.sleep(0.4)

    stalls = stalls_while(sleep_on_the_loop)
    assert stalls and not any(s.starved for s in stalls)


def test_computing_on_the_loop_is_blocked_even_inside_a_c_call_that_holds_the_gil():
    async def compute_on_the_loop():
        hold_the_gil()

    stalls = stalls_while(compute_on_the_loop)
    assert stalls and not any(s.starved for s in stalls)


def test_another_thread_holding_the_gil_starves_the_process():
    async def another_thread_holds_it():
        worker = threading.Thread(target=hold_the_gil)
        worker.start()
        while worker.is_alive():
            await asyncio.sleep(0.01)

    stalls = stalls_while(another_thread_holds_it)
    assert stalls and all(s.starved for s in stalls)


def test_a_full_garbage_collection_on_the_loops_thread_holds_up_the_process_and_is_not_called_blocked():
    young = [[] for _ in range(1_000_000)]  # not frozen: a full pass walks each of them, holding the GIL meanwhile

    async def collect_on_the_loop():
        started = time.thread_time()
        gc.collect()
        assert time.thread_time() - started > 0.05  # long enough to be a stall at the monitor's warning below

    stalls = stalls_while(collect_on_the_loop, warn=0.04)
    del young
    assert stalls and all(s.starved for s in stalls)


def test_the_rule():
    assert starved(0.4, loop_cpu=0.01, pulse_gap=0.38)
    assert not starved(0.4, loop_cpu=0.35, pulse_gap=0.38)  # the loop's own thread computed
    assert not starved(0.4, loop_cpu=0.01, pulse_gap=0.06)  # the process went on: the loop waited on I/O or a sleep
    assert starved(0.4, loop_cpu=0.35, pulse_gap=0.38, collecting=0.33)  # the loop's thread ran a full collection


def test_the_heartbeats_longest_gap():
    beat = Heartbeat(interval=3600)  # its thread sleeps; the beats are set by hand
    beat.beats.clear()
    beat.beats.extend([1.0, 1.05, 1.1, 1.6, 1.65])
    assert beat.longest_gap(1.02, 1.7) == pytest.approx(0.5)
    assert beat.longest_gap(1.7, 2.5) == pytest.approx(0.85)  # no beat since 1.65: still starved at 2.5
