"""Reranking speed on this machine: the seed's way against the scoring core, in ONE run.

``python bench/latency.py [--reps 5]`` builds a cross-encoder of MiniLM-L6 shape from the packaged
all-MiniLM-L6-v2 weights (a one-logit head on the real encoder: the cost of a trained head), makes
fresh 50-document requests of 40-400 tokens, and prints for each variant p50/p95 latency, pairs/s,
the ratio to the seed's way, the fraction of the hardware floor (from a matmul measured here) and
rankings agreement with fp32 (Spearman, top-5 overlap). Then the embedding (bi-encoder) mode, and
peak RSS. Scripts, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import corpus  # noqa: E402
import rerank as core  # noqa: E402

QUERY = "How do I run a coroutine with a timeout and cancel it cleanly?"


def matmul_gflops(dtype: str = "float32", n: int = 1024, reps: int = 20) -> float:
    """Measured dense matmul throughput with torch on this CPU (the hardware floor's denominator)."""
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, dtype=getattr(torch, dtype))
    a @ b
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - started) / 1e9


def build_cross_encoder(target: Path) -> Path:
    """The packaged MiniLM-L6 encoder with a seeded one-logit head, saved as a cross-encoder."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    source = core.packaged_model_path()
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    model.save_pretrained(str(target))
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(target))
    return target


def make_requests(n_requests: int, n_docs: int, tokenizer, seed: int = 0) -> list[list[str]]:
    """Fresh documents per request, lengths drawn from 40-400 tokens (median ~180)."""
    texts = [p.text for p in corpus.builtin_passages(modules={"asyncio", "email", "typing", "logging", "http"})]
    words = " ".join(texts).split()
    rng = np.random.default_rng(seed)
    requests = []
    for _ in range(n_requests):
        docs = []
        for _ in range(n_docs):
            target = int(np.clip(rng.lognormal(np.log(180), 0.45), 40, 400))
            start = int(rng.integers(0, len(words) - 600))
            piece = words[start:start + target]
            while len(tokenizer(" ".join(piece), add_special_tokens=False)["input_ids"]) > target and len(piece) > 5:
                piece = piece[: int(len(piece) * 0.9)]
            docs.append(" ".join(piece) + f" ({rng.random():.6f})")
        requests.append(docs)
    return requests


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score lists."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def time_variant(fn, requests: list[list[str]]) -> tuple[list[float], list[np.ndarray]]:
    """Latency of each request (after one warm-up request) and the scores."""
    fn(requests[0])
    latencies, scores = [], []
    for docs in requests[1:]:
        started = time.perf_counter()
        scores.append(np.asarray(fn(docs), dtype=np.float64))
        latencies.append(time.perf_counter() - started)
    return latencies, scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="50-document requests per variant")
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument("--no-server", action="store_true", help="skip the app-level rows (cold start, concurrency)")
    args = parser.parse_args()
    import torch

    fp32 = matmul_gflops("float32")
    with tempfile.TemporaryDirectory() as tmp:
        ce_dir = build_cross_encoder(Path(tmp) / "ce")
        scorer = core.load_scorer(str(ce_dir), allow_fallback=False)
        seed_model = scorer._model  # the same weights, called the seed's way
        tokenizer = seed_model.tokenizer
        requests = make_requests(args.reps + 1, args.docs, tokenizer)
        lengths = [len(tokenizer(QUERY, d)["input_ids"]) for r in requests for d in r]
        # useful work: ~2 FLOP per weight per token in the 6 encoder layers (embeddings are lookups)
        layer_params = sum(p.numel() for n, p in seed_model.model.named_parameters() if ".layer." in n)
        flop_per_request = 2 * layer_params * float(np.mean(lengths)) * args.docs
        floor_s = flop_per_request / (fp32 * 1e9)

        cores = os.cpu_count() or 1

        def seed_way(docs):
            """The seed's call, with torch's default of one intra-op thread per core."""
            torch.set_num_threads(cores)
            try:
                return seed_model.predict([(QUERY, d) for d in docs], batch_size=32, show_progress_bar=False)
            finally:
                torch.set_num_threads(1 if scorer._pool.workers > 1 else cores)

        variants = {"seed: CrossEncoder.predict bs=32": seed_way}
        waste = {"seed: CrossEncoder.predict bs=32": np.mean([core.padding_waste(
            scorer.pair_lengths(QUERY, r), core.plan_batches(scorer.pair_lengths(QUERY, r), 10**9, 32)) for r in requests])}
        for budget in (2048, 1024, 512):
            name = f"core: Scorer.score budget={budget}"
            fresh_scorer = core.Scorer(scorer.info, scorer._model, token_budget=budget, cache_size=0)  # no cache hits
            variants[name] = lambda docs, s=fresh_scorer: s.score(QUERY, docs)
            waste[name] = np.mean([core.padding_waste(scorer.pair_lengths(QUERY, r),
                                                      core.plan_batches(scorer.pair_lengths(QUERY, r), budget, 32))
                                   for r in requests])
        results = {name: time_variant(fn, requests) for name, fn in variants.items()}
        reference = results["seed: CrossEncoder.predict bs=32"]
        base_p50 = float(np.median(reference[0]))
        print(f"machine: {cores} cores, {scorer._pool.workers} scoring workers, fp32 matmul {fp32:.0f} GFLOP/s (measured); "
              f"request: {args.docs} docs, tokens median {np.median(lengths):.0f} (min {min(lengths)}, max {max(lengths)}), "
              f"~{flop_per_request / 1e9:.0f} GFLOP -> fp32 floor {floor_s:.2f} s")
        print(f"{'variant':<36}{'p50 s':>8}{'p95 s':>8}{'pairs/s':>9}{'x seed':>8}{'floor/p50':>10}"
              f"{'spearman':>10}{'top5':>6}{'padding':>9}")
        for name, (lat, scores) in results.items():
            p50, p95 = float(np.median(lat)), float(np.percentile(lat, 95))
            rho = np.mean([spearman(s, r) for s, r in zip(scores, reference[1], strict=True)])
            top5 = np.mean([len(set(np.argsort(-s)[:5]) & set(np.argsort(-r)[:5])) / 5
                            for s, r in zip(scores, reference[1], strict=True)])
            print(f"{name:<36}{p50:>8.2f}{p95:>8.2f}{args.docs / p50:>9.1f}{base_p50 / p50:>8.2f}"
                  f"{floor_s / p50:>10.2f}{rho:>10.4f}{top5:>6.2f}{waste[name]:>9.0%}")

        embedder = core.get_scorer(str(core.packaged_model_path()), allow_fallback=False)
        cold = [d for r in requests for d in r][: args.docs]
        started = time.perf_counter()
        embedder.score(QUERY, cold)
        first = time.perf_counter() - started
        started = time.perf_counter()
        embedder.score(QUERY + " again", cold)
        cached = time.perf_counter() - started
        print(f"embedding mode (all-MiniLM-L6-v2): {args.docs} new documents {first:.2f} s; the same documents for "
              f"another query {cached:.3f} s (document-embedding cache, {first / max(cached, 1e-6):.0f}x)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this benchmark process: {peak:.0f} MiB")
    if not args.no_server:
        serve_benchmark(requests, args.docs)
    return 0


def serve_benchmark(requests: list[list[str]], n_docs: int, clients: int = 8) -> None:
    """Against ``python app.py`` (embedded default): cold start, sequential vs concurrent pairs/s, RSS."""
    import threading

    import httpx

    sys.path.insert(0, str(ROOT / "bench"))
    import load

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        proc, url = load.start_app(Path(tmp))
        try:
            httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": ["warm", "up"]}, timeout=120)
            cold = time.perf_counter() - started
            rng = np.random.default_rng(1)
            words = " ".join(d for r in requests for d in r).split()

            def fresh() -> list[str]:
                return [" ".join(rng.choice(words, size=int(rng.integers(40, 200)))) for _ in range(n_docs)]

            def call(docs: list[str]) -> None:
                r = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": docs}, timeout=300)
                r.raise_for_status()

            batches = [fresh() for _ in range(clients * 2)]
            t = time.perf_counter()
            for docs in batches[:clients]:
                call(docs)
            sequential = clients * n_docs / (time.perf_counter() - t)
            threads = [threading.Thread(target=call, args=(docs,)) for docs in batches[clients:]]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            concurrent = clients * n_docs / (time.perf_counter() - t)
            rss = load.rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"python app.py (embedded default): cold start to first answer {cold:.1f} s; /v2/rerank with {n_docs} "
          f"fresh documents: sequential {sequential:.1f} pairs/s, {clients} concurrent clients {concurrent:.1f} pairs/s "
          f"({concurrent / sequential:.2f}x); server RSS {rss:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
