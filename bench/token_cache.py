"""Planning a request whose documents were seen before (the same candidates, a new question) against a fresh one.

``python bench/token_cache.py [--docs 50] [--reps 200] [--dataset ../shared/eval/scifact]``

Plans (tokenizes, cuts into windows, counts the cost of) ``--docs`` SciFact abstracts for a query with a cross-encoder
built here (the packaged MiniLM tokenizer): fresh documents each time, then the same documents again for a new query,
whose token ids come from the token cache. Prints the p50 of each and the ratio, in one process. Where the shared
collections are absent, generated passages of 150-250 words stand in. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rerank
from scoring.synthetic import build_tiny_cross_encoder

ROOT = Path(__file__).resolve().parents[1]


def passages(dataset: Path, count: int) -> list[str]:
    """``count`` abstracts of the collection (title and text), or generated passages where it is absent."""
    corpus = dataset / "corpus.jsonl.gz"
    if corpus.is_file():
        out = []
        with gzip.open(corpus, "rt") as lines:
            for line in lines:
                row = json.loads(line)
                out.append(f"{row.get('title', '')}. {row['text']}".strip(". "))
                if len(out) == count:
                    return out
    rng = np.random.default_rng(0)
    words = "cells protein expression risk patients study trial dose levels gene receptor signal".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(150, 251)))) + f" {n}" for n in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "eval" / "scifact"))
    args = parser.parse_args()
    texts = passages(Path(args.dataset), args.docs * (args.reps + 1))
    with tempfile.TemporaryDirectory() as folder:
        scorer = rerank.load_scorer(str(build_tiny_cross_encoder(Path(folder) / "ce")), allow_fallback=False)
        sets = [texts[i * args.docs:(i + 1) * args.docs] for i in range(args.reps + 1)]
        scorer.plan("warm up", sets[0])
        fresh, repeated = [], []
        for n, docs in enumerate(sets[1:]):
            started = time.perf_counter()
            scorer.plan(f"question {n} about protein levels", docs)
            fresh.append(time.perf_counter() - started)
            started = time.perf_counter()
            scorer.plan(f"another question {n} about gene expression", docs)
            repeated.append(time.perf_counter() - started)
        tokens = statistics.mean(sum(scorer.plan("q", d).lengths) for d in sets[1:4])
    a, b = statistics.median(fresh), statistics.median(repeated)
    print(f"{args.docs} documents a request (~{tokens:,.0f} tokens), {args.reps} requests each way, one process:")
    print(f"  fresh documents:               plan p50 {a * 1e3:6.2f} ms")
    print(f"  the same documents, new query: plan p50 {b * 1e3:6.2f} ms  ({a / b:.2f}x faster)")
    print(f"  token cache: {scorer.pool.tokens.hits:,} hits, {scorer.pool.tokens.misses:,} misses, "
          f"{scorer.pool.tokens.held() / 2**20:.1f} MiB held")
    return 0


if __name__ == "__main__":
    sys.exit(main())
