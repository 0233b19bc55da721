"""Temporary files a process leaves behind when it dies mid-write (index builds, graph exports).

Each such file carries its writer's pid in its name, so a later start can tell its own work in
progress (or another live process's) from leftovers, and remove only the leftovers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("rag_augment.stale")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_if_owner_gone(paths: Iterable[Path], pid_of: Callable[[Path], str]) -> list[Path]:
    """Remove each path whose writer (the pid ``pid_of`` reads from its name) is no longer running."""
    removed = []
    for path in paths:
        try:
            pid = int(pid_of(path))
        except (ValueError, IndexError):
            continue
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            path.unlink()
        except OSError as exc:
            log.warning("cannot remove stale file %s: %s", path, exc)
            continue
        removed.append(path)
    if removed:
        log.info("removed %d stale temporary file(s) of ended processes", len(removed))
    return removed
