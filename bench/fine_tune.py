"""Fine-tuning the embedded default on the dev collections: held-out nDCG@10 of the base and the fine-tuned model
(reranking the collection's candidates, and the app's pipeline end to end), and training time per epoch, per collection
and seed (``python evaluate.py DATASET --fine-tune OUT --keep-worse`` for each, 50/50 query splits).

``python bench/fine_tune.py [--seeds 0,1,2] [--epochs 1] [--collections DIR ...] [--learning-rate 2e-5]
[--validation-fraction 0.25]`` (with a validation fraction, each run first chooses among the candidate recipes on that
part of its training queries, and every candidate's validation nDCG@10 is printed)

The shared collections are read from ``../shared/eval``; where they are absent the script says so and stops. Each run
trains from the packaged model; every fine-tuned model is written to a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import dev_sets

from evaluation import fine_tune as ft
from scoring.loading import packaged_scorer
from service import assembly, memory
from service.settings import Settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--validation-fraction", type=float, default=0.0)
    asked = dev_sets.parse(parser)
    if asked is None:
        return 2
    args, folders, seeds = asked
    settings = replace(Settings.from_env(), calibration=None, backend="torch")
    base = packaged_scorer()
    print(f"base {base.info.name}; {args.epochs} epoch(s), learning rate {args.learning_rate:g}, 50/50 query splits")
    print("collection | seed | train / held-out queries | rows | s per epoch | rerank nDCG@10 base -> tuned | "
          "end to end nDCG@10 base -> tuned | end to end Recall@100 base -> tuned")
    gains: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for collection in folders:
            for seed in seeds:
                options = ft.Options(out=Path(folder) / f"{collection.name}-{seed}", seed=seed, epochs=args.epochs,
                                     learning_rate=args.learning_rate, keep_worse=True,
                                     validation_fraction=args.validation_fraction)
                r = ft.fine_tune(collection, base=base, options=options, cache_dir=Path(folder) / "cache", progress=False,
                                 service_for=lambda scorer: assembly.build(settings, scorer=scorer))
                rr, e2e = r["reranking"], r["end_to_end"]
                gains.setdefault("rerank", []).append(rr["fine_tuned"]["ndcg@10"] - rr["base"]["ndcg@10"])
                gains.setdefault("end to end", []).append(e2e["fine_tuned"]["reranked"]["ndcg@10"]
                                                          - e2e["base"]["reranked"]["ndcg@10"])
                print(f"{r['dataset']} | {seed} | {r['queries']['train']} / {r['queries']['held_out']} | "
                      f"{r['training_rows']} | {r['seconds_per_epoch']:.0f} | {rr['base']['ndcg@10']:.4f} -> "
                      f"{rr['fine_tuned']['ndcg@10']:.4f} | {e2e['base']['reranked']['ndcg@10']:.4f} -> "
                      f"{e2e['fine_tuned']['reranked']['ndcg@10']:.4f} | {e2e['base']['reranked']['recall@100']:.4f} -> "
                      f"{e2e['fine_tuned']['reranked']['recall@100']:.4f}", flush=True)
                if r["recipes"]:
                    chosen = r["recipes"]
                    print(f"  validation nDCG@10 on {r['queries']['validation']} queries: base "
                          f"{chosen['base']['ndcg@10']:.4f}; " + "; ".join(
                              f"{c['recipe']} {c['validation']['ndcg@10']:.4f} ({c['seconds']:.0f} s)"
                              for c in chosen["candidates"]) + f"; chosen: {chosen['chosen']}", flush=True)
                ft.shutil.rmtree(options.out, ignore_errors=True)
    for name, values in gains.items():
        print(f"{name}: mean nDCG@10 gain {statistics.mean(values):+.4f}, worst {min(values):+.4f}")
    return 0


if __name__ == "__main__":
    memory.keep_flat(memory.AllocatorPolicy(interval=Settings.from_env().memory_release_s))  # as evaluate.py sets it
    sys.exit(main())
