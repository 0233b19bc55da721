"""A trained cross-encoder to measure by: the packaged MiniLM-L6 encoder with a one-logit head, trained on half of the
dev collections' judged queries and judged on the other half against the BM25 first stage.

``python bench/train_reranker.py --out DIR [--base DIR] [--rounds 6] [--max-length 96] [--learning-rate 2e-4] [--json]``

No cross-encoder weights can be installed here, so the engine benchmarks need one to see what reduced precision does
to a trained head's ranking. It is a measuring instrument, never a default that ships. Training
(sentence-transformers' ``CrossEncoderTrainer``, ``LambdaLoss``: listwise, weighted towards nDCG): for each
development query, lists drawn afresh each round from its BM25 candidates (its judged-relevant ones, hard negatives
from the top, a few from lower down), each passage's target its judged grade plus the embedded default's score as the
app ranks with it (cosine fused with BM25): judged passages lead, and every other candidate is taught the teacher's
order. The held-out queries' BM25 top ``--depth`` are then reranked through the service, as the app ranks (fp32 ONNX
Runtime), and nDCG@10 is printed beside the first stage's, per collection; the command exits 1 where the model does
not beat BM25 on the held-out queries' mean. Needs ../shared/eval (or ``--collections``); ``--limit`` caps the
queries of each half (a quick run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import dev_sets
import numpy as np

import rerank
from scoring.loading import packaged_scorer
from scoring.synthetic import build_minilm_cross_encoder
from service import assembly
from service.settings import Settings

JUDGE_WINDOW = 512  # the window the saved instrument reads pairs in: the seed's CrossEncoder.predict reads 512 tokens


def teacher(pools: dev_sets.Pools, service) -> dict[str, np.ndarray]:
    """The embedded default's ranking of each query's candidates as the app makes it (cosine fused with the first
    stage's score, :data:`scoring.ranking.DEFAULT_POLICY`), min-max scaled to [0, 1] per query."""
    data, out = pools.dataset, {}
    for qid, ids in pools.pools.items():
        scores = service.rank(data.queries[qid], [data.corpus[d] for d in ids], first_stage=pools.first[qid],
                              face="evaluate").scores(len(ids))
        spread = float(np.ptp(scores)) or 1.0
        out[qid] = (scores - scores.min()) / spread
    return out


def lists(pools: dev_sets.Pools, soft: dict[str, np.ndarray], *, size: int, positives: int, rounds: int,
          rng: random.Random) -> dict[str, list]:
    """Training lists (query, passages, targets), ``rounds`` sets of them drawn afresh: each holds up to ``positives``
    judged-relevant passages and candidates from the pool, two thirds from its best-ranked, the rest from lower down.
    A passage's target is its judged grade plus the teacher's score in [0, 1], so judged passages lead and the rest
    keep the teacher's order (every candidate teaches something, not only the few judged ones)."""
    rows: dict[str, list] = {"query": [], "docs": [], "labels": []}
    data = pools.dataset
    for _ in range(rounds):
        for qid, ranked in pools.pools.items():
            judged, taught = data.qrels[qid], dict(zip(ranked, soft[qid], strict=True))
            relevant = [d for d in ranked if judged.get(d, 0) > 0]
            others = [d for d in ranked if judged.get(d, 0) <= 0]
            chosen = rng.sample(relevant, min(len(relevant), positives))
            room = size - len(chosen)
            near = rng.sample(others[:30], min(len(others[:30]), room * 2 // 3))
            far = [d for d in others if d not in near]
            docs = chosen + near + rng.sample(far, min(len(far), room - len(near)))
            rows["query"].append(data.queries[qid])
            rows["docs"].append([data.corpus[d] for d in docs])
            rows["labels"].append([float(max(judged.get(d, 0), 0)) + float(taught[d]) for d in docs])
    return rows


def train(base: Path, rows: dict[str, list], out: Path, args: argparse.Namespace) -> float:
    """Train the cross-encoder at ``base`` on the lists (one pass: the lists were drawn afresh for each round) and save
    it to ``out``; seconds spent. The word embeddings stay as trained (a few thousand lists cannot improve 30,000
    rows, and updating them is most of each step's optimizer work)."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import LambdaLoss

    model = CrossEncoder(str(base), num_labels=1, max_length=args.max_length, local_files_only=True)
    for name, parameter in model.named_parameters():
        if "word_embeddings" in name:
            parameter.requires_grad = False
    with tempfile.TemporaryDirectory() as work:
        options = CrossEncoderTrainingArguments(
            output_dir=work, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate, warmup_steps=0.1, logging_steps=10, save_strategy="no", report_to="none",
            seed=args.seed, disable_tqdm=True)
        trainer = CrossEncoderTrainer(model=model, args=options, train_dataset=Dataset.from_dict(rows).shuffle(seed=args.seed),
                                      loss=LambdaLoss(model, mini_batch_size=64))
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log lines: stdout stays the report's
            trainer.train()
    model.max_seq_length = JUDGE_WINDOW  # trained on short pairs, saved to read what the seed reads
    model.save_pretrained(str(out))
    return time.perf_counter() - started


def judge(model: Path, held: list[dev_sets.Pools], cache: Path) -> dict[str, dict[str, float]]:
    """nDCG@10 of BM25 and of the model reranking each collection's held-out pools, through the service."""
    scorer = rerank.load_scorer(str(model), allow_fallback=False, backend="onnxruntime", cache_dir=cache)
    service = assembly.build(Settings(), scorer=scorer)
    out = {}
    for pools in held:
        scores = dev_sets.score_pools(service, pools)
        out[pools.name] = {"queries": len(pools.pools), "bm25": pools.ndcg(pools.first_stage()), "model": pools.ndcg(scores)}
        print(f"judged {pools.name}: {out[pools.name]}", file=sys.stderr, flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="where the trained cross-encoder is saved")
    parser.add_argument("--base", help="go on training this cross-encoder (an earlier stage's --out) instead of "
                                       "starting from the packaged encoder with a new head")
    parser.add_argument("--seed", type=int, default=0, help="the query split's and the training's seed")
    parser.add_argument("--rounds", type=int, default=6, help="lists drawn afresh for each query, this many times")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=4, help="lists per step")
    parser.add_argument("--list-size", type=int, default=16, help="passages per training list")
    parser.add_argument("--positives", type=int, default=4, help="judged-relevant passages per list, at most")
    parser.add_argument("--train-depth", type=int, default=40, help="candidates per development query to draw from")
    parser.add_argument("--max-length", type=int, default=96, help="tokens per training pair (the saved model reads "
                                                                             f"{JUDGE_WINDOW}, as judged and served)")
    parser.add_argument("--depth", type=int, default=50, help="held-out candidates reranked per query")
    parser.add_argument("--scores-cache", default=str(dev_sets.SCORES_CACHE),
                        help="where the teacher's scores are kept between runs")
    parsed = dev_sets.parse_training(parser)
    if isinstance(parsed, int):
        return parsed
    args, folders = parsed
    out = Path(args.out)
    rng = random.Random(f"{args.seed}-{args.max_length}")  # a later stage draws other lists from the same split
    halves = [dev_sets.split_pools(f, depth=args.train_depth, seed=args.seed, limit=args.limit) for f in folders]
    with tempfile.TemporaryDirectory() as tmp:
        embedded = assembly.build(Settings(), scorer=packaged_scorer(backend="onnxruntime", cache_dir=Path(tmp) / "cache"))
        rows: dict[str, list] = {"query": [], "docs": [], "labels": []}
        for development, _ in halves:
            taught = dev_sets.cached_scores(Path(args.scores_cache), f"teacher-{development.name}-{args.seed}-"
                                            f"{development.pairs}", lambda d=development: teacher(d, embedded))
            drawn = lists(development, taught, size=args.list_size, positives=args.positives, rounds=args.rounds,
                          rng=rng)
            for key, values in drawn.items():
                rows[key].extend(values)
        print(f"training on {len(rows['query'])} lists ({sum(map(len, rows['docs']))} pairs) from "
              f"{sum(len(d.pools) for d, _ in halves)} development queries", file=sys.stderr, flush=True)
        base = Path(args.base) if args.base else build_minilm_cross_encoder(Path(tmp) / "base", seed=args.seed)
        seconds = train(base, rows, out, args)
        held = [dev_sets.split_pools(f, depth=args.depth, seed=args.seed, limit=args.limit)[1] for f in folders]
        report = {"model": str(out), "seed": args.seed, "train_seconds": seconds, "lists": len(rows["query"]),
                  "collections": judge(out, held, Path(tmp) / "cache")}
    mean = {k: float(np.mean([c[k] for c in report["collections"].values()])) for k in ("bm25", "model")}
    report["mean"], report["beats_bm25"] = mean, mean["model"] > mean["bm25"]
    if args.json:
        print(json.dumps(report))
    else:
        print(f"trained in {seconds:.0f} s on {report['lists']} lists; held-out nDCG@10 (BM25 top {args.depth} reranked):")
        for name, c in report["collections"].items():
            print(f"  {name:<24} {c['queries']:>4} queries  BM25 {c['bm25']:.4f}  trained {c['model']:.4f}  "
                  f"({c['model'] - c['bm25']:+.4f})")
        print(f"  {'mean':<24} {'':>12}  BM25 {mean['bm25']:.4f}  trained {mean['model']:.4f}")
    return 0 if report["beats_bm25"] else 1


if __name__ == "__main__":
    sys.exit(main())
