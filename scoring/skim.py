"""Skimming: every document read at its first tokens, only the best of them read whole.

A cross-encoder's time goes with the tokens it reads. Most of a 50-passage request is passages that will not reach
the top 10; reading each one's opening is enough to tell most of them apart from the few worth reading in full. So
a skimmed request is scored twice: every document by its first ``tokens`` tokens, then the ``keep`` best of that
(by the final score, fused with the first stage where the policy says) read as the request asks (whole, in windows).
Those lead the ranking in their full read's order; the rest follow in the skim's order, each reported with the
lower of its skim score and the last full read's score, so the scores never rise down the list. Where a request asks
for its ``top_n``, at least that many are read whole: every document a user is shown was read in full.

By default (:class:`SkimPolicy` ``"auto"``) cross-encoders with a classification head skim their first 128 tokens and
read the best 10 whole, which kept the trained cross-encoder's nDCG@10 on the dev collections' judged queries and read
half the tokens; embedding models read every document whole (a skim cost them ~0.01 nDCG@10), and causal-LM and
late-interaction rerankers too (not measured). The measurements: ``bench/doc_tokens.py``, docs/performance.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from scoring.checkpoint import ModelInfo
from scoring.errors import RerankError

MIN_TOKENS = 16
AUTO_TOKENS, AUTO_KEEP = 128, 10  # the measured default for classification-head cross-encoders


@dataclass(frozen=True)
class Skim:
    """Read every document's first ``tokens`` tokens, then the best ``keep`` of them whole."""

    tokens: int
    keep: int = AUTO_KEEP

    def __post_init__(self) -> None:
        for name, value, least in (("tokens", self.tokens, MIN_TOKENS), ("keep", self.keep, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise RerankError(f"skim {name} must be an integer of at least {least}, got {value!r}")

    def showing(self, top_n: int | None) -> Skim:
        """The skim for a request that shows its best ``top_n``: at least those read whole."""
        return Skim(self.tokens, max(self.keep, top_n)) if top_n is not None and top_n > self.keep else self

    def applies(self, documents: int, max_tokens_per_doc: int | None) -> bool:
        """Whether skimming reads less than the plain read would: more documents than it keeps, and a skim shorter
        than the request's own cut."""
        return documents > self.keep and (max_tokens_per_doc is None or self.tokens < max_tokens_per_doc)

    def describe(self) -> str:
        """A phrase for /info and the log."""
        return f"every document's first {self.tokens} tokens, then the best {self.keep} read whole"


@dataclass(frozen=True)
class SkimPolicy:
    """Which skim each model gets: ``tokens`` ``"auto"`` (the measured default for its family), ``None`` (every
    document read whole) or a number of tokens; ``keep``: how many are read whole."""

    tokens: int | Literal["auto"] | None = "auto"
    keep: int = AUTO_KEEP

    def __post_init__(self) -> None:
        if self.tokens not in ("auto", None):
            Skim(self.tokens, self.keep)  # checked once, at start

    def for_model(self, info: ModelInfo) -> Skim | None:
        """The skim this model's requests get."""
        if self.tokens == "auto":
            return Skim(AUTO_TOKENS, self.keep) if info.kind == "sequence-classification" else None
        return Skim(self.tokens, self.keep) if self.tokens else None


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
