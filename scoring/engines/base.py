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

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs (cross-encoders)."""
        raise NotImplementedError(f"{self.name} does not score pairs")

    def score_encoded_pairs(self, pairs: Sequence[tuple]) -> np.ndarray:
        """Raw ranking logits of pairs already tokenized by the request's plan (where ``takes_tokens``)."""
        raise NotImplementedError(f"{self.name} scores pairs from their texts")

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text (embedding models)."""
        raise NotImplementedError(f"{self.name} has no embeddings")
