"""Compare scoring configurations on the shared IR collections (nDCG@10), for choosing the default.

``python bench/quality.py [--model ID_OR_PATH] [--limit N]`` scores each collection's BM25 top-100
pools once per long-document mode, then prints nDCG@10 for each fusion configuration, per set and
averaged, beside the first stage. Needs ../shared/eval (skips with a message otherwise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import evaluate
import rerank
from evaluation import harness
from scoring.ranking import (
    DEFAULT_POLICY,
    ScoringPolicy,
)

ROOT = Path(__file__).resolve().parents[1]

EVAL_DIR = ROOT.parent / "shared" / "eval"
SETS = ["scifact", "trec-dl-2019-passage", "cranfield"]
CONFIGS = [ScoringPolicy(fusion="none", name="rerank"), DEFAULT_POLICY,
           *(ScoringPolicy(fusion="rrf", weight=w, name=f"rrf w={w}") for w in (0.5, 0.6, 0.7, 0.8)),
           *(ScoringPolicy(fusion="interpolate", weight=a, name=f"interp a={a}") for a in (0.3, 0.5, 0.6, 0.7, 0.8))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(rerank.packaged_model_path()))
    parser.add_argument("--limit", type=int)
    parser.add_argument("--long", default="truncate,chunk")
    args = parser.parse_args()
    if not EVAL_DIR.is_dir():
        print(f"skipped: no IR collections at {EVAL_DIR}")
        return 0
    service = evaluate.evaluation_service(args.model)  # the backend and limits the app would serve with
    table: dict[tuple[str, str], float] = {}
    first: dict[str, float] = {}
    for name in SETS:
        dataset = harness.load_dataset(EVAL_DIR / name)
        pools = harness.read_run(EVAL_DIR / name / "candidates" / "bm25_top100.trec")
        for mode in args.long.split(","):
            started = time.perf_counter()
            scored = harness.score_candidates(dataset, pools, service, long_documents=mode, limit=args.limit)
            qrels = {q: dataset.qrels[q] for q in scored}
            first_run = {q: list(zip(ids, f.tolist(), strict=True)) for q, (ids, f, _) in scored.items()}
            first[name] = harness.measure(qrels, first_run, mrr_threshold=dataset.mrr_threshold)[0]["ndcg@10"]
            for config in CONFIGS:
                means = harness.measure(qrels, harness.build_run(scored, config), mrr_threshold=dataset.mrr_threshold)[0]
                table[(f"{config.name} [{mode}]", name)] = means["ndcg@10"]
            print(f"{name} [{mode}] scored in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"{'configuration':<28}" + "".join(f"{s:>22}" for s in SETS) + f"{'mean':>8}{'min gain':>10}")
    print(f"{'first stage (BM25)':<28}" + "".join(f"{first[s]:>22.3f}" for s in SETS)
          + f"{sum(first.values()) / len(SETS):>8.3f}")
    for config in sorted({c for c, _ in table}):
        values = [table[(config, s)] for s in SETS]
        gains = [v - first[s] for v, s in zip(values, SETS, strict=True)]
        print(f"{config:<28}" + "".join(f"{v:>22.3f}" for v in values) + f"{sum(values) / len(values):>8.3f}"
              f"{min(gains):>+10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
