"""Hybrid first stage: lexical (BM25) and dense (cosine) evidence fused into one candidate list.

Measured on the dev sets' whole corpora with the packaged all-MiniLM-L6-v2 (``python bench/fusion.py``):
z-score interpolation with dense weight 0.6 over the union of both top-100 lists beat either list
alone on every set (mean nDCG@10 0.599 vs 0.553 dense and 0.488 lexical; Recall@100 0.770 vs 0.739
and 0.702), min-max interpolation came within 0.001 on nDCG@10 (Recall@100 0.763), reciprocal-rank
fusion (k=60) reached 0.582. The seed Space's ``distance`` (lower is closer) of a hybrid hit is
1 - its fused score rescaled to [0, 1] over the candidates.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Mode = Literal["hybrid", "dense", "lexical"]
MODES: tuple[str, ...] = ("hybrid", "dense", "lexical")
DEFAULT_MODE: Mode = "hybrid"
DENSE_WEIGHT = 0.6
DEPTH = 100


class ModeError(ValueError):
    """A retrieval ``mode`` that does not exist."""


def check_mode(mode: object) -> Mode:
    """``mode`` as one of :data:`MODES` (empty or None: the default), else a :class:`ModeError` naming the field."""
    if mode is None or (isinstance(mode, str) and not mode.strip()):
        return DEFAULT_MODE
    value = mode.strip().lower() if isinstance(mode, str) else mode
    if value not in MODES:
        raise ModeError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return value  # type: ignore[return-value]


def top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest scores, best first (ties by index)."""
    n = min(n, len(scores))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, n - 1)[:n]
    return part[np.lexsort((part, -scores[part]))]


def minmax(values: np.ndarray) -> np.ndarray:
    """Values rescaled to [0, 1] (all zeros when they are all equal)."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=np.float64)


def zscore(values: np.ndarray) -> np.ndarray:
    """Values as standard scores (all zeros when they are all equal)."""
    spread = float(values.std())
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values, dtype=np.float64)


def fuse(dense: np.ndarray, lexical: np.ndarray, *, depth: int = DEPTH,
         dense_weight: float = DENSE_WEIGHT) -> tuple[np.ndarray, np.ndarray]:
    """Candidates and fused scores in [0, 1], best first: the union of each list's top ``depth``, scored
    ``w * z(dense) + (1 - w) * z(lexical)`` over that union (every score exact, none imputed), rescaled to [0, 1]."""
    union = np.union1d(top(dense, depth), top(lexical, depth))
    fused = minmax(dense_weight * zscore(dense[union].astype(np.float64))
                   + (1 - dense_weight) * zscore(lexical[union].astype(np.float64)))
    order = np.lexsort((union, -fused))
    return union[order], fused[order]


def candidates(mode: Mode, dense: np.ndarray, lexical: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best passages under ``mode`` and their distances (lower is closer): cosine distance for
    ``dense``, 1 / (1 + BM25) for ``lexical``, 1 - fused score for ``hybrid``."""
    if mode == "dense":
        ids = top(dense, k)
        return ids, 1.0 - dense[ids].astype(np.float64)
    if mode == "lexical":
        ids = top(lexical, k)
        return ids, 1.0 / (1.0 + lexical[ids].astype(np.float64))
    ids, fused = fuse(dense, lexical, depth=max(DEPTH, k))
    return ids[:k], 1.0 - fused[:k]
