"""Corpora a browser session uploads: private to that session, bounded, and gone when it ends.

An upload is indexed in memory (no file is left in the cache) with the shared embedding model (no
extra copy of it is loaded); the session's state holds it, and Gradio deletes that state, closing
the index, when the tab closes or the time to live passes. The built-in index is never replaced.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from retrieval import corpus
from retrieval.index import LocalIndex
from retrieval.retrievers import LocalRetriever, Retriever
from service.errors import InvalidInput, TooLarge

log = logging.getLogger("rag_augment.uploads")


@dataclass
class PrivateCorpus(Retriever):
    """One session's uploaded corpus and its in-memory index."""

    name: str
    retriever: object
    passages: int
    created: float = field(default_factory=time.time)
    closed: bool = False

    @property
    def description(self) -> str:
        return f"your upload {self.name} ({self.passages} passages, visible to this browser session only)"

    def first_stage(self, mode: str | None = None) -> str:
        return self.retriever.first_stage(mode)

    def search(self, query: str, k: int = 5, mode: str | None = None):
        return self.retriever.search(query, k, mode)

    def close(self) -> None:
        """Release the in-memory index (called when the session's state is deleted)."""
        if not self.closed:
            self.closed = True
            self.retriever.index.close()
            log.info("closed the private index of %s", self.name)


def build_private_corpus(path: str | Path, *, embedder, max_bytes: int, max_passages: int, progress=None) -> PrivateCorpus:
    """Index an uploaded file in memory, within the size and passage limits."""
    path = Path(path)
    try:
        size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    except OSError as exc:
        raise InvalidInput(f"the uploaded file cannot be read: {exc.strerror}") from None
    if size > max_bytes:
        raise TooLarge(f"the uploaded file has {size:,} bytes; the limit is {max_bytes:,} (RERANK_MAX_UPLOAD_BYTES)")
    try:
        passages = corpus.load_corpus(path)
    except corpus.CorpusError as exc:
        raise InvalidInput(str(exc)) from None
    if len(passages) > max_passages:
        raise TooLarge(f"the upload splits into {len(passages):,} passages; the limit is {max_passages:,} "
                       "(RERANK_MAX_UPLOAD_PASSAGES)")
    index = LocalIndex.open(passages, embedder, path=None, name=path.name, progress=progress)
    return PrivateCorpus(path.name, LocalRetriever(index), len(passages))
