"""A causal-LM reranker's request latency: the seed's way (``CrossEncoder.predict``) against this project's rerank.

``python bench/causal.py [--shape 0.6b|tiny] [--documents 50] [--reps 2] [--device cpu|cuda] [--backend NAME]
[--tokenizer DIR]`` builds a
Qwen3-Reranker-0.6B-shaped checkpoint with random weights (28 layers, hidden 1024, 16 heads / 8 KV heads;
its word-level vocabulary is smaller than Qwen's 151k, which only changes the embedding table: scoring
reads the last token's logits alone), then times one request of ``--documents`` passages of 40-120
words: p50 over ``--reps`` repetitions of fresh documents (no cache hits), both ways on the same files,
and the largest score difference between them. Imports only the scoring core and what a GPU machine has.
Scripts, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rerank
from scoring.fidelity import spearman
from scoring.synthetic import QWEN3_06B, TINY, build_causal_reranker

ROOT = Path(__file__).resolve().parents[1]

WORDS = ("the boat sails across a calm bay while the crew trims the main sail and checks the single mast for wear "
         "before the race begins near the harbour where tomatoes grow in full sun and bread rises").split()
QUERY = "which boat has a single mast and how is it rigged"


def documents(count: int, seed: int) -> list[str]:
    """Fresh passages of 40-120 words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(40, 121)))) + f" ({seed}-{i})" for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["0.6b", "tiny"], default="0.6b")
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", help="ours on this backend (default: the device's fp32; e.g. torch-bf16, "
                                          "cuda-bf16: reduced precision, which the app admits only through the gate)")
    parser.add_argument("--tokenizer", help="a folder with a WordPiece tokenizer.json to take words from "
                                            "(default: the packaged all-MiniLM-L6-v2's, where installed)")
    args = parser.parse_args()
    import torch
    from sentence_transformers import CrossEncoder

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        path = build_causal_reranker(Path(folder) / "qwen3-reranker", shape=QWEN3_06B if args.shape == "0.6b" else TINY,
                                     words_from=args.tokenizer)
        seed_threads = torch.get_num_threads()  # the seed's process uses every core for one predict call
        seed_model = CrossEncoder(str(path), device=args.device)
        ours = rerank.load_scorer(str(path), allow_fallback=False, device=args.device, backend=args.backend or "torch")
        our_threads = torch.get_num_threads()  # ours: one thread per worker, each worker its own replica
        params = sum(p.numel() for p in seed_model.model.parameters())
        print(f"{args.shape}-shaped Qwen3ForCausalLM, {params / 1e6:.0f} M parameters, built and loaded in "
              f"{time.perf_counter() - started:.0f} s; device {args.device}; seed: {seed_threads} torch threads; "
              f"ours: {ours.backend.describe()}, {ours.workers} workers x {our_threads} thread(s)")
        def seed_predict(docs: list[str]) -> np.ndarray:
            torch.set_num_threads(seed_threads)
            try:
                return seed_model.predict([(QUERY, d) for d in docs], batch_size=32)
            finally:
                torch.set_num_threads(our_threads)

        warm = documents(4, 999)
        seed_predict(warm)
        rerank.rank(QUERY, warm, scorer=ours)
        seed_times, our_times, diffs, tokens = [], [], [], []
        for rep in range(args.reps):
            docs = documents(args.documents, rep)
            t = time.perf_counter()
            expected = seed_predict(docs)
            seed_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            ranking = rerank.rank(QUERY, docs, scorer=ours)
            our_times.append(time.perf_counter() - t)
            diffs.append(float(np.abs(ranking.scores(len(docs)) - expected).max()))
            tokens.append(ranking.cost)
        seed_p50, our_p50 = statistics.median(seed_times), statistics.median(our_times)
        print(f"{args.documents} documents ({statistics.mean(tokens):,.0f} tokens a request with the chat template):")
        print(f"  the seed's way (CrossEncoder.predict, batch 32): p50 {seed_p50:7.2f} s")
        print(f"  this project's core:                             p50 {our_p50:7.2f} s  ({seed_p50 / our_p50:.2f}x)")
        print(f"  largest score difference: {max(diffs):.2e}; Spearman vs the seed's fp32 on the last request: "
              f"{spearman(ranking.scores(len(docs)), expected):.4f}")
        if args.device.startswith("cuda"):
            print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
