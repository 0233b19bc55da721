"""Native memory handed back to the system, so a server that runs for weeks holds what it uses and no more.

Measured under the soak (docs/responsiveness.md): most of the RSS a long-running server gained was heap that
glibc's malloc had freed but kept (``malloc_trim`` released it all), grown by two of glibc's defaults: a
threshold for serving large blocks from ``mmap`` that rises each time such a block is freed (so a forward
pass's activations end up on the heap and fragment it), and an arena per thread. The process sets both once,
before the models load, and a background thread returns freed heap pages every ``interval`` seconds. Where the C
library is not glibc (musl, macOS, or jemalloc preloaded), all of it is a no-op.

Each round first collects Python's cyclic garbage. Requests leave reference cycles behind (an exception's traceback
and its frames, which hold the request's documents and arrays); Python's own collector reaches the oldest generation
only every minute or two under load, so RSS climbed by tens of MiB between its passes and fell back after them. The
objects loaded at start-up are frozen out of the collector's scans (``gc.freeze``, web/server.py), so a full pass
takes ~10 ms on 2 cores; until they are, no round collects (a pass would walk every object the models hold, ~0.5 s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger("rag_augment.memory")

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


@dataclass(frozen=True)
class AllocatorPolicy:
    """How the C allocator is set for a long-lived server.

    ``mmap_threshold``: blocks at least this large get pages of their own, returned when freed (fixing it also stops
    glibc raising it; None keeps glibc's own); ``arenas``: malloc arenas at most (each thread otherwise may get
    one); ``interval``: seconds between returns of free heap pages to the system (0: never)."""

    mmap_threshold: int | None = None
    arenas: int = 2
    interval: float = 10.0


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The running C library when it is glibc with ``malloc_trim`` (its allocator may be preloaded over: see below)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def _preloaded_allocator() -> str | None:
    """A malloc preloaded over glibc's (jemalloc, tcmalloc, mimalloc), which then owns the heap."""
    names = ("jemalloc", "tcmalloc", "mimalloc")
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in names if name in preload), None)


def configure(policy: AllocatorPolicy = AllocatorPolicy()) -> bool:
    """Set glibc's malloc for a long-lived server (call before large allocations); False where it does not apply."""
    libc = _glibc()
    if libc is None or _preloaded_allocator():
        return False
    settings = [(M_ARENA_MAX, policy.arenas)]
    if policy.mmap_threshold is not None:
        settings += [(M_MMAP_THRESHOLD, policy.mmap_threshold), (M_TRIM_THRESHOLD, 2 * policy.mmap_threshold)]
    ok = all(libc.mallopt(param, value) == 1 for param, value in settings)
    log.info("glibc malloc: %d arenas at most, free heap returned every %.0f s%s", policy.arenas, policy.interval,
             "" if ok else " (some settings were refused)")
    return ok


def release() -> bool:
    """Return free heap pages to the system now (glibc's ``malloc_trim``); True when any were returned."""
    libc = _glibc()
    if libc is None or _preloaded_allocator():
        return False
    return bool(libc.malloc_trim(0))


class Releaser:
    """A daemon thread collecting cyclic garbage and returning free heap pages every ``interval`` seconds; :meth:`stop`
    ends it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.releases = 0  # rounds that returned memory
        self.idle_rounds = 0  # rounds that found none to return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-release", daemon=True)
        if interval > 0 and _glibc() is not None and not _preloaded_allocator():
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if gc.get_freeze_count():  # start-up is frozen: a full pass is short (before, it walks every model object)
                gc.collect()  # cycles freed now, not at the collector's next full pass; then their pages returned
            if release():
                self.releases += 1
            else:
                self.idle_rounds += 1

    def stop(self) -> None:
        self._stop.set()


_releaser: Releaser | None = None
_lock = threading.Lock()


def keep_flat(policy: AllocatorPolicy = AllocatorPolicy()) -> Releaser:
    """Configure the allocator and start the one releasing thread of this process (idempotent)."""
    global _releaser
    with _lock:
        if _releaser is None:
            configure(policy)
            _releaser = Releaser(policy.interval)
        return _releaser
