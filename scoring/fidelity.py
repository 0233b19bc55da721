"""The fidelity gate in the terms users feel: does a reduced-precision engine keep the top of fp32's ranking?

For each question of the fidelity probe (:func:`scoring.probe.fidelity_probe`) the candidate engine's order is
judged with fp32's own scores as the gains (min-max scaled per question, so a swap of two passages fp32 scores
alike costs little and losing fp32's best costs much): nDCG@10 of that order, and how many of fp32's top 10 it keeps.
An engine is admitted when, over the probe, the mean nDCG@10 is at least :data:`MIN_NDCG` and the mean top-10
agreement at least :data:`MIN_TOP10`. Spearman over every passage and the largest score change are measured and
reported, not gated: they move with the tail of the ranking and with how a head spreads its scores, which no user
sees. The thresholds come from measurement on labelled collections (``bench/gate.py``, docs/performance.md): every
engine they admit there loses at most 0.005 nDCG@10 on the collections' own labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_NDCG = 0.995  # set on the dev halves (bench/gate.py): fp32 + noise admitted here lost <= 0.004 nDCG@10 there
MIN_TOP10 = 0.93
K = 10


def ndcg_against(scores: np.ndarray, reference: np.ndarray, k: int = K) -> float:
    """nDCG@k of the order ``scores`` give, with ``reference`` (fp32's scores, min-max scaled) as the gains."""
    reference = np.asarray(reference, dtype=np.float64)
    spread = float(np.ptp(reference))
    if len(reference) == 0 or spread == 0:
        return 1.0
    gains = (reference - reference.min()) / spread
    discounts = 1.0 / np.log2(np.arange(2, min(k, len(gains)) + 2))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:k]
    ideal = np.sort(gains)[::-1][:k]
    return float((gains[order] * discounts).sum() / (ideal * discounts).sum())


def top_agreement(scores: np.ndarray, reference: np.ndarray, k: int = K) -> float:
    """The share of ``reference``'s top k that ``scores`` also put in their top k."""
    k = min(k, len(reference))
    if k == 0:
        return 1.0
    mine = set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())
    theirs = set(np.argsort(-np.asarray(reference), kind="stable")[:k].tolist())
    return len(mine & theirs) / k


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score lists (0 where it is undefined, e.g. a constant list)."""
    from scipy.stats import spearmanr  # lazy: scipy loads only on this path

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    value = spearmanr(a, b).statistic
    return float(value) if np.isfinite(value) else 0.0


@dataclass(frozen=True)
class Agreement:
    """How one engine's scores on the fidelity probe compare with fp32's, question by question, averaged."""

    ndcg: float  # mean nDCG@10 with fp32's scores as gains
    top10: float  # mean share of fp32's top 10 kept
    worst_ndcg: float  # the worst question's nDCG@10
    spearman: float  # mean Spearman over each question's passages (reported, not gated)
    max_diff_of_range: float  # largest score change, as a share of that question's fp32 score range (reported)

    @property
    def admitted(self) -> bool:
        """Keeps the top of fp32's ranking: mean nDCG@10 >= :data:`MIN_NDCG` and top-10 agreement >= :data:`MIN_TOP10`."""
        return self.ndcg >= MIN_NDCG and self.top10 >= MIN_TOP10

    def verdict(self) -> str:
        """Why it was admitted or turned away, in numbers."""
        said = f"nDCG@10 vs fp32 {self.ndcg:.4f}, top-10 agreement {self.top10:.2f}"
        if self.admitted:
            return f"keeps fp32's ranking ({said})"
        return f"reorders the top of fp32's ranking ({said}; needs >= {MIN_NDCG} and >= {MIN_TOP10})"


def compare(scores: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> Agreement:
    """Per-question agreement of an engine's scores with fp32's, averaged over the probe's questions."""
    pairs = list(zip(scores, reference, strict=True))
    ndcgs = [ndcg_against(s, r) for s, r in pairs]
    diffs = [float(np.max(np.abs(np.asarray(s) - r)) / np.ptp(r)) if np.ptp(r) else 0.0 for s, r in pairs]
    return Agreement(ndcg=float(np.mean(ndcgs)), top10=float(np.mean([top_agreement(s, r) for s, r in pairs])),
                     worst_ndcg=float(np.min(ndcgs)), spearman=float(np.mean([spearman(s, r) for s, r in pairs])),
                     max_diff_of_range=float(np.max(diffs)))
