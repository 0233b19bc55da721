"""Retrieval speed and cost of the local index, per mode, and the app's retrieve-then-rerank latency.

``python bench/index_speed.py [--passages 100000] [--queries 40]`` prints:

(a) on the built-in corpus (the Python docs, the index the app serves by default): p50/p90 of
    ``search`` per mode (k=50) and of the app's pipeline (hybrid retrieval of k=50, then rerank,
    keep top 5) through the service, with the packaged model the app serves offline;
(b) on a corpus of ``--passages`` passages (the built-in passages repeated, each copy numbered): p50/p90
    of ``search`` per mode with k=50, the build time of each half, and what the index costs in memory
    and on disk. Its document vectors are random unit vectors (embedding 100,000 passages takes about
    an hour on 2 cores; the cost of a search does not depend on their values); queries are embedded
    by the real model, and BM25 indexes the real words.
Scripts, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import retrieval_client as rc
from retrieval import corpus
from retrieval.index import LocalIndex
from scoring.loading import packaged_scorer
from service import assembly
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

QUERIES = ["How do I parse JSON from a string?", "run a function in a background thread",
           "create a temporary directory that is removed automatically", "compress a file with gzip",
           "split a path into directory and file name", "sort a list of dictionaries by a key",
           "read a CSV file row by row", "measure how long a piece of code takes", "send an HTTP GET request",
           "generate a random password", "copy a directory tree", "format a date as ISO 8601",
           "match an email address with a regular expression", "wait for several futures to finish",
           "log messages to a rotating file", "parse command line arguments"]


class RandomDocuments:
    """An embedder whose document vectors are random unit vectors and whose queries the real model embeds."""

    def __init__(self, model) -> None:
        self.model = model
        self.fingerprint = "random-documents-v1"
        self._rng = np.random.default_rng(0)

    def embed(self, texts, *, query: bool = False, background: bool = False) -> np.ndarray:
        if query:
            return self.model.embed(texts, query=True)
        vectors = self._rng.standard_normal((len(texts), 384)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed(fn, queries: list[str]) -> tuple[float, float]:
    """p50 and p90 in milliseconds of ``fn(query)`` over the queries (after one warm-up call)."""
    fn(queries[0])
    times = []
    for q in queries:
        started = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def builtin(queries: list[str], settings: Settings) -> None:
    """(a) the built-in corpus, as the app serves it."""
    model = packaged_scorer(cache_dir=settings.cache_dir)
    retriever = rc.LocalRetriever.build(corpus_path=None, cache_dir=settings.cache_dir, embedder=model)
    service = assembly.build(settings, scorer=model, retriever=retriever)
    print(f"(a) {retriever.description}; reranker {model.info.name} ({model.info.mode}, {model.backend.backend})")
    for mode in ("dense", "lexical", "hybrid"):
        p50, p90 = timed(lambda q, m=mode: retriever.search(q, 50, m), queries)
        print(f"    search k=50 {mode:<8} p50 {p50:7.1f} ms  p90 {p90:7.1f} ms")
    p50, p90 = timed(lambda q: service.retrieve_and_rank(q, 50, 5), queries)
    print(f"    retrieve k=50 + rerank, top 5: p50 {p50:7.1f} ms  p90 {p90:7.1f} ms")


def large(count: int, queries: list[str], settings: Settings) -> None:
    """(b) a corpus of ``count`` passages."""
    base = corpus.builtin_passages()
    passages = [corpus.Passage(url=f"{p.url}#copy={i // len(base)}", text=f"{p.text} (copy {i // len(base)})")
                for i, p in ((i, base[i % len(base)]) for i in range(count))]
    embedder = RandomDocuments(packaged_scorer(cache_dir=settings.cache_dir))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "index-large.duckdb"
        started = time.perf_counter()
        index = LocalIndex.open(passages, embedder, path=path, name=f"{count} passages")
        built = time.perf_counter() - started
        print(f"(b) {count:,} passages (random document vectors): built in {built:.1f} s; in memory "
              f"{index.memory_bytes / 2**20:.0f} MiB (vectors {index.memory_bytes / 2**20 - index.lexical_bytes / 2**20:.0f}"
              f" + BM25 {index.lexical_bytes / 2**20:.0f}); on disk {path.stat().st_size / 2**20:.0f} MiB")
        for mode in ("dense", "lexical", "hybrid"):
            p50, p90 = timed(lambda q, m=mode: index.search(q, 50, m), queries)
            print(f"    search k=50 {mode:<8} p50 {p50:7.1f} ms  p90 {p90:7.1f} ms")
        embed50, _ = timed(lambda q: embedder.model.embed([q + " (uncached)" + str(time.perf_counter())], query=True),
                           queries)
        print(f"    of which embedding the query: p50 {embed50:.1f} ms")
        index.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()
    queries = [f"{QUERIES[i % len(QUERIES)]}{'' if i < len(QUERIES) else f' ({i})'}" for i in range(args.queries)]
    settings = Settings.from_env()
    builtin(queries, settings)
    large(args.passages, queries, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
