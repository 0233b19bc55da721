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

from scoring.checkpoint import packaged_model_path
from scoring.errors import ModelLoadError, RerankError
from scoring.loading import get_scorer, load_scorer, packaged_scorer
from scoring.ranking import Duplicate, RankedDocument, Ranking, ScoringPolicy
from scoring.ranking import rank as rank_with
from scoring.scorer import Scorer
from scoring.table import RerankResult, rerank_table
from service import assembly
from service.settings import Settings

__all__ = ["Duplicate", "ModelLoadError", "RankedDocument", "Ranking", "RerankError", "RerankResult", "Scorer",
           "ScoringPolicy", "default_scorer", "get_scorer", "load_scorer", "packaged_model_path", "packaged_scorer", "rank",
           "rerank", "rerank_table"]


def default_scorer(model: str | None = None) -> Scorer:
    """The configured model (``RERANK_MODEL`` and friends), loaded once by the assembly every entry point uses."""
    return assembly.load_model(Settings.from_env(), model)


def rank(query: str, documents: Sequence[str], top_n: int | None = None, *, model: str | None = None,
         scorer: Scorer | None = None, **options) -> Ranking:
    """Rank ``documents`` for ``query``, best first: texts, or PIL images where the model reads them (see
    :func:`scoring.ranking.prepare`); see :func:`scoring.ranking.rank` for ``options``."""
    return rank_with(scorer or default_scorer(model), query, documents, top_n=top_n, **options)


def rerank(query: str, documents: pd.DataFrame, top_n: int | None = None, *, model: str | None = None,
           scorer: Scorer | None = None, max_documents: int | None = None, min_score: float | None = None) -> pd.DataFrame:
    """Rerank ``documents`` (a DataFrame with a ``text`` column) for ``query``; see :func:`rerank_table`.

    The dropped duplicates' index labels are in ``result.attrs["duplicates"]``; with ``min_score``, how many rows
    scored below it in ``result.attrs["below_min_score"]`` (dropped before ``top_n``).
    """
    if max_documents is None:
        max_documents = Settings.from_env().max_documents
    result = rerank_table(query, documents, top_n, scorer=scorer or default_scorer(model), max_documents=max_documents,
                          min_score=min_score)
    table = result.table
    table.attrs["duplicates"] = result.duplicates
    if result.ranking.threshold is not None:
        table.attrs["below_min_score"] = result.ranking.threshold.dropped
    return table
