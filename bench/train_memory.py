"""Peak memory and time per step of fine-tuning the embedded default, with activations held for a bounded number of
tokens (``evaluation.fine_tune.TRAIN_TOKEN_BUDGET``, gradients cached) against the whole batch at once, in one run.

``python bench/train_memory.py [--collection DIR] [--steps 12] [--batch-size 16] [--negatives 4]``

The rows are what ``evaluate.py DATASET --fine-tune`` trains on (a collection's judged queries, hard negatives mined
from its hybrid index, the margin applied); each variant trains ``--steps`` steps in a child process of its own,
which reports its peak RSS (the whole process: model, optimizer, data and activations) and its seconds a step.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import dev_sets

from evaluation import end_to_end, mining
from evaluation import fine_tune as ft
from evaluation.harness import load_dataset
from scoring.loading import packaged_scorer


def train_once(rows: list[dict], budget: int, batch_size: int, out: multiprocessing.Queue) -> None:
    """Train on ``rows`` (one pass) with ``budget`` tokens a forward pass; put (peak RSS MiB, seconds a step)."""
    ft.TRAIN_TOKEN_BUDGET = budget
    with tempfile.TemporaryDirectory() as work:
        options = ft.Options(out=Path(work) / "model", batch_size=batch_size)
        started = time.perf_counter()
        ft.train_model(packaged_scorer(), rows, options, progress=False)
        seconds = time.perf_counter() - started
    out.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, seconds / max(1, len(rows) // batch_size)))


def measure(rows: list[dict], budget: int, batch_size: int) -> tuple[float, float]:
    """One variant in a fresh process (spawned: nothing of this one's memory is shared)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=train_once, args=(rows, budget, batch_size, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", default=str(dev_sets.EVAL_DIR / "scifact"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "rag-augment-bench-index"))
    args = parser.parse_args()
    folder = Path(args.collection)
    if not folder.is_dir():
        print(f"collection not found: {folder} (the dev collections live in ../shared/eval)", file=sys.stderr)
        return 0
    dataset = load_dataset(folder)
    base = packaged_scorer()
    index = end_to_end.open_collection_index(folder, dataset, base, Path(args.cache))
    try:
        rows, _ = mining.mine(dataset, index, args.negatives, progress=False, scorer=base)
    finally:
        index.close()
    rows = rows[: args.steps * args.batch_size]
    print(f"{dataset.name}: {len(rows)} rows ({args.steps} steps of {args.batch_size}, {args.negatives} negatives each), "
          f"max_seq_length {base.info.max_length}", flush=True)
    whole = measure(rows, 10**9, args.batch_size)
    bounded = measure(rows, ft.TRAIN_TOKEN_BUDGET, args.batch_size)
    print("activations held for            peak RSS MiB   s a step")
    print(f"the whole batch at once          {whole[0]:>12,.0f} {whole[1]:>10.1f}")
    print(f"{ft.TRAIN_TOKEN_BUDGET:,} tokens at a time (shipped) {bounded[0]:>10,.0f} {bounded[1]:>10.1f}")
    print(f"ratio                            {bounded[0] / whole[0]:>12.2f} {bounded[1] / whole[1]:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
