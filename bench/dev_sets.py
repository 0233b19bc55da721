"""The dev collections the quality benchmarks run on (``../shared/eval``: research-only licences, read in place), and
the query split the engine benchmarks share: half of each collection's judged queries develop (train the measuring
cross-encoder, set the gate's thresholds), the other half is held out for every reported figure."""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import rerank
from evaluation.calibrate import split_queries
from evaluation.harness import Dataset, load_dataset, measure, read_run
from service import assembly
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ("scifact", "trec-dl-2019-passage", "cranfield")
EVAL_DIR = ROOT.parent / "shared" / "eval"


SCORES_CACHE = Path(tempfile.gettempdir()) / "rag-augment-bench-scores"


def judged_model_arguments(parser: argparse.ArgumentParser, *, limit: str, scores_cache: bool = True) -> None:
    """The arguments every script judging the trained cross-encoder on the dev collections takes: ``--model``,
    ``--depth``, ``--limit`` (``limit``: what it caps) and, where scores are shared, ``--scores-cache``."""
    parser.add_argument("--model", required=True, help="the trained cross-encoder (bench/train_reranker.py --out)")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--limit", type=int, help=f"at most this many {limit}")
    if scores_cache:
        parser.add_argument("--scores-cache", default=str(SCORES_CACHE))


def parse(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[Path], list[int]] | None:
    """The script's arguments with ``--collections`` (default: the three dev collections) and ``--seeds`` (the query
    splits' seeds): (arguments, collections, seeds), or None having said which collections are missing."""
    parser.add_argument("--collections", nargs="*", default=[str(EVAL_DIR / c) for c in COLLECTIONS])
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    folders = [Path(c) for c in args.collections]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        print(f"collections not found: {', '.join(missing)} (they live in ../shared/eval)", file=sys.stderr)
        return None
    return args, folders, [int(s) for s in args.seeds.split(",")]


def parse_training(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, list[Path]] | int:
    """A training script's arguments with ``--limit`` and ``--json`` (and ``--collections``, see :func:`parse`), or the
    exit code when it cannot run: 0 where the collections are missing, 2 where ``--out`` already holds files."""
    parser.add_argument("--limit", type=int, help="at most this many queries of each half and collection")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parsed = parse(parser)
    if parsed is None:
        return 0
    args, folders, _ = parsed
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"--out {out} exists and is not empty; name a new folder", file=sys.stderr)
        return 2
    return args, folders


@dataclass
class Pools:
    """One collection's judged queries of one half of the split, each with its BM25 candidates (best first)."""

    dataset: Dataset
    pools: dict[str, list[str]]
    first: dict[str, list[float]]  # the first stage's scores, higher is better

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def pairs(self) -> int:
        return sum(len(ids) for ids in self.pools.values())

    def ndcg(self, scores: dict[str, np.ndarray]) -> float:
        """nDCG@10 of each query's candidates ordered by ``scores`` (ties in first-stage order), on the collection's
        own labels."""
        return float(np.mean(list(self.per_query(scores).values())))

    def per_query(self, scores: dict[str, np.ndarray]) -> dict[str, float]:
        """Each query's nDCG@10 with its candidates ordered by ``scores``."""
        run = {q: [(d, float(s)) for d, s in zip(ids, scores[q], strict=True)] for q, ids in self.pools.items()}
        per_query = measure({q: self.dataset.qrels[q] for q in self.pools}, run,
                            mrr_threshold=self.dataset.mrr_threshold, names=("ndcg@10",))[1]
        return {q: per_query[q]["ndcg@10"] for q in self.pools}

    def first_stage(self) -> dict[str, np.ndarray]:
        """The first stage's own order as scores."""
        return {q: -np.arange(len(ids), dtype=np.float64) for q, ids in self.pools.items()}


def split_pools(folder: Path, *, depth: int = 50, seed: int = 0, limit: int | None = None) -> tuple[Pools, Pools]:
    """(development, held-out) halves of a collection's judged queries that have BM25 candidates, each query with its
    top ``depth`` candidates; ``limit``: at most that many queries a half (a quick run)."""
    dataset = load_dataset(folder)
    run = read_run(folder / "candidates" / "bm25_top100.trec")
    judged = sorted(q for q in dataset.qrels if q in dataset.queries and q in run
                    and any(v > 0 for v in dataset.qrels[q].values()))
    halves = split_queries(judged, 0.5, seed)

    def pools(queries: list[str]) -> Pools:
        chosen = sorted(queries, key=lambda q: (len(q), q))[:limit]
        kept = {q: [(d, s) for d, s in run[q] if d in dataset.corpus][:depth] for q in chosen}
        return Pools(dataset, {q: [d for d, _ in c] for q, c in kept.items()}, {q: [s for _, s in c] for q, c in kept.items()})

    return pools(halves[0]), pools(halves[1])


def fingerprint(model: str) -> str:
    """Names a model's files as they are now (names, sizes, times), so cached scores of a retrained model are not
    reused."""
    import hashlib

    files = sorted(p for p in Path(model).rglob("*") if p.is_file())
    stats = [(str(p.relative_to(model)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:12]


def uncached_service(loaded, settings=None):
    """The service the app would build around an already loaded scorer, with no score cache: every benchmark pass
    runs the engine rather than reading an earlier pass's scores."""
    return assembly.build(settings or Settings(), scorer=rerank.Scorer(loaded.info, loaded, cache_bytes=0))


def score_pools(service, pools: Pools) -> dict[str, np.ndarray]:
    """The model's own scores of each query's candidates, ranked through ``service`` as the app ranks them."""
    data = pools.dataset
    return {q: service.rank(data.queries[q], [data.corpus[d] for d in ids], face="evaluate").scores(len(ids))
            for q, ids in pools.pools.items()}


def cached_scores(folder: Path, key: str, compute) -> dict[str, np.ndarray]:
    """``compute()``'s per-query scores, kept in ``folder/key.npz`` so another benchmark run reuses them."""
    path = folder / f"{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {q: stored[q] for q in stored.files}
    scores = compute()
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, **scores)
    return scores
