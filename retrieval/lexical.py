"""The lexical half of the local index: BM25 over the same passages as the vectors (the ``bm25s`` library).

Words alone find what an embedding misses (names, rare terms, exact phrases); dense vectors find
what words miss. The local index keeps both and fuses them (:mod:`hybrid`). Tokens are lower-cased
words of two or more characters, English stop words removed, Snowball-stemmed (PyStemmer), as
BEIR's BM25 baselines do. The index is stored inside the local index's file, so one content hash
covers both halves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

LANGUAGE = "english"


@lru_cache(maxsize=1)
def _stemmer():
    """The Snowball stemmer (one per process; PyStemmer objects are cheap to share for reads)."""
    import Stemmer  # lazy: PyStemmer loads only on this path

    return Stemmer.Stemmer(LANGUAGE)


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Each text as its BM25 terms (the same rule for passages and queries)."""
    import bm25s

    return bm25s.tokenize(list(texts), stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


class LexicalIndex:
    """BM25 scores of every passage for a query; passages are numbered as the vectors are."""

    def __init__(self, model, size: int) -> None:
        self._model = model
        self.size = size

    @classmethod
    def build(cls, texts: Sequence[str]) -> LexicalIndex:
        """Index the passages (in the order given: row i is passage i)."""
        import bm25s

        model = bm25s.BM25()
        model.index(tokenize(texts), show_progress=False)
        return cls(model, len(texts))

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every passage for ``query`` (zeros when none of its words is indexed)."""
        terms = [t for t in tokenize([query])[0] if t in self._model.vocab_dict]
        if not terms:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._model.get_scores(terms), dtype=np.float32)

    @property
    def memory_bytes(self) -> int:
        """Bytes the BM25 score matrix holds in memory."""
        return sum(int(getattr(a, "nbytes", 0)) for a in self._model.scores.values())

    def to_files(self) -> dict[str, bytes]:
        """The index as named byte strings (bm25s' own saved files), to store beside the vectors."""
        with tempfile.TemporaryDirectory(prefix="bm25-") as folder:
            self._model.save(folder, show_progress=False)
            return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}

    @classmethod
    def from_files(cls, files: dict[str, bytes], size: int) -> LexicalIndex:
        """An index back from :meth:`to_files`."""
        import bm25s

        with tempfile.TemporaryDirectory(prefix="bm25-") as folder:
            for name, data in files.items():
                (Path(folder) / Path(name).name).write_bytes(data)
            model = bm25s.BM25.load(folder, show_progress=False)
        return cls(model, size)
