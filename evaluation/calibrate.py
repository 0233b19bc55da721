"""Fitting a calibration on a labelled collection: ``python evaluate.py DATASET --calibrate OUT.json``.

The judged queries are split by query (a seeded shuffle; ``--test-fraction`` held out). Each query's first-stage
candidates are scored as the service serves them (the model's own score, no fusion); a pair is relevant where its
judgment reaches the collection's relevance level (2 on TREC DL, else 1) and not where it is judged lower or unjudged.
The map is fitted on the training queries' pairs and judged on the held-out ones: expected calibration error (10
equal-width bins) and Brier score before and after, and a reliability plot.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from evaluation.harness import SCORINGS, Dataset, load_dataset, read_run, score_candidates
from scoring.calibration import brier, expected_calibration_error, fit
from service import Service

MIN_QUERIES_PER_SIDE = 2


class SplitError(ValueError):
    """A collection that cannot be split as asked (no judged queries, too few, a fraction outside (0, 1))."""


def split_queries(qids: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, held-out) queries: a seeded shuffle, ``test_fraction`` of them held out, at least
    :data:`MIN_QUERIES_PER_SIDE` on each side."""
    if not 0 < test_fraction < 1:
        raise SplitError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    ordered = sorted(qids, key=lambda q: (len(q), q))
    if not ordered:
        raise SplitError("no judged queries: none of the queries in qrels has first-stage candidates in the corpus")
    held = round(len(ordered) * test_fraction)
    if min(held, len(ordered) - held) < MIN_QUERIES_PER_SIDE:
        need = int(np.ceil(MIN_QUERIES_PER_SIDE / min(test_fraction, 1 - test_fraction)))
        raise SplitError(f"{len(ordered)} judged queries are too few for a split at --test-fraction {test_fraction}: "
                         f"each side needs at least {MIN_QUERIES_PER_SIDE} queries, so at least {need} judged queries")
    random.Random(seed).shuffle(ordered)
    return ordered[held:], ordered[:held]


def labelled_scores(dataset: Dataset, pools: dict, service: Service, qids: Sequence[str], *,
                    progress: Callable[[int, int, float], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The served model scores of each query's candidates and whether each pair is relevant."""
    scored = score_candidates(dataset, {q: pools[q] for q in qids}, service, policy=SCORINGS["rerank"],
                              progress=progress)
    scores, labels = [], []
    for qid, (ids, _, ranking) in scored.items():
        scores.extend(ranking.scores(len(ids)).tolist())
        labels.extend(int(dataset.qrels[qid].get(d, 0) >= dataset.mrr_threshold) for d in ids)
    return np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)


def calibrate(dataset_dir: str | Path, *, service: Service, out: str | Path, method: str = "isotonic",
              test_fraction: float = 0.5, seed: int = 0, candidates: str | Path | None = None,
              plot_path: str | Path | None = None,
              progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Fit the map on the training queries, write it to ``out``, and report ECE and Brier on the held-out ones."""
    dataset = load_dataset(dataset_dir)
    pools = read_run(candidates or Path(dataset_dir) / "candidates" / "bm25_top100.trec")
    judged = [q for q in pools if q in dataset.qrels and q in dataset.queries
              and any(d in dataset.corpus for d, _ in pools[q])]
    train, test = split_queries(judged, test_fraction, seed)
    train_scores, train_labels = labelled_scores(dataset, pools, service, train, progress=progress)
    test_scores, test_labels = labelled_scores(dataset, pools, service, test, progress=progress)
    scorer = service.models.default
    calibration = fit(train_scores, train_labels, method=method, model=scorer.info.name,
                      fingerprint=scorer.fingerprint)
    after = calibration(test_scores)
    report = {"dataset": dataset.name, "model": scorer.info.name, "method": method, "seed": seed,
              "test_fraction": test_fraction, "queries": {"train": len(train), "test": len(test)},
              "pairs": {"train": len(train_scores), "test": len(test_scores)},
              "relevant_share": {"train": float(train_labels.mean()), "test": float(test_labels.mean())},
              "before": {"ece": expected_calibration_error(np.clip(test_scores, 0, 1), test_labels),
                         "brier": brier(np.clip(test_scores, 0, 1), test_labels)},
              "after": {"ece": expected_calibration_error(after, test_labels), "brier": brier(after, test_labels)}}
    calibration = replace(calibration, report=report)
    calibration.write(out)
    if plot_path:
        reliability_plot(test_scores, after, test_labels, plot_path, title=f"{dataset.name}, {scorer.info.name}")
    return report


def reliability_plot(before: np.ndarray, after: np.ndarray, labels: np.ndarray, path: str | Path, *,
                     title: str, bins: int = 10) -> None:
    """Share relevant against mean probability per bin, before and after (the diagonal is perfect calibration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib loads only on this path

    fig, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for name, p in (("served score", np.clip(before, 0, 1)), ("calibrated", after)):
        which = np.minimum((p * bins).astype(int), bins - 1)
        points = [(p[which == b].mean(), labels[which == b].mean()) for b in range(bins) if (which == b).any()]
        axis.plot(*zip(*points, strict=True), marker="o", label=f"{name} (ECE {expected_calibration_error(p, labels):.3f})")
    axis.set(xlabel="predicted P(relevant)", ylabel="share relevant", title=f"Reliability on held-out queries\n{title}",
             xlim=(0, 1), ylim=(0, 1))
    axis.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
