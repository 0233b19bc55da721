"""Bounded LRU caches of what a model computed: (query, document) scores, or document embeddings; bounded in bytes.

Document embeddings do not depend on the query, so a passage seen again (the same candidates for
another question, the local corpus) is not re-encoded; a cross-encoder's pair seen again (a retried
request, a repeated question) is not re-scored. Keys are digests of length-prefixed parts (so no
choice of text, NUL included, makes two different inputs collide) and name the engine that
computed the value (so after a backend swap no response mixes engines). Each entry is charged its value's bytes
plus :data:`ENTRY_BYTES` (its key, the LRU's bookkeeping and the array's header, measured in
``tests/unit/test_cache.py``), so a cache's bound is the memory it may hold, whatever the model's dimension.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

import numpy as np
from cachetools import LRUCache

from scoring.tokenizer import Tokens

ENTRY_BYTES = 384  # what an entry costs beside its value's bytes (an upper bound, measured with tracemalloc)
MIB = 1024 * 1024
DEFAULT_CACHE_BYTES = 32 * MIB  # a model's scores or document embeddings (~17,500 vectors of 384 dimensions)
DEFAULT_TOKEN_CACHE_BYTES = 8 * MIB  # a tokenizer's documents' ids (~13,800 passages of 60 tokens)


def _entry_bytes(value) -> int:
    return int(getattr(value, "nbytes", 8)) + ENTRY_BYTES


def _bounded(max_bytes: int) -> LRUCache:
    """An LRU holding at most ``max_bytes`` by :func:`_entry_bytes` (0: off, but still a valid cache)."""
    return LRUCache(maxsize=max(1, max_bytes), getsizeof=_entry_bytes)


def cache_key(*parts: str) -> bytes:
    """A 16-byte digest of the parts; each part is length-prefixed, so parts cannot run into each other."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


class ScoreCache:
    """A thread-safe LRU of vectors or scalars by key, holding at most ``max_bytes`` (0: off), counting hits and misses
    (for /metrics)."""

    def __init__(self, max_bytes: int) -> None:
        self.capacity = max_bytes
        self._data: LRUCache = _bounded(max_bytes)
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

    def resize(self, max_bytes: int) -> None:
        """Hold at most ``max_bytes`` from now on (what it held is dropped; every name sharing the cache sees it)."""
        with self._lock:
            self.capacity = max_bytes
            self._data = _bounded(max_bytes)

    def fits(self, entries: int, value_bytes: int) -> bool:
        """Whether ``entries`` values of ``value_bytes`` each take at most half the cache (more would evict what the
        requests of the moment reuse)."""
        return self.capacity > 0 and entries * (value_bytes + ENTRY_BYTES) <= self.capacity // 2

    def held(self) -> int:
        """Bytes held now (values and entries)."""
        with self._lock:
            return int(self._data.currsize)

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class TokenCache:
    """A thread-safe LRU of documents' token ids by (tokenizer, text), holding at most ``max_bytes`` (0: off): a
    passage reranked again for another query (the usual RAG case: the same candidates, a new question) is not tokenized
    again. Holds ids only (4 bytes a token; a tokenizer's full encoding takes ~250), which is all a plan reads of a text
    that is not cut into windows."""

    def __init__(self, max_bytes: int) -> None:
        self.capacity = max_bytes
        self._data: LRUCache = _bounded(max_bytes)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def encode(self, tokenizer: str, texts: Sequence[str], encode: Callable[[list[str]], list]) -> list:
        """Each text's tokens (:class:`Tokens` where cached, else the encoding ``encode`` makes, which is then cached);
        ``tokenizer`` names the tokenizer (its fingerprint), so models with other vocabularies never share an entry."""
        keys = [cache_key(tokenizer, text) for text in texts]
        with self._lock:
            out = [self._data.get(k) for k in keys] if self.capacity > 0 else [None] * len(keys)
        missing = [i for i, found in enumerate(out) if found is None]
        for i, encoding in zip(missing, encode([texts[i] for i in missing]) if missing else [], strict=True):
            out[i] = encoding
        with self._lock:
            self.hits += len(keys) - len(missing)
            self.misses += len(missing)
            if self.capacity > 0:
                for i in missing:
                    ids = Tokens(np.asarray(out[i].ids, dtype=np.int32))
                    if _entry_bytes(ids) < self.capacity:
                        self._data[keys[i]] = ids
        return out

    def resize(self, max_bytes: int) -> None:
        """Hold at most ``max_bytes`` from now on (what it held is dropped)."""
        with self._lock:
            self.capacity = max_bytes
            self._data = _bounded(max_bytes)

    def held(self) -> int:
        """Bytes held now (ids and entries)."""
        with self._lock:
            return int(self._data.currsize)

    def __len__(self) -> int:
        return len(self._data)
