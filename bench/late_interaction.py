"""A trained late-interaction (ColBERT-style) model to measure by: the packaged MiniLM-L6 encoder with a token
projection, trained on half of the dev collections' judged queries and judged on the other half.

``python bench/late_interaction.py --out DIR | --trained DIR [--cross-encoder DIR] [--limit N] [--json]``

No late-interaction weights can be installed here, so this trains one (sentence-transformers'
``MultiVectorEncoderTrainer``, ``MultiVectorMultipleNegativesRankingLoss``: each development query's judged-relevant
passages against a hard negative from its BM25 top 30 and the batch's other passages). It is a measuring instrument,
never a default that ships. It then reports, on the held-out queries only:

- nDCG@10 of the BM25 top ``--depth`` (100) reranked by it through the service, as the app ranks, beside BM25's
  (and beside ``--cross-encoder``'s, e.g. the one ``bench/train_reranker.py`` trains, where given);
- seconds to rerank 50 SciFact passages on this machine, in process: the late-interaction model with the passages'
  vectors already cached (a new question over passages seen before: one query encoding and MaxSim), the same with an
  empty cache, and the cross-encoder of the same size (fp32 ONNX Runtime, no score cache), requests alternating.

Needs ../shared/eval (or ``--collections``). ``--limit`` caps the queries of each half (a quick run).
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
from scoring.synthetic import build_multi_vector
from service import assembly
from service.settings import Settings


def triples(pools: dev_sets.Pools, *, positives: int, rounds: int, rng: random.Random) -> dict[str, list[str]]:
    """(query, positive, negative) rows: up to ``positives`` judged-relevant passages of each development query (from
    the whole corpus, judged or not retrieved), each against a passage of its BM25 top 30 not judged relevant, drawn
    afresh each round."""
    data = pools.dataset
    rows: dict[str, list[str]] = {"query": [], "positive": [], "negative": []}
    for _ in range(rounds):
        for qid, ranked in pools.pools.items():
            judged = data.qrels[qid]
            relevant = sorted(d for d, grade in judged.items() if grade > 0 and d in data.corpus)
            near = [d for d in ranked[:30] if judged.get(d, 0) <= 0]
            if not relevant or not near:
                continue
            for positive in rng.sample(relevant, min(positives, len(relevant))):
                rows["query"].append(data.queries[qid])
                rows["positive"].append(data.corpus[positive])
                rows["negative"].append(data.corpus[rng.choice(near)])
    return rows


def train(base: Path, rows: dict[str, list[str]], out: Path, args: argparse.Namespace) -> float:
    """Train the late-interaction model at ``base`` on the triples (one pass) and save it to ``out``; seconds spent."""
    from datasets import Dataset
    from sentence_transformers import (
        MultiVectorEncoder,
        MultiVectorEncoderTrainer,
        MultiVectorEncoderTrainingArguments,
    )
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.multi_vector_encoder.losses import MultiVectorMultipleNegativesRankingLoss

    model = MultiVectorEncoder(str(base), device="cpu", local_files_only=True)
    for name, parameter in model.named_parameters():
        if "word_embeddings" in name:  # as the cross-encoder bench: most of a step's optimizer work, little to gain
            parameter.requires_grad = False
    with tempfile.TemporaryDirectory() as work:
        options = MultiVectorEncoderTrainingArguments(
            output_dir=work, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
            learning_rate=args.learning_rate, warmup_steps=0.1, logging_steps=10, save_strategy="no", report_to="none",
            seed=args.seed, disable_tqdm=True, batch_sampler=BatchSamplers.NO_DUPLICATES)
        trainer = MultiVectorEncoderTrainer(model=model, args=options,
                                            train_dataset=Dataset.from_dict(rows).shuffle(seed=args.seed),
                                            loss=MultiVectorMultipleNegativesRankingLoss(model))
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log lines: stdout stays the report's
            trainer.train()
    model.save_pretrained(str(out))
    return time.perf_counter() - started


def judge(services: dict[str, object], held: list[dev_sets.Pools]) -> dict[str, dict[str, float]]:
    """nDCG@10 of BM25 and of each model reranking each collection's held-out pools, through the service."""
    out = {}
    for pools in held:
        out[pools.name] = {"queries": len(pools.pools), "bm25": pools.ndcg(pools.first_stage())}
        for name, service in services.items():
            out[pools.name][name] = pools.ndcg(dev_sets.score_pools(service, pools))
        print(f"judged {pools.name}: {out[pools.name]}", file=sys.stderr, flush=True)
    return out


def timings(late, cross, pools: dev_sets.Pools, requests: int) -> dict[str, float]:
    """Median seconds to rerank one query's 50 passages: the late-interaction model with the passages' vectors cached
    (another question over them ranked first) and with none cached, the cross-encoder (no score cache); alternating."""
    data = pools.dataset
    queries = list(pools.pools)[:requests]
    other = data.queries[list(pools.pools)[-1]]
    times: dict[str, list[float]] = {"late-interaction, vectors cached": [], "late-interaction, nothing cached": []}
    if cross is not None:
        times["cross-encoder"] = []
    for qid in queries:
        docs = [data.corpus[d] for d in pools.pools[qid][:50]]
        late.cache.clear()
        started = time.perf_counter()
        rerank.rank(data.queries[qid], docs, scorer=late)
        times["late-interaction, nothing cached"].append(time.perf_counter() - started)
        late.cache.clear()
        rerank.rank(other, docs, scorer=late)  # the passages seen before, for another question
        started = time.perf_counter()
        rerank.rank(data.queries[qid], docs, scorer=late)
        times["late-interaction, vectors cached"].append(time.perf_counter() - started)
        if cross is not None:
            started = time.perf_counter()
            rerank.rank(data.queries[qid], docs, scorer=cross)
            times["cross-encoder"].append(time.perf_counter() - started)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="where the trained late-interaction model is saved")
    parser.add_argument("--cross-encoder", help="a trained cross-encoder of the same size to compare with "
                                                "(bench/train_reranker.py --out)")
    parser.add_argument("--trained", help="judge this late-interaction model (an earlier run's --out) instead of "
                                          "training one")
    parser.add_argument("--seed", type=int, default=0, help="the query split's and the training's seed")
    parser.add_argument("--rounds", type=int, default=2, help="triples drawn afresh for each query, this many times")
    parser.add_argument("--positives", type=int, default=4, help="judged-relevant passages per query and round")
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dimension", type=int, default=128, help="token vector size")
    parser.add_argument("--document-length", type=int, default=256)
    parser.add_argument("--depth", type=int, default=100, help="held-out BM25 candidates reranked per query")
    parser.add_argument("--requests", type=int, default=12, help="timed 50-passage SciFact requests")
    parser.set_defaults(out="-")
    parsed = dev_sets.parse_training(parser)
    if isinstance(parsed, int):
        return parsed
    args, folders = parsed
    if (args.out == "-") == (args.trained is None):
        print("name --out (train a model there) or --trained (judge one trained before)", file=sys.stderr)
        return 2
    out = Path(args.trained or args.out)
    rng = random.Random(args.seed)
    rows: dict[str, list[str]] = {"query": [], "positive": [], "negative": []}
    for folder in folders:
        for key, values in triples(dev_sets.split_pools(folder, depth=30, seed=args.seed, limit=args.limit)[0],
                                   positives=args.positives, rounds=args.rounds, rng=rng).items():
            rows[key].extend(values)
    with tempfile.TemporaryDirectory() as tmp:
        seconds = None
        if args.trained is None:
            print(f"training on {len(rows['query'])} triples", file=sys.stderr, flush=True)
            base = build_multi_vector(Path(tmp) / "base", dimension=args.dimension, seed=args.seed,
                                      document_length=args.document_length)
            seconds = train(base, rows, out, args)
        late = rerank.load_scorer(str(out), allow_fallback=False)
        cross = (rerank.load_scorer(args.cross_encoder, allow_fallback=False, backend="onnxruntime",
                                    cache_dir=Path(tmp) / "cache") if args.cross_encoder else None)
        services = {"late-interaction": assembly.build(Settings(), scorer=late)}
        if cross is not None:
            services["cross-encoder"] = dev_sets.uncached_service(cross)
        held = [dev_sets.split_pools(f, depth=args.depth, seed=args.seed, limit=args.limit)[1] for f in folders]
        report = {"model": str(out), "seed": args.seed, "train_seconds": seconds, "triples": len(rows["query"]),
                  "collections": judge(services, held)}
        scifact = [p for p in held if p.name == "scifact"]
        if scifact:
            report["seconds_per_50"] = timings(late, rerank.Scorer(cross.info, cross, cache_bytes=0) if cross else None,
                                               scifact[0], args.requests)
    names = ["bm25", *services]
    report["mean"] = {k: float(np.mean([c[k] for c in report["collections"].values()])) for k in names}
    report["beats_bm25"] = report["mean"]["late-interaction"] > report["mean"]["bm25"]
    if args.json:
        print(json.dumps(report))
    else:
        trained = f"trained in {seconds:.0f} s on {report['triples']} triples" if seconds else f"{out}"
        print(f"{trained}; held-out nDCG@10 (BM25 top {args.depth} reranked):")
        for name, c in [*report["collections"].items(), ("mean", report["mean"])]:
            print(f"  {name:<24} {c.get('queries', ''):>4}  " + "  ".join(f"{k} {c[k]:.4f}" for k in names))
        for name, s in report.get("seconds_per_50", {}).items():
            print(f"  50 SciFact passages, {name}: {s:.3f} s (median)")
    return 0 if report["beats_bm25"] else 1


if __name__ == "__main__":
    sys.exit(main())
