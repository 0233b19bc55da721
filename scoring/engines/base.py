"""What the scorer and the worker pool may ask of an engine: one base class with the defaults, so nothing probes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Engine:
    """One replica of a model on one runtime, used by one thread at a time.

    ``how``: how its forward pass runs (for /info and the page). ``takes_tokens``: it scores pairs from the
    request plan's tokens (:meth:`score_encoded_pairs`), so a request is tokenized once. ``merges``: a pair's score
    does not depend on what else is in its pass, so waiting requests' batches may share one.
    """

    name: str = "engine"
    how: str = "padded batches"
    takes_tokens: bool = False
    merges: bool = False
    fills: bool = False

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs (cross-encoders)."""
        raise NotImplementedError(f"{self.name} does not score pairs")

    def score_triples(self, triples: Sequence[tuple[str | None, str, str]]) -> np.ndarray:
        """Raw ranking logits of (instruction, query, document) triples from several requests (where ``merges``): by
        default one call of :meth:`score_pairs` per (instruction, query), outputs in input order."""
        out = np.zeros(len(triples), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for n, (instruction, query, _) in enumerate(triples):
            groups.setdefault((instruction or None, query), []).append(n)
        for (instruction, query), members in groups.items():
            told = {"instruction": instruction} if instruction else {}
            out[members] = self.score_pairs(query, [triples[m][2] for m in members], **told)
        return out

    def score_encoded_pairs(self, pairs: Sequence[tuple]) -> np.ndarray:
        """Raw ranking logits of pairs already tokenized by the request's plan (where ``takes_tokens``)."""
        raise NotImplementedError(f"{self.name} scores pairs from their texts")

    def score_packed(self, batches: Sequence[dict]) -> np.ndarray:
        """Raw ranking logits of packed batches filled beforehand (where ``fills``), one pass, in batch order."""
        raise NotImplementedError(f"{self.name} fills its own batches")

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text (embedding models)."""
        raise NotImplementedError(f"{self.name} has no embeddings")

    def similarity(self, query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
        """Raw similarity of a query's embedding to each document's (embedding models: the cosine of unit vectors,
        row by row, so equal texts tie exactly)."""
        return np.asarray((np.stack(documents) * query).sum(axis=1), dtype=np.float32)

    def normalized(self, raw: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Raw similarities on [0, 1] (a cosine c as (1 + c) / 2)."""
        return np.asarray((raw + 1.0) / 2.0, dtype=np.float32)
