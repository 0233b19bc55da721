"""Retrieve, then rerank: the first half of RAG in one call.

Pure orchestration over a search function (the retriever, through the service) and a ranking
function (the service's); the app presents its result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from scoring.ranking import DEFAULT_POLICY, ScoringPolicy
from scoring.table import RankFn, RerankResult, rerank_table

POSITION_COLUMN = "retrieved_position"
MOVE_COLUMN = "move"


@dataclass
class PipelineResult:
    """The retrieved list, the reranked top_n (with each document's move) and the rerank report."""

    retrieved: pd.DataFrame
    reranked: pd.DataFrame
    rerank: RerankResult

    @property
    def summary(self) -> str:
        """One line for the UI: how many retrieved, kept and dropped."""
        return f"Retrieved {len(self.retrieved)} passages; {self.rerank.summary}."


def retrieve_and_rerank(query: str, *, search: Callable[[str, object], pd.DataFrame], rank_fn: RankFn, k: object = 50,
                        top_n: int | None = 5, max_documents: int = 1000,
                        policy: ScoringPolicy = DEFAULT_POLICY, min_score: float | None = None) -> PipelineResult:
    """Fetch the k closest passages, rerank them, keep the best ``top_n``.

    The reranked table has the retrieval columns, ``rank``, the 1-based ``retrieved_position``
    and ``move`` ("12 -> 1"). Duplicate passages from retrieval are dropped by the reranker, and those scoring below
    ``min_score`` (counted, before ``top_n``).
    """
    retrieved = search(query, k).reset_index(drop=True)
    retrieved.insert(0, POSITION_COLUMN, range(1, len(retrieved) + 1))
    result = rerank_table(query, retrieved, top_n, rank_fn=rank_fn, max_documents=max_documents, policy=policy,
                          min_score=min_score)
    reranked = result.table.reset_index(drop=True)
    reranked[MOVE_COLUMN] = [f"{before} -> {after}" for after, before in enumerate(reranked[POSITION_COLUMN], start=1)]
    return PipelineResult(retrieved=retrieved, reranked=reranked, rerank=result)
