"""The local embedded index: passages, their embeddings and a BM25 index of their words in one DuckDB file.

It answers ``search(query, k, mode)`` like the remote retrieval Space (url, text, distance; lower is
closer, closest first): ``hybrid`` (the default) fuses the lexical and dense lists (:mod:`hybrid`),
``dense`` is cosine distance alone, ``lexical`` BM25 alone. The file is reused across restarts and
rebuilt only when the corpus or the embedding model changes (a content hash over both is stored in
it); searches run on the vectors and the BM25 index held in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from retrieval import hybrid
from retrieval.corpus import Passage
from retrieval.lexical import LexicalIndex
from scoring.cache import cache_key
from scoring.stale_files import remove_if_owner_gone

log = logging.getLogger("rag_augment.index")
Progress = Callable[[int, int], None]
SCHEMA_VERSION = "2"  # 2: the BM25 index is stored beside the vectors


class LocalIndexError(RuntimeError):
    """The index cannot be built or read."""


class Embedder(Protocol):
    """What the index needs of a model: unit-length embeddings and a fingerprint of the weights."""

    fingerprint: str

    def embed(self, texts: Sequence[str], *, query: bool = False, background: bool = False) -> np.ndarray:
        """One unit-length row per text (``background``: yield to requests, as an index build does)."""
        ...


class TokenEncoder(Protocol):
    """A late-interaction model whose document vectors the index stores beside the passages."""

    fingerprint: str

    def document_vectors(self, texts: Sequence[str], *, background: bool = False) -> list[tuple[str, np.ndarray]]:
        """(piece, token vectors) for each piece the model scores the texts by (a text, or each window of a long one)."""
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
    """A content hash over every passage and the models' fingerprints."""
    digest = hashlib.sha256(f"{SCHEMA_VERSION}\n{fingerprint}\n".encode())
    for p in passages:
        digest.update(json.dumps([p.url, p.text, p.metadata], sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _stored_hash(path: Path) -> str | None:
    """The content hash recorded in an index file, or None when it is absent or unreadable."""
    import duckdb  # lazy: duckdb loads only on this path

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
                 batch_size: int, progress: Progress | None, late: TokenEncoder | None = None) -> int:
    """Embed the passages in batches (and, with ``late``, store their token vectors), index their words, and store all
    with the hash; returns the embedding size."""
    total = len(passages)
    dim = 0
    if late is not None:
        con.execute("CREATE TABLE token_vectors (key BLOB PRIMARY KEY, tokens INTEGER, dim INTEGER, data BLOB)")
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
        if late is not None:
            pieces = late.document_vectors([p.text for p in chunk], background=True)
            con.executemany("INSERT OR IGNORE INTO token_vectors VALUES (?, ?, ?, ?)",
                            [(cache_key(t), int(v.shape[0]), int(v.shape[1]),
                              np.ascontiguousarray(v, dtype=np.float32).tobytes()) for t, v in pieces])
        if progress:
            progress(min(start + batch_size, total), total)
    lexical = LexicalIndex.build([p.text for p in passages])
    con.execute("CREATE TABLE lexical (name VARCHAR PRIMARY KEY, data BLOB)")
    con.executemany("INSERT INTO lexical VALUES (?, ?)", list(lexical.to_files().items()))
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

    files = [*Path(cache_dir).glob("index-*.duckdb.*.tmp"), *Path(cache_dir).glob("index-*.duckdb.*.tmp.wal")]
    return remove_if_owner_gone(files, lambda p: p.name.removesuffix(".wal").removesuffix(".tmp").rsplit(".", 1)[-1])


class LocalIndex:
    """Passages with their embeddings and BM25 index (stored in DuckDB, searched in memory); thread-safe searches."""

    def __init__(self, con, embedder: Embedder, stats: IndexStats, name: str) -> None:
        self._con = con
        self._embedder = embedder
        self._lock = threading.Lock()
        self.stats = stats
        self.description = f"local index of {name}: {stats.passages} passages"
        self._vectors = self._read_vectors()
        files = dict(con.execute("SELECT name, data FROM lexical").fetchall())
        self._lexical = LexicalIndex.from_files(files, stats.passages)
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        self.has_token_vectors = "token_vectors" in tables  # built with a late-interaction model: its vectors are here
        if self.has_token_vectors:
            self.description += " (with the ranking model's token vectors)"

    def _read_vectors(self) -> np.ndarray:
        """Every passage's embedding, row i for passage id i."""
        rows = self._con.execute("SELECT embedding FROM passages ORDER BY id").fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.float32).reshape(len(rows), self.stats.dim)

    @property
    def memory_bytes(self) -> int:
        """What the in-memory search structures hold (vectors and the BM25 matrix)."""
        return int(self._vectors.nbytes) + self.lexical_bytes

    @property
    def lexical_bytes(self) -> int:
        """What the BM25 matrix holds in memory."""
        return self._lexical.memory_bytes

    @classmethod
    def open(cls, passages: Sequence[Passage], embedder: Embedder, *, path: Path | None, name: str = "corpus",
             batch_size: int = 256, progress: Progress | None = None, late: TokenEncoder | None = None) -> LocalIndex:
        """Load the index at ``path`` if it matches the corpus and model(s), else (re)build it there; ``late``: a
        late-interaction ranking model whose document vectors are stored too (:meth:`token_vectors`).

        ``path=None``, or a folder that cannot be written, builds in memory (with a warning).
        """
        import duckdb  # lazy: duckdb loads only on this path

        if not passages:
            raise LocalIndexError(f"{name} holds no passages to index")
        started = time.perf_counter()
        content_hash = corpus_hash(passages, embedder.fingerprint + (f"\n{late.fingerprint}" if late else ""))
        if path is not None and _stored_hash(path) == content_hash:
            try:
                return cls._reuse(path, embedder, name, len(passages), started)
            except Exception as exc:  # damaged past its hash (a truncated table): built again below
                log.warning("index file %s is damaged (%s); it will be rebuilt", path, str(exc).splitlines()[0][:200])
        build = partial(cls._build, passages, embedder, name=name, content_hash=content_hash, batch_size=batch_size,
                        progress=progress, started=started, late=late)
        try:
            return build(path=path)
        except (OSError, duckdb.Error) as exc:  # a full or unwritable disk (DuckDB reports it at commit)
            if path is None:
                raise
            log.warning("cannot write the index at %s (%s); building it in memory", path, str(exc).splitlines()[0][:200])
            return build(path=None)

    @classmethod
    def _reuse(cls, path: Path, embedder: Embedder, name: str, passages: int, started: float) -> LocalIndex:
        """The index stored at ``path`` (its hash already matched)."""
        import duckdb  # lazy: duckdb loads only on this path

        con = duckdb.connect(str(path), read_only=True)
        try:
            dim = int(con.execute("SELECT value FROM meta WHERE key = 'dim'").fetchone()[0])
            stats = IndexStats(passages, dim, str(path), True, time.perf_counter() - started, None)
            index = cls(con, embedder, stats, name)
        except Exception:
            con.close()
            raise
        log.info("index of %s: %s", name, stats.describe())
        return index

    @classmethod
    def _build(cls, passages: Sequence[Passage], embedder: Embedder, *, path: Path | None, name: str, content_hash: str,
               batch_size: int, progress: Progress | None, started: float, late: TokenEncoder | None) -> LocalIndex:
        """Embed and index the passages into a temporary file moved to ``path`` once whole (or into memory)."""
        import duckdb  # lazy: duckdb loads only on this path

        tmp = path.with_name(path.name + f".{os.getpid()}.tmp") if path is not None else None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_partial(tmp)
        con = duckdb.connect(str(tmp) if tmp is not None else ":memory:")
        try:
            dim = _write_index(con, passages, embedder, content_hash, batch_size=batch_size, progress=progress,
                               late=late)
            if tmp is not None:
                con.close()  # flushed whole before it takes the index's name
                os.replace(tmp, path)
        except Exception:
            with contextlib.suppress(Exception):
                con.close()
            if tmp is not None:
                _remove_partial(tmp)
            raise
        seconds = time.perf_counter() - started
        if path is not None:
            con = duckdb.connect(str(path), read_only=True)
        stats = IndexStats(len(passages), dim, str(path or ":memory:"), False, seconds, len(passages) / seconds)
        log.info("index of %s: %s", name, stats.describe())
        return cls(con, embedder, stats, name)

    def scores(self, query: str, mode: str = "hybrid") -> tuple[np.ndarray, np.ndarray]:
        """Every passage's cosine similarity and BM25 score for ``query`` (zeros for the half ``mode`` does not use)."""
        count = self.stats.passages
        dense = (self._vectors @ self._embedder.embed([query], query=True)[0].astype(np.float32)
                 if mode != "lexical" else np.zeros(count, dtype=np.float32))
        lexical = self._lexical.scores(query) if mode != "dense" else np.zeros(count, dtype=np.float32)
        return dense, lexical

    def search(self, query: str, k: int = 5, mode: str | None = None) -> pd.DataFrame:
        """The k best passages under ``mode`` (default hybrid): url, text, distance (ascending; see :mod:`hybrid`)."""
        mode = hybrid.check_mode(mode)
        ids, distances = hybrid.candidates(mode, *self.scores(query, mode), int(k))
        with self._lock:
            cursor = self._con.cursor()
        try:
            rows = cursor.execute("SELECT id, url, text FROM passages WHERE id IN (SELECT unnest(?::INTEGER[]))",
                                  [ids.tolist()]).fetchall()
        finally:
            cursor.close()
        found = {r[0]: r[1:] for r in rows}
        return pd.DataFrame({"url": [found[i][0] for i in ids.tolist()], "text": [found[i][1] for i in ids.tolist()],
                             "distance": distances.astype(float)})

    def stored_vectors(self) -> tuple[list[str], np.ndarray]:
        """Every passage's text and stored embedding (to seed a scorer's cache without re-encoding)."""
        with self._lock:
            cursor = self._con.cursor()
        try:
            rows = cursor.execute("SELECT text FROM passages ORDER BY id").fetchall()
        finally:
            cursor.close()
        return [r[0] for r in rows], self._vectors

    def token_vectors(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The stored late-interaction vectors of each text that is one of the pieces the index's passages are scored by
        (a passage, or a window of a long one; None for other texts, and for all where the index was built without a
        late-interaction model); read from the file, not held in memory."""
        if not self.has_token_vectors or not texts:
            return [None] * len(texts)
        keys = [cache_key(t) for t in texts]
        with self._lock:
            cursor = self._con.cursor()
        try:
            rows = cursor.execute("SELECT key, tokens, dim, data FROM token_vectors WHERE key IN "
                                  "(SELECT unnest(?::BLOB[]))", [sorted(set(keys))]).fetchall()
        finally:
            cursor.close()
        found = {bytes(k): np.frombuffer(data, dtype=np.float32).reshape(tokens, dim) for k, tokens, dim, data in rows}
        return [found.get(k) for k in keys]

    def close(self) -> None:
        """Release the DuckDB file."""
        self._con.close()
