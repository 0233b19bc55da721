"""The ranking operation every face calls: one query, a list of documents, typed results best first.

Like sentence-transformers' ``CrossEncoder.rank`` and AnswerDotAI's rerankers, the result is a small
typed object (:class:`Ranking` of :class:`RankedDocument`) that each face renders its own way: a
DataFrame for the Gradio table, JSON for the Cohere / Jina / TEI routes, a TREC run for evaluation.

Rules, the same on every face: duplicate texts (exact match) are scored once and reported (the first
copy is kept); long documents are scored by their best window; where first-stage scores come with
the documents, the :class:`ScoringPolicy` says how they are fused in; ties keep input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from scoring.calibration import Calibration
from scoring.checkpoint import Mode, ModelInfo
from scoring.errors import RerankError
from scoring.inputs import (
    InstructionUse,
    Threshold,
    has_images,
    instruction_use,
    validate_instruction,
    validate_media,
    validate_min_score,
    validate_query,
    validate_texts,
    validate_top_n,
)
from scoring.media import ImageDocument, ImageLimits, identity
from scoring.pool import Ticket
from scoring.scorer import LongDocuments, Plan, Scorer
from scoring.skim import Skim, capped, head, merge
from scoring.skim import order as order_read

Fusion = Literal["none", "rrf", "interpolate"]


# --- fusion with a first stage --------------------------------------------------------------------

def ranks_of(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each item by descending score, ties in input order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def _minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; in a constant list every item is the best, 1."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def fuse(rerank_scores: np.ndarray, first_stage: np.ndarray, *, method: Fusion = "rrf", rrf_k: int = 60,
         weight: float = 0.5) -> np.ndarray:
    """Combine the reranker's scores with the first stage's (higher is better in both).

    ``rrf``: weighted reciprocal-rank fusion, ``weight/(k + rank_rerank) + (1-weight)/(k + rank_first)``,
    rescaled so the best possible value is 1; ``interpolate``: ``weight * minmax(rerank) +
    (1-weight) * minmax(first_stage)``; ``none``: the reranker's scores unchanged.
    """
    rerank_scores = np.asarray(rerank_scores, dtype=np.float64)
    first_stage = np.asarray(first_stage, dtype=np.float64)
    if method == "none":
        return rerank_scores
    if len(first_stage) != len(rerank_scores) or not np.all(np.isfinite(first_stage)):
        raise RerankError("first-stage scores must be finite numbers, one per document")
    if method == "rrf":
        fused = weight / (rrf_k + ranks_of(rerank_scores)) + (1 - weight) / (rrf_k + ranks_of(first_stage))
        return fused * (rrf_k + 1)
    if method == "interpolate":
        return weight * _minmax(rerank_scores) + (1 - weight) * _minmax(first_stage)
    raise RerankError(f"fusion must be 'none', 'rrf' or 'interpolate', got {method!r}")


FIRST_STAGE_COLUMN = "distance"


@dataclass(frozen=True)
class ScoringPolicy:
    """How the final score is made from the model's score and the first stage's, where one is given.

    The default is what won on the dev collections (``bench/quality.py``): for an embedding model,
    ``0.7 * minmax(model) + 0.3 * minmax(first stage)``; a cross-encoder's score is used alone. Over the
    local index's hybrid first stage, which already holds the embedding's own cosine, the model's weight
    is ``hybrid_weight`` (0.3 measured best end to end: ``evaluate.py --end-to-end``).
    """

    fusion: Fusion | Literal["auto"] = "auto"
    weight: float = 0.7
    hybrid_weight: float = 0.3
    rrf_k: int = 60
    first_stage_column: str = FIRST_STAGE_COLUMN
    name: str = "default"

    def for_first_stage(self, kind: str | None) -> ScoringPolicy:
        """The policy over a known first stage: ``hybrid`` (lexical + this embedding) takes ``hybrid_weight``."""
        return replace(self, weight=self.hybrid_weight) if kind == "hybrid" else self

    def method_for(self, mode: Mode) -> Fusion:
        """The fusion rule in force for a model of this mode."""
        if self.fusion != "auto":
            return self.fusion
        return "interpolate" if mode == "embedding" else "none"

    def describe(self, mode: Mode) -> str:
        """A sentence for the UI and /info."""
        method = self.method_for(mode)
        if method == "none":
            return "model score alone"
        rule = (f"{self.weight:g} x min-max(model) + {1 - self.weight:g} x min-max(first stage)" if method == "interpolate"
                else f"reciprocal-rank fusion (k={self.rrf_k}, model weight {self.weight:g})")
        hybrid = f" (model weight {self.hybrid_weight:g} over the local index's hybrid first stage)" \
            if self.hybrid_weight != self.weight else ""
        return f"{rule} when a `{self.first_stage_column}` column (lower is closer) comes with the documents{hybrid}"

    def combine(self, mode: Mode, model_scores: np.ndarray, first_stage: np.ndarray | None) -> np.ndarray:
        """Final scores: the model's, fused with the first stage's where one is given and the policy asks."""
        method = self.method_for(mode)
        if first_stage is None or method == "none":
            return np.asarray(model_scores, dtype=np.float64)
        return fuse(model_scores, first_stage, method=method, rrf_k=self.rrf_k, weight=self.weight)


DEFAULT_POLICY = ScoringPolicy()


# --- the ranking ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankedDocument:
    """One document in a ranking: its position in the caller's list, its final and model scores, its text."""

    index: int
    score: float
    model_score: float
    text: str | ImageDocument


@dataclass(frozen=True)
class Duplicate:
    """A document dropped because an earlier one has the same text."""

    index: int
    same_as: int


@dataclass
class Ranking:
    """Documents best first (cut to ``top_n``), the duplicates dropped, and what scored them."""

    results: list[RankedDocument]
    duplicates: list[Duplicate]
    model: ModelInfo
    backend: str
    fused: bool
    cost: int = 0
    first_stage: dict[int, float] = field(default_factory=dict, repr=False)
    instruction: InstructionUse | None = None
    threshold: Threshold | None = None

    def __iter__(self) -> Iterator[RankedDocument]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> RankedDocument:
        return self.results[i]

    def scores(self, count: int | None = None) -> np.ndarray:
        """Every input's score in input order (duplicates share their first copy's; NaN where cut by ``top_n``)."""
        every = self.with_duplicates()
        out = np.full(count if count is not None else len(every), np.nan)
        for r in every:
            out[r.index] = r.score
        return out

    def top_k(self, k: int) -> list[RankedDocument]:
        """The best ``k`` results."""
        return self.results[:k]

    def with_duplicates(self) -> list[RankedDocument]:
        """Every input position, duplicates right after the copy they repeat (same scores): the HTTP routes' shape."""
        copies: dict[int, list[int]] = {}
        for d in self.duplicates:
            copies.setdefault(d.same_as, []).append(d.index)
        out = []
        for r in self.results:
            out.append(r)
            out.extend(RankedDocument(i, r.score, r.model_score, r.text) for i in copies.get(r.index, []))
        return out

    def under(self, policy: ScoringPolicy) -> Ranking:
        """The same model scores ranked under another fusion policy (evaluation compares policies without re-scoring)."""
        indices = np.array([r.index for r in self.results])
        first = np.array([self.first_stage[i] for i in indices]) if self.first_stage else None
        scores = policy.combine(self.model.mode, np.array([r.model_score for r in self.results]), first)
        order = np.lexsort((indices, -scores))  # best first, ties in input order
        results = [RankedDocument(int(indices[i]), float(scores[i]), self.results[i].model_score, self.results[i].text)
                   for i in order]
        fused = first is not None and policy.method_for(self.model.mode) != "none"
        return Ranking(results, self.duplicates, self.model, self.backend, fused, self.cost, self.first_stage,
                       self.instruction, self.threshold)


@dataclass(frozen=True)
class Prepared:
    """A checked ranking request, planned: what it will cost is known before any forward pass runs."""

    scorer: Scorer
    texts: list  # str, or ImageDocument where the model reads images
    unique: list[int]
    duplicates: list[Duplicate]
    plan: Plan
    top_n: int | None
    first_stage: np.ndarray | None
    policy: ScoringPolicy
    raw: bool
    instruction: InstructionUse | None = None
    min_score: float | None = None
    calibration: Calibration | None = None
    skim: Skim | None = None  # where set, ``plan`` is the skim and ``reread`` plans the best documents' full read
    reread: Callable[[Sequence[int], Ticket | None], Plan] | None = None

    @property
    def cost(self) -> int:
        """Tokens the model will read (a skimmed request: its skim; the full read of its best is planned later)."""
        return self.plan.cost


def prepare(scorer: Scorer, query: str, documents: Sequence[object], *, top_n: int | None = None,
            first_stage: Sequence[float] | None = None, policy: ScoringPolicy = DEFAULT_POLICY,
            long_documents: LongDocuments = "chunk", max_tokens_per_doc: int | None = None,
            truncate_left: bool = False, raw: bool = False, max_documents: int | None = None,
            instruction: str | None = None, budget: int | None = None, ticket: Ticket | None = None,
            min_score: float | None = None, calibration: Calibration | None = None,
            image_limits: ImageLimits = ImageLimits(), skim: Skim | None = None) -> Prepared:
    """Check the inputs, drop duplicates and plan the windows (no model call yet); ``instruction`` reaches models
    that take one (causal-LM rerankers) and is reported as ignored by the others. ``budget``: the most tokens the
    request may cost, refused (:class:`LimitExceeded`) as soon as planning shows it is over; ``ticket``: a large
    request tokenizes in turns with other requests' work (see :meth:`Scorer.plan`). ``min_score``: documents scoring
    below it are dropped and counted (:class:`Threshold`), before ``top_n``. ``calibration``: the reported scores are
    its map of the model's (unless ``raw``; the order is the model's own). Documents may be images
    (:class:`ImageDocument` or PIL images) where the model reads them: each is read whole, an image's pixels counted in
    the cost (``image_limits`` bound each one), equal images dropped as duplicates. ``skim``: every text read at its
    first tokens, the best read whole (:mod:`scoring.skim`), where that reads less."""
    query = validate_query(query)
    min_score = validate_min_score(min_score)
    use = instruction_use(scorer.info, validate_instruction(instruction))
    media = has_images(documents)
    texts = (validate_media(documents, scorer.info, max_documents=max_documents, limits=image_limits) if media
             else validate_texts(documents, max_documents=max_documents))
    top_n = validate_top_n(top_n)
    first: dict[str, int] = {}
    unique, duplicates = [], []
    for i, text in enumerate(texts):
        key = identity(text)
        if key in first:
            duplicates.append(Duplicate(i, first[key]))
        else:
            first[key] = i
            unique.append(i)
    stage = None
    if first_stage is not None:
        values = np.asarray(list(first_stage), dtype=np.float64)
        if len(values) != len(texts) or not np.all(np.isfinite(values)):
            raise RerankError("first-stage scores must be finite numbers, one per document")
        stage = values[unique]
    told = use.text if use and use.applied else None
    reread = None
    if media:  # each document read whole by the model's processor
        plan = scorer.plan_media(query, [texts[i] for i in unique], instruction=told, budget=budget)
    else:
        kept = [texts[i] for i in unique]
        options = {"long_documents": long_documents, "max_tokens_per_doc": max_tokens_per_doc,
                   "truncate_left": truncate_left, "instruction": told}
        skim = skim.showing(top_n) if skim is not None else None
        skim = skim if skim is not None and skim.applies(len(unique), max_tokens_per_doc) else None
        plan = scorer.plan(query, kept, **{**options, "max_tokens_per_doc": skim.tokens if skim else max_tokens_per_doc},
                           budget=budget, ticket=ticket)
        if skim is not None:
            left = None if budget is None else budget - plan.cost
            reread = lambda positions, turn: scorer.plan(query, [kept[i] for i in positions], **options,  # noqa: E731
                                                         budget=left, ticket=turn)
    return Prepared(scorer, texts, unique, duplicates, plan, top_n, stage, policy, raw, use, min_score,
                    calibration if not raw else None, skim if reread else None, reread)


def complete(prepared: Prepared, *, ticket: Ticket | None = None) -> Ranking:
    """Score a prepared request and rank it."""
    scores = prepared.scorer.score_plan(prepared.plan, raw=prepared.raw, ticket=ticket)
    return _ranked(prepared, scores) if prepared.reread is None else _read_best(prepared, scores, ticket)


def _read_best(prepared: Prepared, skimmed: np.ndarray, ticket: Ticket | None) -> Ranking:
    """A skimmed request's ranking: its best by the skim read as the request asks, then ranked ahead of the rest."""
    p = prepared
    positions = head(p.policy.combine(p.scorer.info.mode, skimmed, p.first_stage), p.skim.keep)
    plan = p.reread(positions, ticket)
    scores, whole = merge(skimmed, p.scorer.score_plan(plan, raw=p.raw, ticket=ticket), positions)
    return _ranked(p, scores, whole=whole, cost=p.cost + plan.cost)


def complete_many(prepared: Sequence[Prepared], *, ticket: Ticket | None = None) -> list[Ranking]:
    """Score several prepared requests together (one model, the same raw/normalised choice): a cross-encoder's
    pairs of all of them share forward passes. Requests for different models or score kinds are scored apart."""
    out: dict[int, Ranking] = {}
    groups: dict[tuple, list[int]] = {}
    for n, p in enumerate(prepared):
        if p.reread is not None:  # its second read depends on its first
            out[n] = complete(p, ticket=ticket)
            continue
        groups.setdefault((id(p.scorer), p.raw), []).append(n)
    for members in groups.values():
        first = prepared[members[0]]
        scores = first.scorer.score_plans([prepared[n].plan for n in members], raw=first.raw, ticket=ticket)
        for n, model_scores in zip(members, scores, strict=True):
            out[n] = _ranked(prepared[n], model_scores)
    return [out[n] for n in range(len(prepared))]


def _ranked(prepared: Prepared, model_scores: np.ndarray, *, whole: np.ndarray | None = None,
            cost: int | None = None) -> Ranking:
    """The ranking from a request's model scores: fused where asked, best first, cut to top_n (``whole``: a skimmed
    request's documents read in full, ranked first)."""
    p = prepared
    model_scores = np.asarray(model_scores, dtype=np.float64)
    mode = p.scorer.info.mode
    scores = p.policy.combine(mode, model_scores, p.first_stage)
    # decided on the model's own scores: a calibration never reorders
    order = np.argsort(-scores, kind="stable") if whole is None else order_read(scores, whole)
    fused = p.first_stage is not None and p.policy.method_for(mode) != "none"
    if p.calibration is not None:  # probabilities reported; a fused score stays the fusion's
        model_scores = p.calibration(model_scores)
        scores = scores if fused else model_scores
    if whole is not None:
        scores = capped(scores, whole)
    threshold = None
    if p.min_score is not None:
        below = scores[order] < p.min_score
        slot = {doc: k for k, doc in enumerate(p.unique)}
        copies = np.bincount([slot[d.same_as] for d in p.duplicates], minlength=len(p.unique)).astype(np.int64)
        threshold = Threshold(p.min_score, int(below.sum() + copies[order[below]].sum()))
        order = order[~below]
    if p.top_n is not None:
        order = order[: p.top_n]
    results = [RankedDocument(p.unique[i], float(scores[i]), float(model_scores[i]), p.texts[p.unique[i]]) for i in order]
    stage = {p.unique[i]: float(v) for i, v in enumerate(p.first_stage)} if p.first_stage is not None else {}
    if p.top_n is not None and stage:
        kept = {r.index for r in results}
        stage = {i: v for i, v in stage.items() if i in kept}
    return Ranking(results, list(p.duplicates), p.scorer.info, p.scorer.backend.backend, fused,
                   p.cost if cost is None else cost, stage,
                   p.instruction, threshold)


def rank(scorer: Scorer, query: str, documents: Sequence[object], *, top_n: int | None = None,
         first_stage: Sequence[float] | None = None, policy: ScoringPolicy = DEFAULT_POLICY,
         long_documents: LongDocuments = "chunk", max_tokens_per_doc: int | None = None, truncate_left: bool = False,
         raw: bool = False, max_documents: int | None = None, ticket: Ticket | None = None,
         instruction: str | None = None, min_score: float | None = None, skim: Skim | None = None) -> Ranking:
    """Rank ``documents`` for ``query``: the best first, duplicates reported, those below ``min_score`` dropped and
    counted (``Ranking.threshold``), cut to ``top_n``.

    ``first_stage``: the retriever's scores, higher is better, one per document (fused in as ``policy``
    says). ``raw``: the model's logit or cosine rather than the normalised [0, 1] score. ``instruction``: a task
    instruction for instruction-following rerankers (reported in ``Ranking.instruction`` as applied or ignored).
    ``skim``: read every document's first tokens, then only the best whole (:mod:`scoring.skim`).

    >>> ranking = rank(scorer, "What is AI?", ["Bread needs yeast.", "AI is machine intelligence."])
    >>> ranking[0].index, round(ranking[0].score, 2)   # doctest: +SKIP
    (1, 0.87)
    """
    return complete(prepare(scorer, query, documents, top_n=top_n, first_stage=first_stage, policy=policy,
                            long_documents=long_documents, max_tokens_per_doc=max_tokens_per_doc,
                            truncate_left=truncate_left, raw=raw, max_documents=max_documents,
                            instruction=instruction, min_score=min_score, skim=skim), ticket=ticket)
