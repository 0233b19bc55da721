"""What reading fewer tokens of each document costs in ranking quality and saves in time (``RERANK_MAX_TOKENS_PER_DOC``).

``python bench/doc_tokens.py --model DIR [--cuts none,384,256,128] [--skims 128:20] [--backend onnxruntime]
[--depth 50] [--limit N] [--models trained,embedded]``

For the trained cross-encoder (``bench/train_reranker.py --out``) and the embedded default, each cut (each document's
first N tokens; ``none``: the whole document, long ones in overlapping windows as the app scores them) and each skim
(``N:K``, ``RERANK_SKIM_TOKENS`` and ``RERANK_SKIM_KEEP``: every document's first N tokens, the best K whole) is scored
through the service on each dev collection's judged queries (BM25 top ``--depth`` reranked), the development half
(where a default is chosen) and the held-out half (where it is checked): nDCG@10 per collection and half, and the
seconds and tokens per 50-passage SciFact request (the median over the held-out SciFact queries, in-process, one
backend for every cut). Needs ../shared/eval.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import dev_sets
import numpy as np

import rerank
from service.settings import Settings


def measure(model: str, settings: Settings, halves: list[tuple[dev_sets.Pools, dev_sets.Pools]], backend: str,
            cache: Path) -> dict:
    """nDCG@10 per collection and half with documents read as ``settings`` say; the held-out SciFact requests' time
    and tokens."""
    loaded = rerank.load_scorer(model, allow_fallback=False, backend=backend, cache_dir=cache)
    service = dev_sets.uncached_service(loaded, settings)
    row: dict = {"quality": {}}
    for pair in halves:
        for part, pools in zip(("dev", "held"), pair, strict=True):
            data, scores, seconds, tokens = pools.dataset, {}, [], []
            for q, ids in pools.pools.items():
                started = time.perf_counter()
                ranking = service.rank(data.queries[q], [data.corpus[d] for d in ids], face="evaluate")
                seconds.append(time.perf_counter() - started)
                tokens.append(ranking.cost)
                scores[q] = ranking.scores(len(ids))
            row["quality"][(pools.name, part)] = pools.ndcg(scores)
            if pools.name == "scifact" and part == "held":
                row["seconds"], row["tokens"] = float(np.median(seconds)), float(np.median(tokens))
        print(f"{Path(model).name} {label(settings)}: {pair[0].name} done", file=sys.stderr, flush=True)
    return row


def label(settings: Settings) -> str:
    """How a row reads its documents."""
    if settings.skim_tokens is not None:
        return f"skim {settings.skim_tokens}, {settings.skim_keep} whole"
    return str(settings.max_tokens_per_doc or "whole")


def readings(cuts: str, skims: str) -> list[Settings]:
    """The ways of reading to compare: each cut, then each skim."""
    out = [Settings(max_tokens_per_doc=None if c == "none" else int(c), skim_tokens=None) for c in cuts.split(",") if c]
    for skim in filter(None, skims.split(",")):
        tokens, keep = skim.split(":")
        out.append(Settings(skim_tokens=int(tokens), skim_keep=int(keep)))
    return out


def timing(r: dict) -> str:
    """The time and tokens columns: blank where SciFact, whose median request they time, was not among the collections."""
    return f"{r['seconds']:>13.2f}{r['tokens']:>9.0f}" if "seconds" in r else f"{'':>13}{'':>9}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    dev_sets.judged_model_arguments(parser, limit="queries of each half and collection", scores_cache=False)
    parser.add_argument("--cuts", default="none,384,256,128")
    parser.add_argument("--skims", default="", help="N:K,...: every document's first N tokens, the best K read whole")
    parser.add_argument("--models", default="trained,embedded", help="which of the two models to measure")
    parser.add_argument("--backend", default="onnxruntime", help="one backend for every cut")
    parsed = dev_sets.parse(parser)
    if parsed is None:
        return 0
    args, folders, _ = parsed
    halves = [dev_sets.split_pools(f, depth=args.depth, limit=args.limit) for f in folders]
    ways = readings(args.cuts, args.skims)
    names = [pair[0].name for pair in halves]
    print(f"nDCG@10 on each collection's judged queries, development half / held-out half, BM25 top {args.depth} "
          f"reranked on {args.backend}; time and tokens: the median held-out 50-passage SciFact request")
    print(f"{'model':<22}{'tokens per doc':>22}" + "".join(f"{n[:17]:>19}" for n in names)
          + f"{'mean':>17}{'s / request':>13}{'tokens':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        models = {"trained": ("trained cross-encoder", args.model),
                  "embedded": ("embedded default", str(rerank.packaged_model_path()))}
        for key in args.models.split(","):
            name, model = models[key]
            for way in ways:
                r = measure(model, way, halves, args.backend, Path(tmp))
                q = r["quality"]
                mean = {part: np.mean([q[(n, part)] for n in names]) for part in ("dev", "held")}
                print(f"{name:<22}{label(way):>22}" + "".join(f"{q[(n, 'dev')]:>10.4f} /{q[(n, 'held')]:>7.4f}"
                                                                  for n in names)
                      + f"{mean['dev']:>9.4f} /{mean['held']:>6.4f}" + timing(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
