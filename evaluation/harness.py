"""Reranking evaluation on a labelled collection (BEIR layout): datasets, TREC runs, ir-measures metrics, the
per-query comparison and the plot; ``evaluate.py`` is its command line."""

from __future__ import annotations

import gzip
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoring.ranking import Ranking, ScoringPolicy
from service import Service

METRIC_NAMES = ("ndcg@10", "mrr@10", "recall@10")
Run = dict[str, list[tuple[str, float]]]
Scored = dict[str, tuple[list[str], np.ndarray, Ranking]]

SCORINGS = {
    "rerank": ScoringPolicy(fusion="none", name="rerank"),
    "rrf": ScoringPolicy(fusion="rrf", weight=0.5, name="rrf"),
    "interpolate": ScoringPolicy(fusion="interpolate", weight=0.7, name="interpolate"),
}


@dataclass
class Dataset:
    """A BEIR-layout collection: documents, judged queries, graded judgments."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def mrr_threshold(self) -> int:
        """TREC DL counts a passage relevant for MRR at label 2; the other sets at 1."""
        return 2 if "trec-dl" in self.name else 1


def _jsonl(path: Path) -> Iterable[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def document_text(title: str, text: str) -> str:
    """Title and body as one text (the title once, where the body already starts with it)."""
    title, text = (title or "").strip(), (text or "").strip()
    return text if not title or text.lower().startswith(title.lower()) else f"{title} {text}"


def check_layout(folder: str | Path) -> Path:
    """The collection's corpus file; FileNotFoundError naming what a BEIR-layout folder holds where ``folder`` lacks it
    (checked before any model loads)."""
    folder = Path(folder)
    corpus_file = next((folder / n for n in ("corpus.jsonl.gz", "corpus.jsonl") if (folder / n).is_file()), None)
    if corpus_file is None or not (folder / "queries.jsonl").is_file() or not (folder / "qrels" / "test.tsv").is_file():
        raise FileNotFoundError(f"{folder} is not a BEIR-layout folder (corpus.jsonl[.gz], queries.jsonl, qrels/test.tsv)")
    return corpus_file


def load_dataset(folder: str | Path) -> Dataset:
    """Read corpus.jsonl(.gz), queries.jsonl and qrels/test.tsv."""
    folder = Path(folder)
    corpus_file = check_layout(folder)
    corpus = {}
    for n, d in enumerate(_jsonl(corpus_file), start=1):
        if not isinstance(d.get("text"), str) or "_id" not in d:
            raise ValueError(f"{corpus_file.name} line {n}: every document needs an '_id' and a 'text' (text), "
                             f"got fields {sorted(d)}")
        corpus[str(d["_id"])] = document_text(d.get("title", ""), d["text"])
    if not any(corpus.values()):
        raise ValueError(f"{corpus_file.name}: the corpus holds no document with text")
    queries = {str(q["_id"]): q["text"] for q in _jsonl(folder / "queries.jsonl")}
    return Dataset(folder.name, corpus, queries, read_qrels(folder / "qrels" / "test.tsv"))


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id  corpus-id  score`` lines (a header line is skipped); a label that is not a whole number is an error
    naming the file, the line and the value."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with open(path, encoding="utf-8") as handle:
        for i, line in enumerate(handle):
            parts = line.rstrip("\n").split("\t")
            if not line.strip() or (i == 0 and not parts[-1].strip().lstrip("-").isdigit()):
                continue
            if len(parts) < 3 or not parts[2].strip().lstrip("-").isdigit():
                value = parts[2] if len(parts) >= 3 else "(missing)"
                raise ValueError(f"{path.parent.name}/{path.name} line {i + 1}: the label (third column) must be a whole "
                                 f"number, got {value!r}")
            qrels[parts[0]][parts[1]] = int(parts[2])
    return dict(qrels)


def read_run(path: str | Path) -> dict[str, list[tuple[str, float]]]:
    """A TREC run (``qid Q0 docid rank score tag``) as each query's (docid, score), best first (ir-measures' reader)."""
    import ir_measures  # lazy: ir-measures loads only on this path

    run: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for doc in ir_measures.read_trec_run(str(path)):
        run[doc.query_id].append((doc.doc_id, float(doc.score)))
    return {q: sorted(docs, key=lambda d: -d[1]) for q, docs in run.items()}


def write_run(run: dict[str, list[tuple[str, float]]], path: str | Path, tag: str = "rag-augment") -> None:
    """Write a TREC run, each query's documents by descending score with ranks from 1."""
    with open(path, "w", encoding="utf-8") as handle:
        for qid in sorted(run, key=lambda q: (len(q), q)):
            for rank, (doc, score) in enumerate(sorted(run[qid], key=lambda d: -d[1]), start=1):
                handle.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def measure(qrels: dict[str, dict[str, int]], run: dict[str, list[tuple[str, float]]], *,
            mrr_threshold: int = 1, names: Iterable[str] = METRIC_NAMES) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics (``names``: ndcg@K, mrr@K, recall@K) over the judged queries (ir-measures / trec_eval)."""
    import ir_measures  # lazy: ir-measures loads only on this path
    from ir_measures import RR, R, nDCG  # lazy: ir-measures loads only on this path

    builders = {"ndcg": lambda k: nDCG @ k, "mrr": lambda k: RR(rel=mrr_threshold) @ k, "recall": lambda k: R @ k}
    measures = {name: builders[name.split("@")[0]](int(name.split("@")[1])) for name in names}
    judged = {q: docs for q, docs in qrels.items() if q in run}
    qrel_list = [ir_measures.Qrel(q, d, rel) for q, docs in judged.items() for d, rel in docs.items()]
    scored = [ir_measures.ScoredDoc(q, d, s) for q, docs in run.items() if q in judged for d, s in docs]
    per_query: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(measures, 0.0))
    names = {v: k for k, v in measures.items()}
    for metric in ir_measures.iter_calc(list(measures.values()), qrel_list, scored):
        per_query[metric.query_id][names[metric.measure]] = float(metric.value)
    for q in judged:  # a judged query the run misses scores 0
        per_query[q]
    means = {k: float(np.mean([per_query[q][k] for q in judged])) if judged else 0.0 for k in measures}
    return means, dict(per_query)


def score_candidates(dataset: Dataset, candidates: dict[str, list[tuple[str, float]]], service: Service, *,
                     policy: ScoringPolicy | None = None, limit: int | None = None, long_documents: str = "chunk",
                     progress: Callable[[int, int, float], None] | None = None) -> Scored:
    """Each judged query's candidates ranked through the service (as the app ranks): {qid: (docids, first stage, ranking)}."""
    qids = sorted((q for q in candidates if q in dataset.qrels and q in dataset.queries), key=lambda q: (len(q), q))
    qids = qids[:limit] if limit else qids
    out = {}
    started, pairs = time.perf_counter(), 0
    for n, qid in enumerate(qids, start=1):
        docs = [(d, s) for d, s in candidates[qid] if d in dataset.corpus]
        ids = [d for d, _ in docs]
        first = np.array([s for _, s in docs], dtype=np.float64)
        ranking = service.rank(dataset.queries[qid], [dataset.corpus[d] for d in ids], first_stage=first,
                               policy=policy or service.policy, long_documents=long_documents, face="evaluate",
                               route=dataset.name)
        out[qid] = (ids, first, ranking)
        pairs += len(ids)
        if progress:
            progress(n, len(qids), pairs / max(time.perf_counter() - started, 1e-9))
    return out


def build_run(scored: Scored, policy: ScoringPolicy | None = None) -> Run:
    """The reranked run: as ranked, or the same model scores under another ``policy`` (no re-scoring)."""
    run = {}
    for q, (ids, _, ranking) in scored.items():
        ranked = ranking if policy is None else ranking.under(policy)
        run[q] = [(ids[r.index], r.score) for r in ranked.with_duplicates()]
    return run


def compare(first: dict[str, dict[str, float]], second: dict[str, dict[str, float]], metric: str = "ndcg@10") -> dict[str, int]:
    """Per-query wins, ties and losses of ``second`` over ``first``."""
    counts = {"wins": 0, "ties": 0, "losses": 0}
    for q, values in first.items():
        delta = second.get(q, {}).get(metric, 0.0) - values[metric]
        counts["wins" if delta > 1e-9 else "losses" if delta < -1e-9 else "ties"] += 1
    return counts


def evaluate(dataset_dir: str | Path, *, service: Service, candidates: str | Path | None = None,
             policy: ScoringPolicy | None = None, limit: int | None = None,
             progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Rerank a collection's candidate pools through the service and compare with the first stage; a JSON-ready report."""
    started = time.perf_counter()
    policy = policy or service.policy
    dataset = load_dataset(dataset_dir)
    pools = read_run(candidates or Path(dataset_dir) / "candidates" / "bm25_top100.trec")
    scored = score_candidates(dataset, pools, service, policy=policy, limit=limit, progress=progress)
    first_run = {q: list(zip(ids, first.tolist(), strict=True)) for q, (ids, first, _) in scored.items()}
    reranked_run = build_run(scored)
    qrels = {q: dataset.qrels[q] for q in scored}
    first_means, first_per_query = measure(qrels, first_run, mrr_threshold=dataset.mrr_threshold)
    rerank_means, rerank_per_query = measure(qrels, reranked_run, mrr_threshold=dataset.mrr_threshold)
    scorer = service.models.default
    return {
        "dataset": dataset.name, "queries": len(scored), "model": scorer.info.name, "mode": scorer.info.mode,
        "backend": scorer.backend.backend, "scoring": policy.name, "fusion": policy.describe(scorer.info.mode),
        "first_stage": first_means, "reranked": rerank_means,
        "difference": {k: rerank_means[k] - first_means[k] for k in METRIC_NAMES},
        "per_query": compare(first_per_query, rerank_per_query),
        "seconds": time.perf_counter() - started,
        "_runs": {"reranked": reranked_run, "first_per_query": first_per_query, "rerank_per_query": rerank_per_query},
    }


def plot(report: dict, path: str | Path) -> None:
    """Per-query nDCG@10 change (sorted) and the summary bars, as a PNG."""
    import matplotlib  # lazy: matplotlib loads only on this path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib loads only on this path

    first, second = report["_runs"]["first_per_query"], report["_runs"]["rerank_per_query"]
    deltas = sorted(second[q]["ndcg@10"] - first[q]["ndcg@10"] for q in first)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    left.bar(range(len(deltas)), deltas, color=["#2a9d8f" if d > 0 else "#e76f51" for d in deltas], width=1.0)
    left.axhline(0, color="black", linewidth=0.6)
    left.set(title=f"{report['dataset']}: nDCG@10 change per query ({report['scoring']})", xlabel="queries (sorted)",
             ylabel="reranked - first stage")
    grouped_bars(right, {"first stage": [report["first_stage"][n] for n in METRIC_NAMES],
                         "reranked": [report["reranked"][n] for n in METRIC_NAMES]}, METRIC_NAMES)
    right.set(ylim=(0, 1), title=f"{report['queries']} queries; W/T/L {report['per_query']['wins']}/"
                                 f"{report['per_query']['ties']}/{report['per_query']['losses']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grouped_bars(axis, series: dict[str, list[float]], names: Iterable[str]) -> None:
    """Bars of several series side by side for each metric, with a legend (the plots' common part)."""
    names = list(names)
    x, width = np.arange(len(names)), 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        axis.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    axis.set_xticks(x, names)
    axis.legend()


