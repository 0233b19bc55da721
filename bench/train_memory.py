"""Peak memory and time per step of fine-tuning the embedded default: activations held for a bounded number of tokens
(``evaluation.fine_tune.TRAIN_TOKEN_BUDGET``, gradients cached) or for the whole batch at once, and the C allocator as
glibc sets it or as the server sets it (``service.memory``: a fixed mmap threshold, two arenas, free heap returned
every 10 s), in one run.

``python bench/train_memory.py [--collection DIR] [--steps 12] [--batch-size 16] [--negatives 4]
[--variants whole,bounded,flat] [--token-budgets 8192,2048]``

The rows are what ``evaluate.py DATASET --fine-tune`` trains on (a collection's judged queries, hard negatives mined
from its hybrid index, the margin applied); each variant trains ``--steps`` steps in a child process of its own,
which reports its peak RSS (the whole process: model, optimizer, data and activations), its RSS after the first
tenth of the steps and after the last (what grows over a run), and its seconds a step.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import dev_sets

from evaluation import end_to_end, mining
from evaluation import fine_tune as ft
from evaluation.harness import load_dataset
from evaluation.load import rss_mb
from scoring.loading import packaged_scorer
from service import memory

VARIANTS = {"whole": ("the whole batch at once, glibc's allocator", False),
            "bounded": ("{budget:,} tokens at a time, glibc's allocator", False),
            "flat": ("{budget:,} tokens at a time, the server's allocator policy", True)}


def _rss_trace(trace: list[float]):
    """A trainer callback appending the RSS after each step to ``trace``."""
    from transformers import TrainerCallback

    class Trace(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            trace.append(rss_mb(os.getpid()))

    return Trace()


def train_once(rows: list[dict], budget: int, batch_size: int, flat: bool, out: multiprocessing.Queue) -> None:
    """Train on ``rows`` (one pass) with ``budget`` tokens a forward pass, the allocator as the server sets it where
    ``flat``; put (peak RSS MiB, RSS after each step, seconds a step)."""
    if flat:
        memory.keep_flat(memory.AllocatorPolicy())
    ft.TRAIN_TOKEN_BUDGET = budget
    trace: list[float] = []
    with tempfile.TemporaryDirectory() as work:
        options = ft.Options(out=Path(work) / "model", batch_size=batch_size)
        started = time.perf_counter()
        ft.train_model(packaged_scorer(), rows, options, progress=False, callbacks=[_rss_trace(trace)])
        seconds = time.perf_counter() - started
    out.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, trace, seconds / max(1, len(trace))))


def measure(rows: list[dict], variant: str, batch_size: int, budget: int) -> tuple[float, list[float], float]:
    """One variant in a fresh process (spawned: nothing of this one's memory is shared)."""
    budget = 10**9 if variant == "whole" else budget
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=train_once, args=(rows, budget, batch_size, VARIANTS[variant][1], queue))
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
    parser.add_argument("--variants", default="whole,bounded,flat", help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--token-budgets", default=str(ft.TRAIN_TOKEN_BUDGET),
                        help="padded tokens a forward pass holds activations for, comma-separated: each bounded "
                             f"variant runs with each (shipped: {ft.TRAIN_TOKEN_BUDGET})")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "rag-augment-bench-index"))
    args = parser.parse_args()
    variants = args.variants.split(",")
    if not variants or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants takes some of {', '.join(VARIANTS)}, comma-separated; got {args.variants!r}")
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
    # drawn across queries, as the trainer's shuffle does: a batch holds no text twice, so the rows of one query (the
    # first ones mined) would each make a batch of their own
    rows = random.Random(0).sample(rows, min(len(rows), args.steps * args.batch_size))
    print(f"{dataset.name}: {len(rows)} rows ({args.steps} steps of {args.batch_size}, {args.negatives} negatives each), "
          f"max_seq_length {base.info.max_length}", flush=True)
    first = max(1, args.steps // 10)
    print(f"{'activations held for, allocator':<62}{'peak RSS MiB':>13}{f'after {first}':>10}"
          f"{f'after {args.steps}':>10}{'s a step':>10}")
    budgets = [int(b) for b in args.token_budgets.split(",")]
    for variant, budget in [(v, b) for v in variants for b in ([0] if v == "whole" else budgets)]:
        peak, trace, per_step = measure(rows, variant, args.batch_size, budget)
        label = VARIANTS[variant][0].format(budget=budget)
        print(f"{label:<62}{peak:>13,.0f}{trace[first - 1]:>10,.0f}{trace[-1]:>10,.0f}{per_step:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
