"""The CPU batch budget: throughput against how long another request waits for a worker, in ONE run.

``python bench/batch_size.py [--budgets 1024 512 256]`` loads the packaged all-MiniLM-L6-v2 (embedding mode) and a
MiniLM-L6-shaped cross-encoder on fp32 torch and, for each token budget a batch may hold, prints:
(a) one 50-document request's p50 (fresh documents each time, nothing cached), the throughput side;
(b) small 20-document requests' p50 idle, and while a large request (51 documents of ~600 words) keeps running
    from another client: the wait side, as a ratio.
Scripts, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from latency import make_requests

import rerank
from evaluation.load import WORDS, make_documents
from scoring.synthetic import build_minilm_cross_encoder
from service import assembly
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

QUERY = "How do I run a coroutine with a timeout and cancel it cleanly?"
UNIQUE = itertools.count()


def fifty(scorer: rerank.Scorer, requests: list[list[str]]) -> float:
    """p50 of 50-document requests, each made fresh (no cache hits)."""
    times = []
    for docs in requests:
        n = next(UNIQUE)
        started = time.perf_counter()
        scorer.score(QUERY, [f"{d} {n}" for d in docs])
        times.append(time.perf_counter() - started)
    return float(np.median(times[2:]))


def small_during_large(scorer: rerank.Scorer, small: int = 12) -> tuple[float, float]:
    """Small requests' p50 idle and while a large request from another client keeps running."""
    service = assembly.build(Settings(), scorer=scorer)
    rng = random.Random(next(UNIQUE))  # fresh documents every run: nothing comes from the cache

    def smalls() -> float:
        times = []
        for _ in range(small):
            docs = [f"{d} {next(UNIQUE)}" for d in make_documents(rng, 20)]
            started = time.perf_counter()
            service.rank(QUERY, docs, client="small")
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    smalls()
    idle = smalls()
    stop = threading.Event()

    def large() -> None:
        while not stop.is_set():
            n = next(UNIQUE)
            service.rank(QUERY, [" ".join(rng.choice(WORDS) for _ in range(600)) + f" {n} {i}" for i in range(51)],
                         client="large")

    thread = threading.Thread(target=large)
    thread.start()
    time.sleep(1.0)
    during = smalls()
    stop.set()
    thread.join()
    return idle, during


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1024, 512, 256])
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        cross = build_minilm_cross_encoder(Path(tmp) / "cross-encoder")
        print("| model | token budget | 50 documents p50 ms | small p50 idle ms | during a large request | ratio |")
        print("|---|---|---|---|---|---|")
        for kind, path in (("all-MiniLM-L6-v2 (embedding)", str(rerank.packaged_model_path())),
                           ("MiniLM-L6 cross-encoder", str(cross))):
            scorer = rerank.load_scorer(path, backend="torch", allow_fallback=False)
            requests = make_requests(10, 50, AutoTokenizer.from_pretrained(path), seed=0)
            fifty(scorer, requests[:3])  # warm-up
            for budget in args.budgets:
                scorer._token_budget = budget
                p50 = fifty(scorer, requests)
                idle, during = small_during_large(scorer)
                print(f"| {kind} | {budget} | {p50 * 1000:.0f} | {idle * 1000:.0f} | {during * 1000:.0f} | "
                      f"{during / idle:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
