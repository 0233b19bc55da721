"""Bounded LRU caches of what a model computed: (query, document) scores, or document embeddings.

Document embeddings do not depend on the query, so a passage seen again (the same candidates for
another question, the local corpus) is not re-encoded; a cross-encoder's pair seen again (a retried
request, a repeated question) is not re-scored. Keys are digests of length-prefixed parts (so no
choice of text, NUL included, makes two different inputs collide) and name the engine that
computed the value (so after a backend swap no response mixes engines).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np
from cachetools import LRUCache


def cache_key(*parts: str) -> bytes:
    """A 16-byte digest of the parts; each part is length-prefixed, so parts cannot run into each other."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


class ScoreCache:
    """A thread-safe LRU of vectors or scalars by key, counting hits and misses (for /metrics)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: LRUCache = LRUCache(maxsize=max(1, capacity))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached values among ``keys`` (refreshing their recency)."""
        found: dict[bytes, np.ndarray] = {}
        if self.capacity <= 0:
            return found
        with self._lock:
            for k in keys:
                value = self._data.get(k)
                if value is not None:
                    found[k] = value
            self.hits += len(found)
            self.misses += len(set(keys)) - len(found)
        return found

    def put_many(self, items: dict[bytes, np.ndarray]) -> None:
        """Store values, evicting the least recently used beyond capacity."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._data.update(items)

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
