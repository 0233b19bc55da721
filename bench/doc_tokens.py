"""What reading fewer tokens of each document costs in ranking quality and saves in time (``RERANK_MAX_TOKENS_PER_DOC``).

``python bench/doc_tokens.py --model DIR [--cuts none,384,256,128] [--backend onnxruntime] [--depth 50] [--limit N]``

For the trained cross-encoder (``bench/train_reranker.py --out``) and the embedded default, each cut (each document's
first N tokens; ``none``: the whole document, long ones in overlapping windows as the app scores them) is scored
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


def measure(model: str, cut: int | None, halves: list[tuple[dev_sets.Pools, dev_sets.Pools]], backend: str,
            cache: Path) -> dict:
    """nDCG@10 per collection and half with documents cut to ``cut`` tokens; the held-out SciFact requests' time and
    tokens."""
    loaded = rerank.load_scorer(model, allow_fallback=False, backend=backend, cache_dir=cache)
    service = dev_sets.uncached_service(loaded, Settings(max_tokens_per_doc=cut))
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
        print(f"{Path(model).name} cut {cut}: {pair[0].name} done", file=sys.stderr, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    dev_sets.judged_model_arguments(parser, limit="queries of each half and collection", scores_cache=False)
    parser.add_argument("--cuts", default="none,384,256,128")
    parser.add_argument("--backend", default="onnxruntime", help="one backend for every cut")
    parsed = dev_sets.parse(parser)
    if parsed is None:
        return 0
    args, folders, _ = parsed
    halves = [dev_sets.split_pools(f, depth=args.depth, limit=args.limit) for f in folders]
    cuts = [None if c == "none" else int(c) for c in args.cuts.split(",")]
    names = [pair[0].name for pair in halves]
    print(f"nDCG@10 on each collection's judged queries, development half / held-out half, BM25 top {args.depth} "
          f"reranked on {args.backend}; time and tokens: the median held-out 50-passage SciFact request")
    print(f"{'model':<22}{'tokens per doc':>15}" + "".join(f"{n[:17]:>19}" for n in names)
          + f"{'mean':>17}{'s / request':>13}{'tokens':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in (("trained cross-encoder", args.model), ("embedded default", str(rerank.packaged_model_path()))):
            for cut in cuts:
                r = measure(model, cut, halves, args.backend, Path(tmp))
                q = r["quality"]
                mean = {part: np.mean([q[(n, part)] for n in names]) for part in ("dev", "held")}
                print(f"{label:<22}{cut or 'whole':>15}" + "".join(f"{q[(n, 'dev')]:>10.4f} /{q[(n, 'held')]:>7.4f}"
                                                                  for n in names)
                      + f"{mean['dev']:>9.4f} /{mean['held']:>6.4f}{r['seconds']:>13.2f}{r['tokens']:>9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
