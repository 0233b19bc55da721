"""The scoring core's face: rank documents for a query with a ranking model, from plain Python.

No web framework is imported here. The Gradio app, the HTTP APIs, evaluation and the benchmarks go
through ``service.Service``, which adds the key, admission and limits around the same
:func:`scoring.ranking.rank`; this module is that ranking for plain-Python users.

>>> import rerank
>>> ranking = rerank.rank("What is AI?", ["Bread needs yeast.", "AI is machine intelligence."])
>>> ranking[0].index                                                       # doctest: +SKIP
1
>>> rerank.rerank("What is AI?", pd.DataFrame({"text": [...]}), top_n=5)   # a table, reranked  # doctest: +SKIP

The package ``scoring`` holds the parts, one concern a module (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from scoring.checkpoint import PACKAGED_MODEL_NAME, Mode, ModelInfo, detect_mode, packaged_model_path, resolve_model_dir
from scoring.errors import Cancelled, ModelLoadError, RerankError
from scoring.loading import default_workers, get_scorer, load_scorer, packaged_scorer
from scoring.ranking import (
    DEFAULT_POLICY,
    FIRST_STAGE_COLUMN,
    Duplicate,
    Fusion,
    RankedDocument,
    Ranking,
    ScoringPolicy,
    duplicate_positions,
    fuse,
    ranks_of,
    validate_query,
)
from scoring.ranking import rank as rank_with
from scoring.scorer import LongDocuments, Scorer, padding_waste, plan_batches
from scoring.table import SCORE_COLUMN, TEXT_COLUMN, RerankResult, rerank_table, validate_documents

__all__ = [
    "DEFAULT_POLICY", "FIRST_STAGE_COLUMN", "PACKAGED_MODEL_NAME", "SCORE_COLUMN", "TEXT_COLUMN", "Cancelled", "Duplicate",
    "Fusion", "LongDocuments", "Mode", "ModelInfo", "ModelLoadError", "RankedDocument", "Ranking", "RerankError",
    "RerankResult", "Scorer", "ScoringPolicy", "default_scorer", "default_workers", "detect_mode", "duplicate_positions",
    "fuse", "get_scorer", "load_scorer", "packaged_model_path", "packaged_scorer", "padding_waste", "plan_batches", "rank",
    "rank_with", "ranks_of", "rerank", "rerank_table", "resolve_model_dir", "validate_documents", "validate_query",
]


def default_scorer(model: str | None = None) -> Scorer:
    """The configured model (``RERANK_MODEL`` and friends, read once by ``config.Settings``), loaded once."""
    from config import Settings

    settings = Settings.from_env()
    return get_scorer(model or settings.model, trust_remote_code=settings.trust_remote_code, backend=settings.backend,
                      cache_dir=str(settings.cache_dir), device=settings.device, max_tokens=settings.max_tokens)


def rank(query: str, documents: Sequence[str], top_n: int | None = None, *, model: str | None = None,
         scorer: Scorer | None = None, **options) -> Ranking:
    """Rank ``documents`` (texts) for ``query``, best first; see :func:`scoring.ranking.rank` for ``options``."""
    return rank_with(scorer or default_scorer(model), query, documents, top_n=top_n, **options)


def rerank(query: str, documents: pd.DataFrame, top_n: int | None = None, *, model: str | None = None,
           scorer: Scorer | None = None, max_documents: int | None = None) -> pd.DataFrame:
    """Rerank ``documents`` (a DataFrame with a ``text`` column) for ``query``; see :func:`rerank_table`.

    The dropped duplicates' index labels are in ``result.attrs["duplicates"]``.
    """
    if max_documents is None:
        from config import Settings

        max_documents = Settings.from_env().max_documents
    result = rerank_table(query, documents, top_n, scorer=scorer or default_scorer(model), max_documents=max_documents)
    table = result.table
    table.attrs["duplicates"] = result.duplicates
    return table
