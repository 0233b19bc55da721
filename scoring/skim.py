"""Skimming: every document read at its first tokens, only the best of them read whole.

A cross-encoder's time goes with the tokens it reads. Most of a 50-passage request is passages that will not reach
the top 10; reading each one's opening is enough to tell most of them apart from the few worth reading in full. So
a skimmed request is scored twice: every document by its first ``tokens`` tokens, then the ``keep`` best of that
(by the final score, fused with the first stage where the policy says) read as the request asks (whole, in windows).
Those lead the ranking in their full read's order; the rest follow in the skim's order, each reported with the
lower of its skim score and the last full read's score, so the scores never rise down the list. What it costs in
ranking quality is measured, not assumed: ``bench/doc_tokens.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scoring.errors import RerankError

MIN_TOKENS = 16


@dataclass(frozen=True)
class Skim:
    """Read every document's first ``tokens`` tokens, then the best ``keep`` of them whole."""

    tokens: int
    keep: int = 20

    def __post_init__(self) -> None:
        for name, value, least in (("tokens", self.tokens, MIN_TOKENS), ("keep", self.keep, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise RerankError(f"skim {name} must be an integer of at least {least}, got {value!r}")

    def applies(self, documents: int, max_tokens_per_doc: int | None) -> bool:
        """Whether skimming reads less than the plain read would: more documents than it keeps, and a skim shorter
        than the request's own cut."""
        return documents > self.keep and (max_tokens_per_doc is None or self.tokens < max_tokens_per_doc)

    def describe(self) -> str:
        """A phrase for /info and the log."""
        return f"every document's first {self.tokens} tokens, then the best {self.keep} read whole"


def head(final_scores: np.ndarray, keep: int) -> np.ndarray:
    """The positions of the ``keep`` best scores, best first, ties in input order."""
    return np.argsort(-np.asarray(final_scores, dtype=np.float64), kind="stable")[:keep]


def merge(skimmed: np.ndarray, read: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model scores with the full reads in place of the skim's at ``positions``, and the mask of those positions."""
    scores = np.array(skimmed, dtype=np.float64)
    scores[positions] = read
    whole = np.zeros(len(scores), dtype=bool)
    whole[positions] = True
    return scores, whole


def order(scores: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """Best first: the documents read whole, then the rest, each part by its scores, ties in input order."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64), ~whole))


def capped(scores: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """The scores to report: those of the documents only skimmed capped at the lowest full read's, so the scores
    never rise down the list."""
    scores = np.array(scores, dtype=np.float64)
    if whole.any() and not whole.all():
        scores[~whole] = np.minimum(scores[~whole], scores[whole].min())
    return scores
