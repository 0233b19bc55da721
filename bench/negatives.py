"""How many mined hard negatives are relevant passages nobody judged, and what the margin filter removes.

``python bench/negatives.py [--margins none,0.02,0.05,0.1] [--limit N]``

Each dev collection's judged queries are mined as ``evaluate.py --fine-tune`` mines them (the collection's
hybrid index, the packaged model as base), but from sparse judgments: one relevant passage a query, drawn with
the seed, as a user's labels often are. A mined negative is a false negative where the collection's full
judgments call it relevant. TREC DL 2019 has dense judgments (about a fifth of its candidates relevant),
so it shows the problem best. Needs ../shared/eval (or ``--collections``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import dev_sets

from evaluation import end_to_end
from evaluation.harness import load_dataset
from evaluation.mining import false_negatives, mine
from scoring.loading import packaged_scorer


def sparse(dataset, seed: int):
    """The collection with one relevant passage a judged query (drawn with ``seed``) and nothing else judged."""
    rng, level = random.Random(seed), dataset.mrr_threshold
    qrels = {}
    for qid, judged in sorted(dataset.qrels.items()):
        relevant = sorted(d for d, label in judged.items() if label >= level and d in dataset.corpus)
        if relevant and qid in dataset.queries:
            qrels[qid] = {rng.choice(relevant): judged[relevant[0]]}
    return replace(dataset, qrels=qrels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--margins", default="none,0.02,0.05,0.1", help="'none' mines without the filter")
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--limit", type=int, help="at most this many judged queries a collection")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "rag-augment-bench-index"),
                        help="where the collections' indexes are kept between runs")
    parsed = dev_sets.parse(parser)
    if parsed is None:
        return 0
    args, folders, seeds = parsed
    base = packaged_scorer()
    print("collection             margin  rows  negatives  false negatives  dropped by margin  random fill")
    for folder in folders:
        dataset = load_dataset(folder)
        index = end_to_end.open_collection_index(folder, dataset, base, Path(args.cache))
        try:
            for margin in args.margins.split(","):
                shares, rows_seen, stats = [], 0, {"candidates": 0, "dropped_by_margin": 0, "random_fill": 0}
                for seed in seeds:
                    labels = sparse(dataset, seed)
                    if args.limit:
                        labels = replace(labels, qrels=dict(sorted(labels.qrels.items())[: args.limit]))
                    rows, mined = mine(labels, index, args.negatives, progress=False,
                                       scorer=None if margin == "none" else base,
                                       margin=0.0 if margin == "none" else float(margin))
                    shares.append(false_negatives(rows, dataset.qrels))
                    rows_seen += len(rows)
                    for key in stats:
                        stats[key] += mined[key]
                print(f"{dataset.name:<22} {margin:>6} {rows_seen:>5} {rows_seen * args.negatives:>10} "
                      f"{sum(shares) / len(shares):>16.1%} {stats['dropped_by_margin'] / max(1, stats['candidates']):>18.1%}"
                      f" {stats['random_fill'] / max(1, rows_seen * args.negatives):>12.1%}", flush=True)
        finally:
            index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
