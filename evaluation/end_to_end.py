"""End-to-end evaluation: a labelled collection's whole corpus in the local index, every judged query
through the app's own retrieve-then-rerank, each stage measured.

Stages: ``lexical`` (BM25 alone), ``dense`` (embeddings alone), ``hybrid`` (both fused, the app's first
stage) and ``reranked`` (the app's pipeline: hybrid retrieval of ``depth`` passages, then the reranker
with the service's scoring policy). Each document of the collection is one passage, addressed by its id.
The collection's index is cached like any other (same content hash, rebuilt only when it changes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from evaluation.harness import Dataset, Run, grouped_bars, load_dataset, measure
from retrieval import retrievers as rc
from retrieval.corpus import Passage
from retrieval.index import LocalIndex
from scoring.ranking import ScoringPolicy
from service import Service

STAGES = ("lexical", "dense", "hybrid", "reranked")
E2E_METRICS = ("ndcg@10", "mrr@10", "recall@100")
DEPTH = 100


def collection_passages(dataset: Dataset) -> list[Passage]:
    """One passage per document (url = its id), in the collection's order; documents without text are skipped."""
    return [Passage(url=doc_id, text=text, metadata={}) for doc_id, text in dataset.corpus.items() if text.strip()]


def open_collection_index(dataset_dir: Path, dataset: Dataset, embedder, cache_dir: Path, progress=None):
    """The collection's local index (built once, then reused from ``cache_dir``)."""

    passages = collection_passages(dataset)
    if not passages:
        raise ValueError(f"{dataset.name}: the corpus holds no document with text")
    path = rc.index_path(Path(cache_dir), str(Path(dataset_dir) / "corpus"))
    return LocalIndex.open(passages, embedder, path=path, name=dataset.name, progress=progress)


def _stage_run(table) -> list[tuple[str, float]]:
    """A retrieved table (url, distance) as (doc id, score), higher is better."""
    return [(str(u), -float(d)) for u, d in zip(table["url"], table["distance"], strict=True)]


def run_stages(dataset: Dataset, index, service: Service, *, depth: int = DEPTH, limit: int | None = None,
               progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, Run], dict]:
    """Each judged query through every stage: {stage: run}, and the rankings (for re-ranking under other policies)."""

    retriever = rc.LocalRetriever(index)
    qids = sorted((q for q in dataset.qrels if q in dataset.queries), key=lambda q: (len(q), q))
    qids = qids[:limit] if limit else qids
    runs: dict[str, Run] = {stage: {} for stage in STAGES}
    rankings = {}
    for n, qid in enumerate(qids, start=1):
        query = dataset.queries[qid]
        for mode in ("lexical", "dense", "hybrid"):
            runs[mode][qid] = _stage_run(index.search(query, depth, mode))
        result = service.retrieve_and_rank(query, k=depth, top_n=None, mode="hybrid", retriever=retriever,
                                           face="evaluate", route=f"{dataset.name}/end-to-end")
        urls = result.retrieved["url"].tolist()
        ranking = result.rerank.ranking
        runs["reranked"][qid] = [(str(urls[r.index]), r.score) for r in ranking.with_duplicates()]
        rankings[qid] = (urls, ranking)
        if progress:
            progress(n, len(qids))
    return runs, rankings


def rerun(rankings: dict, policy: ScoringPolicy) -> Run:
    """The reranked run under another scoring policy, from the same model scores (no re-scoring)."""
    return {q: [(str(urls[r.index]), r.score) for r in ranking.under(policy).with_duplicates()]
            for q, (urls, ranking) in rankings.items()}


def evaluate_end_to_end(dataset_dir: str | Path, *, service: Service, embedder, cache_dir: Path,
                        depth: int = DEPTH, limit: int | None = None, progress=None, index_progress=None,
                        dataset: Dataset | None = None) -> dict:
    """Index the collection, run every judged query through each stage, measure; a JSON-ready report whose
    ``lexical``, ``dense``, ``hybrid`` and ``reranked`` objects each hold ``ndcg@10``, ``mrr@10`` and ``recall@100``
    (``dataset``: the collection already read, its judgments perhaps a held-out part)."""
    started = time.perf_counter()
    dataset = dataset or load_dataset(dataset_dir)
    index = open_collection_index(Path(dataset_dir), dataset, embedder, cache_dir, progress=index_progress)
    try:
        indexed = time.perf_counter()
        runs, rankings = run_stages(dataset, index, service, depth=depth, limit=limit, progress=progress)
        stats = index.stats
        memory = index.memory_bytes
    finally:
        index.close()
    qrels = {q: dataset.qrels[q] for q in runs["reranked"]}
    report: dict = {"dataset": dataset.name, "queries": len(qrels), "passages": stats.passages, "depth": depth}
    per_query = {}
    for stage in STAGES:
        report[stage], per_query[stage] = measure(qrels, runs[stage], mrr_threshold=dataset.mrr_threshold,
                                                  names=E2E_METRICS)
    scorer = service.models.default
    report.update({
        "model": scorer.info.name, "mode": scorer.info.mode, "backend": scorer.backend.backend,
        "fusion": service.policy.describe(scorer.info.mode),
        "index": {"reused": stats.reused, "seconds": round(stats.seconds, 2), "memory_bytes": memory},
        "seconds": {"index": round(indexed - started, 2), "queries": round(time.perf_counter() - indexed, 2)},
        "_runs": runs, "_per_query": per_query, "_rankings": rankings, "_qrels": qrels,
        "_mrr_threshold": dataset.mrr_threshold,
    })
    return report


def print_report(report: dict) -> None:
    """The stages as one table."""
    print(f"{report['dataset']}: {report['queries']} queries over {report['passages']} passages, reranker "
          f"{report['model']} ({report['mode']}, backend {report['backend']}; {report['fusion']}); "
          f"index {'reused' if report['index']['reused'] else 'built'} in {report['seconds']['index']:.1f} s, "
          f"queries {report['seconds']['queries']:.1f} s")
    print(f"{'stage':<10}" + "".join(f"{m:>12}" for m in E2E_METRICS))
    for stage in STAGES:
        print(f"{stage:<10}" + "".join(f"{report[stage][m]:>12.4f}" for m in E2E_METRICS))


def plot_report(report: dict, path: str | Path) -> None:
    """The stages' metrics as grouped bars, as a PNG."""
    import matplotlib  # lazy: matplotlib loads only on this path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib loads only on this path


    fig, axis = plt.subplots(figsize=(8, 4))
    grouped_bars(axis, {stage: [report[stage][m] for m in E2E_METRICS] for stage in STAGES}, E2E_METRICS)
    axis.set(ylim=(0, 1), title=f"{report['dataset']} end to end: {report['queries']} queries, "
                                f"{report['passages']} passages")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
