"""Choose the hybrid first stage's fusion on the shared IR collections' whole corpora.

``python bench/fusion.py [--limit N]`` indexes each collection with the local index (cached like any
other), then prints nDCG@10 and Recall@100 of lexical only, dense only, and each fusion candidate
(min-max or z-score interpolation at several dense weights, reciprocal-rank fusion), per set and
averaged. :mod:`hybrid` serves the winner. Needs ../shared/eval (skips with a message otherwise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from evaluation import end_to_end, harness
from retrieval import hybrid
from scoring.loading import packaged_scorer
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

EVAL_DIR = ROOT.parent / "shared" / "eval"
SETS = ["scifact", "trec-dl-2019-passage", "cranfield"]
WEIGHTS = (0.4, 0.5, 0.6, 0.7)


def candidates(dense: np.ndarray, lexical: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every fusion rule's (passage ids, scores) over the union of both top-100 lists."""
    union = np.union1d(hybrid.top(dense, hybrid.DEPTH), hybrid.top(lexical, hybrid.DEPTH))
    d, lex = dense[union].astype(np.float64), lexical[union].astype(np.float64)
    out = {"lexical": (hybrid.top(lexical, 100), None), "dense": (hybrid.top(dense, 100), None)}
    for w in WEIGHTS:
        out[f"minmax w={w}"] = (union, w * hybrid.minmax(d) + (1 - w) * hybrid.minmax(lex))
        out[f"z-score w={w}"] = (union, w * hybrid.zscore(d) + (1 - w) * hybrid.zscore(lex))
    ranks_d = {i: r for r, i in enumerate(hybrid.top(dense, hybrid.DEPTH), 1)}
    ranks_l = {i: r for r, i in enumerate(hybrid.top(lexical, hybrid.DEPTH), 1)}
    out["rrf k=60"] = (union, np.array([sum(1 / (60 + r[i]) for r in (ranks_d, ranks_l) if i in r) for i in union]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    if not EVAL_DIR.is_dir():
        print(f"skipped: no IR collections at {EVAL_DIR}")
        return 0
    settings = Settings.from_env()
    embedder = packaged_scorer(cache_dir=settings.cache_dir)
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name in SETS:
        dataset = harness.load_dataset(EVAL_DIR / name)
        index = end_to_end.open_collection_index(EVAL_DIR / name, dataset, embedder, settings.cache_dir)
        ids = [p.url for p in end_to_end.collection_passages(dataset)]
        qids = sorted(q for q in dataset.qrels if q in dataset.queries)[:args.limit]
        runs: dict[str, dict] = {}
        for qid in qids:
            dense, lexical = index.scores(dataset.queries[qid])
            for rule, (rows, scores) in candidates(dense, lexical).items():
                ordered = rows if scores is None else rows[np.lexsort((rows, -scores))]
                runs.setdefault(rule, {})[qid] = [(ids[i], -float(r)) for r, i in enumerate(ordered[:100])]
        index.close()
        qrels = {q: dataset.qrels[q] for q in qids}
        for rule, run in runs.items():
            means, _ = harness.measure(qrels, run, mrr_threshold=dataset.mrr_threshold, names=("ndcg@10", "recall@100"))
            table.setdefault(rule, {})[name] = (means["ndcg@10"], means["recall@100"])
    print(f"{'rule':<16}" + "".join(f"{n[:14]:>16}" for n in SETS) + f"{'mean':>16}   (nDCG@10 / Recall@100)")
    for rule, row in table.items():
        cells = [f"{row[n][0]:.3f} / {row[n][1]:.3f}" for n in SETS]
        mean = f"{np.mean([row[n][0] for n in SETS]):.3f} / {np.mean([row[n][1] for n in SETS]):.3f}"
        print(f"{rule:<16}" + "".join(f"{c:>16}" for c in cells) + f"{mean:>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
