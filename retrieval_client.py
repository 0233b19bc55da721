"""Fetch retrieval candidates: from a remote retrieval Space, or from the local embedded index (the Space layout's
client module; the retrievers themselves live in :mod:`retrieval.retrievers`).

Both backends answer ``search(query, k)`` with the seed Space's table: columns ``url``, ``text``,
``distance`` (lower is closer), closest first. The local index also takes a ``mode``: ``hybrid``
(BM25 and embeddings fused, the default), ``dense`` or ``lexical``.
"""

from __future__ import annotations

import pandas as pd

from retrieval.retrievers import (
    MAX_K,
    RESULT_COLUMNS,
    BackgroundRetriever,
    LocalRetriever,
    NoRetriever,
    RemoteRetriever,
    RetrievalError,
    Retriever,
    index_path,
    make_retriever,
    terminal_progress,
    validate_search_args,
)
from service.settings import Settings

__all__ = ["MAX_K", "RESULT_COLUMNS", "BackgroundRetriever", "LocalRetriever", "NoRetriever", "RemoteRetriever",
           "RetrievalError", "Retriever", "index_path", "main", "make_retriever", "similarity_search", "terminal_progress",
           "validate_search_args"]


def similarity_search(query: str, k: int = 5, *, url: str | None = None, timeout: float | None = None,
                      mode: str | None = None) -> pd.DataFrame:
    """The seed's helper: the k passages closest to ``query`` (url, text, distance; closest first).

    ``url`` defaults to ``RETRIEVAL_URL``; with neither, the local index answers (built on first use), in
    ``mode`` (hybrid by default, dense or lexical).
    """

    settings = Settings.from_env()
    retriever = make_retriever(retrieval_url=url or settings.retrieval_url, timeout=timeout or settings.retrieval_timeout,
                               corpus_path=settings.corpus_path, cache_dir=settings.cache_dir)
    return retriever.search(query, k, mode)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``index [CORPUS_PATH]`` builds or loads the local index; ``search QUERY [-k K]`` queries the backend."""
    import argparse
    import logging
    import time


    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="retrieval_client.py", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("index", help="build (or reuse) the local index of a corpus")
    build.add_argument("corpus", nargs="?", help="JSONL/CSV/Parquet file or folder of .txt/.md (default: CORPUS_PATH "
                                                  "or the built-in Python docs)")
    find = sub.add_parser("search", help="search the configured backend")
    find.add_argument("query")
    find.add_argument("-k", type=int, default=5)
    find.add_argument("--mode", choices=["hybrid", "dense", "lexical"], help="local index only (default hybrid)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    started = time.perf_counter()
    if args.command == "index":
        with terminal_progress() as report:
            retriever = LocalRetriever.build(corpus_path=args.corpus or settings.corpus_path,
                                             cache_dir=settings.cache_dir, progress=report)
        print(f"{retriever.description}; {retriever.index.stats.describe()}; "
              f"{time.perf_counter() - started:.1f} s in all")
        return
    retriever = make_retriever(retrieval_url=settings.retrieval_url, timeout=settings.retrieval_timeout,
                               corpus_path=settings.corpus_path, cache_dir=settings.cache_dir)
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(retriever.search(args.query, args.k, args.mode))


if __name__ == "__main__":
    main()
