"""Reranking speed on this machine: the seed's way against ours, in ONE run on the same model files.

``python bench/latency.py [--reps 5] [--no-server]`` builds a cross-encoder of MiniLM-L6 shape from
the packaged all-MiniLM-L6-v2 weights (a one-logit head on the real encoder: the cost of a trained
head) and prints one table:

(a) one 50-document request (fresh documents of 40-400 tokens each repetition, no cache hits): the
    seed's ``CrossEncoder.predict`` and our scorer on every backend that runs here, with p50/p95,
    pairs/s, the ratio to the seed's way, the fraction of the hardware floor (matmul measured here)
    and rankings agreement with fp32 torch (Spearman, top-5 overlap);
(b) 1,000 pairs of throughput; (c) 8 concurrent gradio_client clients against the seed's app
    (``bench/seed_app.py``) and ours over HTTP; (d) cold start to the first answer; (e) peak RSS;
(f) ``--first-minute``: request latency in the first minute after a fresh start against steady state.
Scripts, not tests: nothing here asserts a time.
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

import rerank
from evaluation.load import free_port, rss_mb
from retrieval import corpus
from scoring import choice, engines
from scoring.batching import padding_waste, plan_batches
from scoring.fidelity import spearman
from scoring.synthetic import build_minilm_cross_encoder
from service import assembly
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

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


def time_variant(fn, requests: list[list[str]]) -> tuple[list[float], list[np.ndarray]]:
    """Latency of each request (after one warm-up request) and the scores."""
    fn(requests[0])
    latencies, scores = [], []
    for docs in requests[1:]:
        started = time.perf_counter()
        scores.append(np.asarray(fn(docs), dtype=np.float64))
        latencies.append(time.perf_counter() - started)
    return latencies, scores


def agreement(scores: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """Mean Spearman and top-5 overlap of each request's scores against fp32 torch."""
    rho = np.mean([spearman(s, r) for s, r in zip(scores, reference, strict=True)])
    top5 = np.mean([len(set(np.argsort(-s)[:5]) & set(np.argsort(-r)[:5])) / 5 for s, r in zip(scores, reference, strict=True)])
    return float(rho), float(top5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="50-document requests per variant")
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=1000, help="pairs for the throughput row")
    parser.add_argument("--no-server", action="store_true", help="skip the app-level rows (HTTP clients, cold start)")
    parser.add_argument("--cold-only", action="store_true", help="only (d), the app's cold start")
    parser.add_argument("--first-minute", action="store_true",
                        help="only (f): request latency in the first minute after a fresh start vs steady state")
    args = parser.parse_args()
    if args.first_minute:
        with tempfile.TemporaryDirectory() as tmp:
            first_minute(Path(tmp))
        return 0
    if args.cold_only:
        with tempfile.TemporaryDirectory() as tmp:
            cold_start_rows(Path(tmp))
        return 0
    import torch
    from sentence_transformers import CrossEncoder

    cores = os.cpu_count() or 1
    fp32 = matmul_gflops("float32")
    with tempfile.TemporaryDirectory() as tmp:
        ce_dir = build_minilm_cross_encoder(Path(tmp) / "ce")
        cache = Path(tmp) / "cache"
        seed_model = CrossEncoder(str(ce_dir), device="cpu", max_length=512)
        tokenizer = seed_model.tokenizer
        requests = make_requests(args.reps + 1, args.docs, tokenizer)
        lengths = [len(tokenizer(QUERY, d)["input_ids"]) for r in requests for d in r]
        # useful work: ~2 FLOP per weight per token in the 6 encoder layers (embeddings are lookups)
        layer_params = sum(p.numel() for n, p in seed_model.model.named_parameters() if ".layer." in n)
        flop_per_request = 2 * layer_params * float(np.mean(lengths)) * args.docs
        floor_s = flop_per_request / (fp32 * 1e9)

        def seed_way(docs):
            """The seed's call, with torch's default of one intra-op thread per rerank."""
            threads = torch.get_num_threads()
            torch.set_num_threads(cores)
            try:
                return seed_model.predict([(QUERY, d) for d in docs], batch_size=32, show_progress_bar=False)
            finally:
                torch.set_num_threads(threads)

        scorers = {}
        for name in engines.BACKENDS:
            reason = engines.unavailable(name)
            if reason:
                print(f"backend {name}: not measured ({reason})")
                continue
            loaded = rerank.load_scorer(str(ce_dir), allow_fallback=False, backend=name, cache_dir=cache)
            if loaded.backend.backend == name:
                scorers[name] = rerank.Scorer(loaded.info, loaded, cache_bytes=0)  # no cache hits
        seed_name = "seed: CrossEncoder.predict bs=32"
        services = {name: assembly.build(Settings(), scorer=s) for name, s in scorers.items()}  # the front door every face uses
        variants = {seed_name: seed_way} | {f"ours: {name}": (lambda docs, s=s: s.rank(QUERY, docs, raw=True).scores())
                                            for name, s in services.items()}
        results = {name: time_variant(fn, requests) for name, fn in variants.items()}
        some = next(iter(scorers.values()))
        plans = [(some.plan(QUERY, r).lengths, r) for r in requests]
        seed_waste = np.mean([padding_waste(lens, plan_batches(lens, 10**9, 32)) for lens, _ in plans])
        our_waste = np.mean([padding_waste(lens, plan_batches(lens, 1024, 32)) for lens, _ in plans])
        reference = results[seed_name]
        base_p50 = float(np.median(reference[0]))
        print(f"\nmachine: {cores} cores, {some.workers} scoring workers, fp32 matmul {fp32:.0f} GFLOP/s (measured), "
              f"native bf16: {engines.cpu_has_native_bf16()}; request: {args.docs} docs, tokens median "
              f"{np.median(lengths):.0f} (min {min(lengths)}, max {max(lengths)}), ~{flop_per_request / 1e9:.0f} GFLOP "
              f"-> fp32 floor {floor_s:.2f} s")
        print(f"(a) one {args.docs}-document request")
        print(f"{'variant':<36}{'p50 s':>8}{'p95 s':>8}{'pairs/s':>9}{'x seed':>8}{'floor/p50':>10}"
              f"{'spearman':>10}{'top5':>6}{'padding':>9}")
        faithful = {}
        for name, (lat, scores) in results.items():
            p50, p95 = float(np.median(lat)), float(np.percentile(lat, 95))
            rho, top5 = agreement(scores, reference[1])
            if name != seed_name and rho >= choice.MIN_SPEARMAN:
                faithful[name.split(": ", 1)[1]] = p50
            print(f"{name:<36}{p50:>8.2f}{p95:>8.2f}{args.docs / p50:>9.1f}{base_p50 / p50:>8.2f}"
                  f"{floor_s / p50:>10.2f}{rho:>10.4f}{top5:>6.2f}{(seed_waste if name == seed_name else our_waste):>9.0%}")
        best = min(faithful, key=faithful.get) if faithful else "torch"

        pool = [d for r in make_requests(args.pairs // args.docs + 1, args.docs, tokenizer, seed=7) for d in r][: args.pairs]
        started = time.perf_counter()
        seed_way(pool)
        seed_tp = len(pool) / (time.perf_counter() - started)
        started = time.perf_counter()
        services[best].rank(QUERY, pool)
        our_tp = len(pool) / (time.perf_counter() - started)
        pair_flop = 2 * layer_params * float(np.mean(some.plan(QUERY, pool).lengths))
        print(f"(b) {len(pool)} pairs: seed {seed_tp:.1f} pairs/s; ours ({best}) {our_tp:.1f} pairs/s = "
              f"{our_tp / seed_tp:.2f}x; fp32 floor {fp32 * 1e9 / pair_flop:.1f} pairs/s "
              f"(ours at {our_tp * pair_flop / (fp32 * 1e9):.0%} of it)")

        embedder = assembly.build(Settings(), scorer=rerank.load_scorer(str(rerank.packaged_model_path()),
                                                                      allow_fallback=False, backend=best, cache_dir=cache))
        cold = [d for r in requests for d in r][: args.docs]
        started = time.perf_counter()
        embedder.rank(QUERY, cold)
        first = time.perf_counter() - started
        started = time.perf_counter()
        embedder.rank(QUERY + " again", cold)
        cached = time.perf_counter() - started
        print(f"embedding mode (all-MiniLM-L6-v2, {best}): {args.docs} new documents {first:.2f} s; the same documents "
              f"for another query {cached:.3f} s (document-embedding cache, {first / max(cached, 1e-6):.0f}x)")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this benchmark process (every backend loaded): {peak:.0f} MiB")
        if not args.no_server:
            serve_benchmark(requests, ce_dir, best, Path(tmp))
    return 0


def start_server(command: list[str], env: dict[str, str], port: int, tmp: Path, *,
                 deadline_s: float = 300.0) -> tuple[object, float]:
    """Start a server process; seconds from process start to its first /rerank answer (gradio_client), given up after
    ``deadline_s`` (a fresh start measures every engine of every model it loads before its port opens)."""
    import subprocess

    from gradio_client import Client

    started = time.perf_counter()
    proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=(tmp / f"server-{port}.log").open("w"))
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - started < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{command} exited; see {tmp}/server-{port}.log")
        try:
            Client(url, verbose=False).predict("warm", {"headers": ["text"], "data": [["a"], ["b"]]}, api_name="/rerank")
            return proc, time.perf_counter() - started
        except Exception:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{command} did not answer within {deadline_s:g} s; see {tmp}/server-{port}.log")


def _clients(url: str, batches: list[list[str]], clients: int) -> tuple[float, float]:
    """Pairs/s of single requests one after another, then of ``clients`` threads each sending its own requests."""
    import threading

    from gradio_client import Client

    def call(client, docs: list[str]) -> None:
        client.predict(QUERY, {"headers": ["text"], "data": [[d] for d in docs]}, api_name="/rerank")

    pool = [Client(url, verbose=False) for _ in range(clients)]
    sequential = batches[:clients]
    t = time.perf_counter()
    for docs in sequential:
        call(pool[0], docs)
    seq = sum(map(len, sequential)) / (time.perf_counter() - t)
    concurrent = batches[clients:2 * clients]
    threads = [threading.Thread(target=call, args=(c, d)) for c, d in zip(pool, concurrent, strict=True)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return seq, sum(map(len, concurrent)) / (time.perf_counter() - t)


def serve_benchmark(requests: list[list[str]], ce_dir: Path, backend: str, tmp: Path, clients: int = 8) -> None:
    """(c)-(e): the seed's app and ours on the same cross-encoder over HTTP; cold start of the embedded default."""
    rng = np.random.default_rng(1)
    words = " ".join(d for r in requests for d in r).split()
    batches = [[" ".join(rng.choice(words, size=int(rng.integers(40, 300)))) for _ in range(len(requests[0]))]
               for _ in range(4 * clients)]
    rows = []
    for name, command, env, part in (
            ("seed app", [sys.executable, str(ROOT / "bench" / "seed_app.py")], {"RERANK_MODEL": str(ce_dir)}, 0),
            (f"ours ({backend})", [sys.executable, str(ROOT / "app.py")],
             {"RERANK_MODEL": str(ce_dir), "RERANK_BACKEND": backend, "RAG_AUGMENT_CACHE": str(tmp / "cache"),
              "CORPUS_PATH": str(ROOT / "README.md")}, 1)):
        port = free_port()
        proc, cold = start_server(command, {**env, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}, port, tmp)
        try:
            seq, conc = _clients(f"http://127.0.0.1:{port}/", batches[part * 2 * clients:(part + 1) * 2 * clients], clients)
            rows.append((name, cold, seq, conc, rss_mb(proc.pid, "VmHWM")))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"(c)-(e) over HTTP with gradio_client, same cross-encoder files, {len(batches[0])} fresh documents per request")
    print(f"{'server':<24}{'cold start s':>13}{'seq pairs/s':>12}{f'{clients} clients':>12}{'conc/seq':>9}"
          f"{'x seed':>8}{'peak RSS MiB':>13}")
    for name, cold, seq, conc, rss in rows:
        print(f"{name:<24}{cold:>13.1f}{seq:>12.1f}{conc:>12.1f}{conc / seq:>9.2f}{conc / rows[0][3]:>8.2f}{rss:>13.0f}")
    cold_start_rows(tmp)


def cold_start_rows(tmp: Path) -> None:
    """(d) ``python app.py`` on the embedded default: first start on an empty cache, then a restart keeping it."""
    cache = tmp / "default-cache"
    for attempt in ("first start, empty cache", "restart, cache kept"):
        port = free_port()
        proc, cold = start_server([sys.executable, str(ROOT / "app.py")],
                            {"RAG_AUGMENT_CACHE": str(cache), "CORPUS_PATH": str(ROOT / "README.md"),
                             "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}, port, tmp)
        info = httpx_info(port)
        deadline = time.perf_counter() + 180
        while attempt.startswith("first") and "until measured" in info and time.perf_counter() < deadline:
            time.sleep(2)  # the backend measurement starts 15 s after start-up; let it finish and be remembered
            info = httpx_info(port)
        proc.terminate()
        proc.wait(30)
        print(f"(d) python app.py, embedded default, {attempt}: first answer after {cold:.1f} s; backend {info}")


def first_minute(tmp: Path, seconds: float = 60.0) -> None:
    """(f) ``python app.py`` on an empty cache with the built-in corpus: 50-document /v2/rerank requests one after
    another for a minute from the moment the port opens (the index builds meanwhile), then the same kind of requests
    once the index is built; p50 of each and their ratio."""
    import subprocess

    import httpx
    port = free_port()
    env = {**os.environ, "RAG_AUGMENT_CACHE": str(tmp / "fresh-cache"),
           "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    env.pop("CORPUS_PATH", None)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=(tmp / "first-minute.log").open("w"))
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
            if proc.poll() is not None or time.perf_counter() - started > 400:
                raise RuntimeError(f"app.py did not open its port; see {tmp}/first-minute.log")
        opened = time.perf_counter() - started
        texts = [p.text for p in corpus.builtin_passages(modules={"asyncio", "email", "typing", "logging", "http"})]
        rng = np.random.default_rng(3)

        def one() -> float:
            docs = [f"{texts[int(i)]} ({rng.random():.6f})" for i in rng.integers(0, len(texts), 50)]
            t = time.perf_counter()
            httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": docs}, timeout=120).raise_for_status()
            return time.perf_counter() - t

        early, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            early.append(one())
        from gradio_client import Client

        Client(url, verbose=False).predict(query="json", k=1, api_name="/similarity_search")  # waits for the index
        ready = time.perf_counter() - started
        steady = [one() for _ in range(len(early))]
    finally:
        proc.terminate()
        proc.wait(30)
    e, st = float(np.median(early)), float(np.median(steady))
    print(f"(f) fresh start, embedded default, built-in corpus: port open after {opened:.1f} s (backends measured "
          f"first), index ready after {ready:.1f} s; 50-document requests: p50 {e:.2f} s in the first {seconds:.0f} s "
          f"({len(early)} requests), {st:.2f} s once the index was built = {e / st:.2f}x")


def httpx_info(port: int) -> str:
    """The backend line of a running app's /info."""
    import httpx

    backend = httpx.get(f"http://127.0.0.1:{port}/info", timeout=10).json()["backend"]
    return f"{backend['backend']} ({backend['how']})"


if __name__ == "__main__":
    sys.exit(main())
