"""Freed heap handed back to the system (glibc), and the settings that bound what caches hold."""

from __future__ import annotations

import time

import pytest

from service import memory
from service.settings import Settings

pytestmark = pytest.mark.unit

glibc = pytest.mark.skipif(memory._glibc() is None or memory._preloaded_allocator() is not None,
                           reason="glibc's malloc is not the allocator here")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@glibc
def test_freed_heap_that_glibc_kept_goes_back_to_the_system():
    blocks = [bytes(64 * 1024) for _ in range(3000)]  # 190 MiB in heap-sized blocks
    keep = blocks[-1]  # the newest stays live: the heap's top cannot shrink past it, the middle is freed
    del blocks
    held = _rss_mib()
    assert memory.release() is True
    assert held - _rss_mib() > 100  # what free() kept is returned
    del keep


@glibc
def test_the_releasing_thread_runs_once_a_period_and_stops():
    import gc

    gc.freeze()  # as a started server is: each round's collection then scans only what came since (a test process
    # holds every earlier test's objects, and a long scan would stall the servers other tests still run here)
    releaser = memory.Releaser(0.05)
    deadline = time.monotonic() + 10
    while releaser.releases + releaser.idle_rounds < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    releaser.stop()
    assert releaser.releases + releaser.idle_rounds >= 3
    assert memory.Releaser(0).releases == 0  # 0: never


@glibc
def test_each_round_collects_cyclic_garbage_before_the_collector_would():
    import gc
    import weakref

    class Request:  # a request's leftovers in a cycle: e.g. an exception's traceback and the frames holding its data
        def __init__(self) -> None:
            self.payload = bytearray(8 * 1024 * 1024)
            self.me = self

    gc.freeze()  # as a server does once started: the releasing thread collects only then
    gc.disable()  # the collector's own passes stay out of it: only the releasing thread may free the cycle
    try:
        left = Request()
        gone = weakref.ref(left)
        del left
        assert gone() is not None  # unreachable, but a cycle: reference counting alone never frees it
        releaser = memory.Releaser(0.05)
        deadline = time.monotonic() + 5
        while gone() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        releaser.stop()
        assert gone() is None
    finally:
        gc.enable()


def test_a_preloaded_allocator_is_left_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert memory._preloaded_allocator() == "jemalloc"
    assert memory.configure() is False and memory.release() is False


def test_the_memory_settings_read_and_refuse_like_the_others():
    s = Settings.from_env({"RERANK_CACHE_MB": "0", "RERANK_TOKEN_CACHE_MB": "3", "RERANK_MEMORY_RELEASE_S": "0"})
    assert (s.cache_mb, s.token_cache_mb, s.memory_release_s) == (0, 3, 0.0)
    assert Settings.from_env({}).memory_release_s == 10.0 and Settings.from_env({}).cache_mb == 32
    with pytest.raises(ValueError, match="RERANK_CACHE_MB must be >= 0"):
        Settings.from_env({"RERANK_CACHE_MB": "-1"})
    with pytest.raises(ValueError, match="RERANK_MEMORY_RELEASE_S must be > 0"):
        Settings.from_env({"RERANK_MEMORY_RELEASE_S": "-2"})
