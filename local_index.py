"""The local embedded index: passages and their embeddings in a DuckDB file, searched by cosine distance.

It answers ``search(query, k)`` exactly like the remote retrieval Space (url, text, distance =
cosine distance, closest first). The file is reused across restarts and rebuilt only when the
corpus or the embedding model changes (a content hash over both is stored in the file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from corpus import Passage

log = logging.getLogger("rag_augment.index")
Progress = Callable[[int, int], None]
SCHEMA_VERSION = "1"


class LocalIndexError(RuntimeError):
    """The index cannot be built or read."""


class Embedder(Protocol):
    """What the index needs of a model: unit-length embeddings and a fingerprint of the weights."""

    fingerprint: str

    def embed(self, texts: Sequence[str], *, query: bool = False, background: bool = False) -> np.ndarray:
        """One unit-length row per text (``background``: yield to requests, as an index build does)."""
        ...


@dataclass(frozen=True)
class IndexStats:
    """How the index came to be: its size, whether it was reused, and the build speed."""

    passages: int
    dim: int
    path: str
    reused: bool
    seconds: float
    passages_per_second: float | None

    def describe(self) -> str:
        """One line for the log and the UI."""
        how = (f"loaded from {self.path} in {self.seconds:.1f} s" if self.reused else
               f"built in {self.seconds:.1f} s ({self.passages_per_second:.0f} passages/s) at {self.path}")
        return f"{self.passages} passages, {how}"


def corpus_hash(passages: Sequence[Passage], fingerprint: str) -> str:
    """A content hash over every passage and the model's fingerprint."""
    digest = hashlib.sha256(f"{SCHEMA_VERSION}\n{fingerprint}\n".encode())
    for p in passages:
        digest.update(json.dumps([p.url, p.text, p.metadata], sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _stored_hash(path: Path) -> str | None:
    """The content hash recorded in an index file, or None when it is absent or unreadable."""
    import duckdb

    if not path.is_file():
        return None
    try:
        with duckdb.connect(str(path), read_only=True) as con:
            row = con.execute("SELECT value FROM meta WHERE key = 'hash'").fetchone()
            return row[0] if row else None
    except Exception as exc:  # corrupt or foreign file: rebuild it
        log.warning("index file %s is unreadable (%s); it will be rebuilt", path, str(exc).splitlines()[0])
        return None


def _write_index(con, passages: Sequence[Passage], embedder: Embedder, content_hash: str, *,
                 batch_size: int, progress: Progress | None) -> int:
    """Embed the passages in batches and store them with the hash; returns the embedding size."""
    total = len(passages)
    dim = 0
    order = sorted(range(total), key=lambda i: len(passages[i].text))  # similar lengths batch with little padding
    for start in range(0, total, batch_size):
        ids = order[start:start + batch_size]
        chunk = [passages[i] for i in ids]
        vectors = embedder.embed([p.text for p in chunk], background=True)  # requests go first
        if not dim:
            dim = int(vectors.shape[1])
            con.execute(f"CREATE TABLE passages (id INTEGER PRIMARY KEY, url VARCHAR, text VARCHAR, "
                        f"metadata VARCHAR, embedding FLOAT[{dim}])")
        frame = pd.DataFrame({
            "id": ids,
            "url": [p.url for p in chunk],
            "text": [p.text for p in chunk],
            "metadata": [json.dumps(p.metadata, default=str) for p in chunk],
            "embedding": list(vectors),
        })
        con.register("batch_frame", frame)
        con.execute(f"INSERT INTO passages SELECT id, url, text, metadata, embedding::FLOAT[{dim}] FROM batch_frame")
        con.unregister("batch_frame")
        if progress:
            progress(min(start + batch_size, total), total)
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("hash", content_hash), ("dim", str(dim)),
                                                       ("passages", str(total)), ("built_at", time.ctime())])
    return dim


def _remove_partial(tmp: Path) -> None:
    """A failed build's temporary file and its write-ahead log."""
    tmp.unlink(missing_ok=True)
    tmp.with_name(tmp.name + ".wal").unlink(missing_ok=True)


def remove_stale_builds(cache_dir: Path) -> list[Path]:
    """Delete the temporary files of index builds whose process is gone (``index-*.duckdb.<pid>.tmp[.wal]``)."""
    from stale_files import remove_if_owner_gone

    files = [*Path(cache_dir).glob("index-*.duckdb.*.tmp"), *Path(cache_dir).glob("index-*.duckdb.*.tmp.wal")]
    return remove_if_owner_gone(files, lambda p: p.name.removesuffix(".wal").removesuffix(".tmp").rsplit(".", 1)[-1])


class LocalIndex:
    """A DuckDB table of passages with FLOAT[dim] embeddings; thread-safe searches."""

    def __init__(self, con, embedder: Embedder, stats: IndexStats, name: str) -> None:
        self._con = con
        self._embedder = embedder
        self._lock = threading.Lock()
        self.stats = stats
        self.description = f"local index of {name}: {stats.passages} passages"

    @classmethod
    def open(cls, passages: Sequence[Passage], embedder: Embedder, *, path: Path | None, name: str = "corpus",
             batch_size: int = 256, progress: Progress | None = None) -> LocalIndex:
        """Load the index at ``path`` if it matches the corpus and model, else (re)build it there.

        ``path=None``, or a folder that cannot be written, builds in memory (with a warning).
        """
        import duckdb

        if not passages:
            raise LocalIndexError(f"{name} holds no passages to index")
        started = time.perf_counter()
        content_hash = corpus_hash(passages, embedder.fingerprint)
        if path is not None and _stored_hash(path) == content_hash:
            con = duckdb.connect(str(path), read_only=True)
            dim = int(con.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
            stats = IndexStats(len(passages), dim, str(path), True, time.perf_counter() - started, None)
            log.info("index of %s: %s", name, stats.describe())
            return cls(con, embedder, stats, name)
        target = path
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
                _remove_partial(tmp)
                con = duckdb.connect(str(tmp))
            except Exception as exc:
                log.warning("cannot write the index at %s (%s); building it in memory", path, exc)
                target, con = None, duckdb.connect()
        else:
            con = duckdb.connect()
        try:
            dim = _write_index(con, passages, embedder, content_hash, batch_size=batch_size, progress=progress)
        except Exception:
            con.close()
            if target is not None:
                _remove_partial(tmp)
            raise
        seconds = time.perf_counter() - started
        if target is not None:
            con.close()
            os.replace(tmp, target)
            con = duckdb.connect(str(target), read_only=True)
        stats = IndexStats(len(passages), dim, str(target or ":memory:"), False, seconds, len(passages) / seconds)
        log.info("index of %s: %s", name, stats.describe())
        return cls(con, embedder, stats, name)

    def search(self, query: str, k: int = 5) -> pd.DataFrame:
        """The k passages closest to the query: url, text, distance (cosine distance, ascending)."""
        vector = self._embedder.embed([query], query=True)[0].tolist()
        with self._lock:
            cursor = self._con.cursor()
        try:
            frame = cursor.execute(
                f"SELECT url, text, array_cosine_distance(embedding, ?::FLOAT[{self.stats.dim}]) AS distance "
                "FROM passages ORDER BY distance, id LIMIT ?", [vector, int(k)]).df()
        finally:
            cursor.close()
        return frame.astype({"distance": float})

    def stored_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every passage's text and stored embedding (to seed a scorer's cache without re-encoding)."""
        with self._lock:
            cursor = self._con.cursor()
        try:
            rows = cursor.execute("SELECT text, embedding FROM passages ORDER BY id").fetchall()
        finally:
            cursor.close()
        texts = [r[0] for r in rows]
        return texts, np.asarray([r[1] for r in rows], dtype=np.float32).reshape(len(rows), self.stats.dim)

    def close(self) -> None:
        """Release the DuckDB file."""
        self._con.close()
