"""Hard negatives for fine-tuning: for each training query's relevant passage, the best-ranked passages of the local
hybrid index not judged relevant, kept only where the base model scores them clearly below the relevant passage (an
unjudged relevant passage is not taught as a negative), every row filled to the same width."""

from __future__ import annotations

import random

import numpy as np

from evaluation.harness import Dataset
from scoring.scorer import Scorer

NEGATIVE_MARGIN = 0.05  # sentence-transformers' relative margin; its false negatives: bench/negatives.py (docs/adapt.md)


def far_enough(positive: float, candidates: np.ndarray, margin: float) -> np.ndarray:
    """Which candidates a model scores clearly below a relevant passage: at most ``(1 - margin)`` times its score (the
    relative margin of sentence-transformers' ``mine_hard_negatives``; scores on [0, 1]). A candidate scored as high as
    a known relevant passage is more likely relevant but never judged than a true negative, and teaching the model
    to push it down teaches it to push relevant text down."""
    return np.asarray(candidates) <= positive * (1.0 - margin)


def mine(train: Dataset, index, negatives: int, *, depth: int = 30, progress: bool = True, scorer: Scorer | None = None,
         margin: float = NEGATIVE_MARGIN) -> tuple[list[dict], dict]:
    """For each training query and each passage judged relevant: the ``negatives`` best-ranked passages of the hybrid
    index that are not judged relevant (hard negatives); with ``scorer``, only those it scores below the relevant
    passage by ``margin`` (:func:`far_enough`). Also what was mined: candidates seen and how many the margin turned
    away."""
    from tqdm.auto import tqdm  # lazy: tqdm loads only on this path

    rows, seen, dropped, easy = [], 0, 0, 0
    level = train.mrr_threshold
    rng, ids = random.Random(0), sorted(train.corpus)
    for qid in tqdm(sorted(train.qrels), desc="mining hard negatives", unit="query", disable=not progress):
        relevant = sorted(d for d, label in train.qrels[qid].items() if label >= level and d in train.corpus)
        if not relevant:
            continue
        query = train.queries[qid]
        found = index.search(query, depth, "hybrid")["url"].tolist()
        hard = [d for d in found if d not in relevant and train.qrels[qid].get(d, 0) < level]
        scores = (scorer.score(query, [train.corpus[d] for d in relevant + hard]) if scorer is not None and hard
                  else None)
        for n, d in enumerate(relevant):
            kept = hard if scores is None else [h for h, ok in zip(hard, far_enough(scores[n], scores[len(relevant):],
                                                                                   margin), strict=True) if ok]
            seen += len(hard)
            dropped += len(hard) - len(kept)
            chosen = kept[:negatives]
            if len(chosen) < negatives:  # every row the same width: random passages, not judged relevant, fill it
                chosen += _random_passages(rng, ids, negatives - len(chosen), set(train.qrels[qid]) | set(chosen))
                easy += negatives - len(kept[:negatives])
            rows.append({"query": query, "positive": train.corpus[d], "negatives": [train.corpus[h] for h in chosen],
                         "qid": qid, "negative_ids": chosen})
    return rows, {"candidates": seen, "dropped_by_margin": dropped, "random_fill": easy,
                  "margin": margin if scorer is not None else None}


def false_negatives(rows: list[dict], qrels: dict[str, dict[str, int]], level: int = 1) -> float:
    """The share of mined negatives that ``qrels`` (fuller judgments than mining saw) judge relevant at ``level``."""
    mined = [(r["qid"], n) for r in rows for n in r["negative_ids"]]
    return sum(qrels.get(q, {}).get(n, 0) >= level for q, n in mined) / max(1, len(mined))


def _random_passages(rng: random.Random, ids: list[str], count: int, exclude: set[str]) -> list[str]:
    """``count`` passages drawn at random, none of ``exclude`` (fewer where the corpus has no more)."""
    out: list[str] = []
    for _ in range(count * 20):
        if len(out) == count or len(ids) <= len(exclude):
            break
        pick = ids[rng.randrange(len(ids))]
        if pick not in exclude and pick not in out:
            out.append(pick)
    return out
