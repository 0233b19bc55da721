"""The table face of the ranking: a DataFrame with a ``text`` column in, the same rows reranked out.

Every other column is kept as it came; a ``rank`` column (the score, higher is better) is added or
replaced; duplicate texts are dropped and reported by their index labels; a numeric ``distance``
column (the seed's retrieval table) is the first stage that the scoring policy may fuse in. Where the
model reads images, a row whose ``text`` is empty and whose ``image`` column holds an image (a data URI,
or a PIL image from Python) is an image document.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scoring.checkpoint import ModelInfo
from scoring.errors import LimitExceeded, RerankError
from scoring.inputs import validate_query, validate_top_n
from scoring.media import ImageLimits, from_data_uri
from scoring.ranking import DEFAULT_POLICY, Ranking, ScoringPolicy, rank
from scoring.scorer import LongDocuments, Scorer

TEXT_COLUMN = "text"
IMAGE_COLUMN = "image"
SCORE_COLUMN = "rank"
RankFn = Callable[..., Ranking]  # (query, texts, *, top_n, first_stage, policy, long_documents) -> Ranking


def _row_labels(index: pd.Index, positions: Sequence[int], limit: int = 10) -> str:
    """Name rows by their index labels, at most ``limit`` of them."""
    labels = [repr(index[p]) if not isinstance(index[p], (int, np.integer)) else str(index[p])
              for p in positions[:limit]]
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return ", ".join(labels) + more


def validate_documents(documents: object, *, max_documents: int) -> pd.DataFrame:
    """Check the documents table: a DataFrame with one text column of strings, within the size limit."""
    if not isinstance(documents, pd.DataFrame):
        raise RerankError(f"documents must be a table (pandas DataFrame), got {type(documents).__name__}")
    columns = [str(c) for c in documents.columns]
    matches = sum(1 for c in documents.columns if c == TEXT_COLUMN)
    if matches == 0:
        raise RerankError(f"documents has no '{TEXT_COLUMN}' column; columns received: {columns or 'none'}")
    if matches > 1:
        raise RerankError(f"documents has {matches} columns named '{TEXT_COLUMN}'; keep exactly one")
    if len(documents) == 0:
        raise RerankError("documents is empty: add at least one row with text")
    if len(documents) > max_documents:
        raise LimitExceeded(f"documents has {len(documents)} rows; the limit is {max_documents} "
                          "(RERANK_MAX_DOCUMENTS)")
    texts = documents[TEXT_COLUMN].tolist()
    images = image_cells(documents)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) and not (images[i] is not None and _empty(t))]
    if bad:
        kinds = sorted({type(texts[i]).__name__ if texts[i] is not None else "None" for i in bad})
        raise RerankError(f"documents.text must be text in every row; rows {_row_labels(documents.index, bad)} "
                          f"hold {', '.join(kinds)}")
    return documents


def _empty(cell: object) -> bool:
    return cell is None or (isinstance(cell, float) and np.isnan(cell)) or (isinstance(cell, str) and not cell.strip())


def image_cells(documents: pd.DataFrame) -> list:
    """Each row's image (None where its ``image`` cell is empty, or where the table has no ``image`` column)."""
    if sum(1 for c in documents.columns if c == IMAGE_COLUMN) != 1:
        return [None] * len(documents)
    return [None if _empty(cell) else cell for cell in documents[IMAGE_COLUMN].tolist()]


def table_documents(documents: pd.DataFrame, limits: ImageLimits = ImageLimits()) -> list:
    """What each row of a checked table ranks on: its text, or its image where the text is empty (a data URI is
    decoded and bounded by ``limits``; a row holding both is refused: a document is one or the other)."""
    texts = documents[TEXT_COLUMN].tolist()
    out: list = []
    for i, (text, image) in enumerate(zip(texts, image_cells(documents), strict=True)):
        if image is None:
            out.append(text)
            continue
        label = _row_labels(documents.index, [i])
        if not _empty(text):
            raise RerankError(f"documents row {label} has both text and an image; a document is one or the other "
                              "(leave its text empty to rank the image)")
        if isinstance(image, str):
            image = from_data_uri(image, field=f"documents.image (row {label})", limits=limits)
        out.append(image)
    return out


def first_stage_scores(table: pd.DataFrame, column: str) -> np.ndarray | None:
    """Higher-is-better first-stage scores from a distance column, or None when it is absent or not all numbers."""
    if sum(1 for c in table.columns if c == column) != 1:
        return None
    values = table[column].tolist()
    if not values or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                             for v in values):
        return None
    array = -np.asarray(values, dtype=np.float64)
    return array if np.all(np.isfinite(array)) else None


@dataclass
class RerankResult:
    """A reranked table and what happened on the way: dropped duplicates and the model used."""

    table: pd.DataFrame
    duplicates: list = field(default_factory=list)
    model: ModelInfo | None = None
    fused: bool = False
    ranking: Ranking | None = None

    @property
    def summary(self) -> str:
        """A sentence for the UI: how many rows were scored and dropped."""
        n = len(self.duplicates)
        dup = f"; {n} duplicate text{'s' if n != 1 else ''} dropped (rows {', '.join(map(str, self.duplicates[:20]))}" \
              f"{' …' if n > 20 else ''})" if n else "; no duplicates"
        cut = self.ranking.threshold if self.ranking is not None else None
        below = f"; {cut.dropped} below min_score {cut.min_score:g} dropped" if cut is not None else ""
        return f"{len(self.table)} documents returned{dup}{below}"


def rerank_table(query: str, documents: pd.DataFrame, top_n: int | None = None, *, scorer: Scorer | None = None,
                 rank_fn: RankFn | None = None, max_documents: int = 1000, long_documents: LongDocuments = "chunk",
                 policy: ScoringPolicy = DEFAULT_POLICY, min_score: float | None = None,
                 image_limits: ImageLimits = ImageLimits()) -> RerankResult:
    """Rerank a documents table and report what was dropped (see the module docstring; ``min_score``: rows scoring
    below it are dropped and counted, before ``top_n``).

    The ranking itself is :func:`scoring.ranking.rank` on ``scorer``, or ``rank_fn`` (the service's,
    which adds the key, admission and limits) with the same keyword arguments.
    """
    validate_query(query)
    documents = validate_documents(documents, max_documents=max_documents)
    top_n = validate_top_n(top_n)
    if rank_fn is None:
        if scorer is None:
            raise ValueError("rerank_table needs a scorer or a rank_fn")
        rank_fn = lambda q, texts, **kw: rank(scorer, q, texts, **kw)  # noqa: E731
    threshold = {"min_score": min_score} if min_score is not None else {}
    ranking = rank_fn(query, table_documents(documents, image_limits), top_n=top_n, policy=policy,
                      long_documents=long_documents,
                      first_stage=first_stage_scores(documents, policy.first_stage_column), **threshold)
    table = documents.iloc[[r.index for r in ranking]].copy()
    if SCORE_COLUMN in table.columns:
        table = table.drop(columns=SCORE_COLUMN)
    table[SCORE_COLUMN] = np.array([r.score for r in ranking], dtype=np.float64)
    dropped = [documents.index[d.index] for d in ranking.duplicates]
    return RerankResult(table=table, duplicates=dropped, model=ranking.model, fused=ranking.fused, ranking=ranking)
