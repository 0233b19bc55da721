"""One table: every engine that runs here x (p50 for 50 SciFact passages over HTTP, pairs/s, nDCG@10 on each dev
collection, the gate's verdict), for the trained cross-encoder and the embedded default, beside the seed's way.

``python bench/engines.py --model DIR [--requests 12] [--depth 50] [--limit N] [--scores-cache DIR]
[--models trained,default]``

Speed: ``python app.py`` serves each engine in turn (``RERANK_BACKEND`` set, graphs exported beforehand so no start
measures), and once from a fresh start with an empty cache, where it picks its engine by its own measurement (the
"auto" row: nothing forced). Each is sent ``--requests`` requests through ``gradio_client`` (``/rerank``): 50 BM25
candidates of a held-out SciFact query each, the same requests for every row. The seed's app (``bench/seed_app.py``:
``CrossEncoder.predict``, fp32) is called alternately with the auto row, request for request, and its p50 is the
"x seed" denominator. Quality: the held-out half of each dev collection's judged queries (``bench/dev_sets.py``), BM25
top ``--depth`` reranked in-process by the same service on each engine (scores kept in ``--scores-cache``, shared with
``bench/gate.py``; fp32 engines, which agree with each other to 1e-4, share ONNX Runtime's). The verdicts are the
fresh start's own measurement (``/info``). Needs ../shared/eval.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dev_sets
import httpx
import numpy as np
from latency import start_server

import rerank
from evaluation.load import free_port
from scoring import engines

ROOT = Path(__file__).resolve().parents[1]
FP32 = "onnxruntime"


def requests_from(scifact: dev_sets.Pools, n: int) -> list[tuple[str, list[str]]]:
    """(query, its 50 candidates' texts) for the first ``n`` held-out SciFact queries."""
    data = scifact.dataset
    return [(data.queries[q], [data.corpus[d] for d in ids]) for q, ids in list(scifact.pools.items())[:n]]


def call(client, query: str, docs: list[str]) -> float:
    """Seconds for one gradio_client ``/rerank`` call of these documents."""
    started = time.perf_counter()
    client.predict(query, {"headers": ["text"], "data": [[d] for d in docs]}, api_name="/rerank")
    return time.perf_counter() - started


def serve(model: str, env: dict[str, str], tmp: Path, name: str):
    """``python app.py`` on a free port for ``model`` (a small corpus, so no index build competes): (process, client,
    port, seconds to its first answer). A fresh start measures both models' engines first: minutes on 2 cores."""
    from gradio_client import Client

    port = free_port()
    env = {"RERANK_MODEL": model, "CORPUS_PATH": str(ROOT / "README.md"), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_SERVER_NAME": "127.0.0.1", **env}
    proc, cold = start_server([sys.executable, str(ROOT / "app.py")], env, port, tmp, deadline_s=1200)
    return proc, Client(f"http://127.0.0.1:{port}/", verbose=False), port, cold


def stop(proc) -> None:
    """SIGTERM, then SIGKILL where the app has not exited 30 s later (said on stderr: a slow shutdown is a finding)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        print(f"app.py (pid {proc.pid}) had not exited 30 s after SIGTERM; killed", file=sys.stderr, flush=True)
        proc.kill()
        proc.wait(30)


def quality(label: str, model: str, engine: str, held: list[dev_sets.Pools], cache: Path, scores: Path) -> dict:
    """nDCG@10 per collection (held-out half) with ``engine`` serving ``model`` in-process."""
    key = f"{label}-{dev_sets.fingerprint(model)}-{engine}"
    out, service = {}, None
    for pools in held:
        def compute(pools=pools):
            nonlocal service
            if service is None:
                loaded = rerank.load_scorer(model, allow_fallback=False, backend=engine, cache_dir=cache)
                service = dev_sets.uncached_service(loaded)
            return dev_sets.score_pools(service, pools)

        out[pools.name] = pools.ndcg(dev_sets.cached_scores(scores, f"{key}-{pools.name}-held-{pools.pairs}", compute))
    return out


def measure_model(label: str, model: str, requests: list, held: list[dev_sets.Pools], tmp: Path, scores: Path,
                  seed_client) -> list[dict]:
    """Rows for one model: the auto fresh start (alternating with the seed's app), then each engine forced."""
    rows = []
    cache = tmp / f"{label}-cache"
    proc, client, port, cold = serve(model, {"RAG_AUGMENT_CACHE": str(tmp / f"{label}-fresh")}, tmp, f"{label}-auto")
    try:
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=30).json()["backend"]
        ours, seed = [], []
        for query, docs in requests:
            ours.append(call(client, query, docs))
            if seed_client is not None:
                seed.append(call(seed_client, query, docs))
    finally:
        stop(proc)
    verdicts = {m["backend"]: m for m in info["measurements"]}
    print(f"{label}: the fresh start picked {info['backend']} ({info.get('how', '')}); its probe seconds: "
          + ", ".join(f"{m['backend']} {m['seconds']:.3f} (x{m.get('relative') or 1:.2f})" for m in info["measurements"]
                     if m.get("seconds")),
          file=sys.stderr, flush=True)
    picked = FP32 if engines.PRECISION.get(info["backend"]) == "fp32" else info["backend"]
    rows.append({"model": label, "engine": f"auto: {info['backend']}", "times": ours, "cold": cold,
                 "quality": quality(label, model, picked, held, cache, scores), "verdict": "picked"})
    if seed:
        rows.insert(0, {"model": label, "engine": "seed: CrossEncoder.predict (fp32)", "times": seed, "cold": None,
                        "quality": {}, "verdict": ""})
    for engine in engines.CPU_BACKENDS:
        if engines.unavailable(engine):
            continue
        found = verdicts.get(engine, {})
        rerank.load_scorer(model, allow_fallback=False, backend=engine, cache_dir=cache)  # export before the server
        proc, client, _, cold = serve(model, {"RAG_AUGMENT_CACHE": str(cache), "RERANK_BACKEND": engine}, tmp,
                                      f"{label}-{engine}")
        try:
            times = [call(client, query, docs) for query, docs in requests]
        finally:
            stop(proc)
        same = FP32 if engines.PRECISION[engine] == "fp32" else engine  # fp32 engines agree to 1e-4 (tests)
        rows.append({"model": label, "engine": engine, "times": times, "cold": cold,
                     "quality": quality(label, model, same, held, cache, scores), "verdict": _verdict(found)})
        print(f"{label}: {engine} measured", file=sys.stderr, flush=True)
    return rows


def _verdict(measurement: dict) -> str:
    if measurement.get("seconds") is None:
        return measurement.get("note", "not measured")[:40] or "not measured"
    admitted = measurement.get("note", "").startswith("keeps")
    return f"{'admits' if admitted else 'rejects'} ({measurement['ndcg']:.4f}, {measurement['top10']:.2f})"


def seed_app(model: str, tmp: Path):
    """The seed's app (``bench/seed_app.py``) on a free port: (process, client)."""
    from gradio_client import Client

    port = free_port()
    proc, _ = start_server([sys.executable, str(ROOT / "bench" / "seed_app.py")],
                           {"RERANK_MODEL": model, "GRADIO_SERVER_PORT": str(port)}, port, tmp)
    return proc, Client(f"http://127.0.0.1:{port}/", verbose=False)


def print_table(rows: list[dict], names: list[str], requests: int) -> None:
    """The table, one row per model and engine; x seed against the seed's p50 of the same run."""
    seed = next((float(np.median(r["times"])) for r in rows if r["engine"].startswith("seed")), None)
    print(f"{requests} requests of 50 held-out SciFact passages over HTTP (gradio_client /rerank), {os.cpu_count()} "
          f"cores; nDCG@10 on each collection's held-out judged queries, BM25 candidates reranked")
    print(f"{'model':<22}{'engine':<34}{'p50 s':>7}{'pairs/s':>9}{'x seed':>8}"
          + "".join(f"{n[:12]:>13}" for n in names) + f"  {'gate (probe nDCG@10, top-10)':<34}{'start s':>8}")
    for r in rows:
        p50 = float(np.median(r["times"]))
        pairs = 50 * len(r["times"]) / float(np.sum(r["times"]))
        ratio = f"{seed / p50:>8.2f}" if seed else f"{'':>8}"
        cold = f"{r['cold']:>8.1f}" if r["cold"] is not None else f"{'':>8}"
        print(f"{r['model']:<22}{r['engine']:<34}{p50:>7.2f}{pairs:>9.1f}{ratio}"
              + "".join(f"{r['quality'][n]:>13.4f}" if n in r["quality"] else f"{'':>13}" for n in names)
              + f"  {r['verdict']:<34}{cold}")


def index_builds(engines_to_time: list[str], cache: Path) -> list[tuple[str, float, int]]:
    """Seconds to build the local index of the built-in corpus (every passage embedded, BM25 indexed) with the embedded
    default on each engine: (engine, seconds, passages)."""
    from retrieval import corpus
    from retrieval.index import LocalIndex

    passages = corpus.builtin_passages()
    rows = []
    for engine in engines_to_time:
        scorer = rerank.load_scorer(str(rerank.packaged_model_path()), allow_fallback=False, backend=engine,
                                    cache_dir=cache)
        started = time.perf_counter()
        LocalIndex.open(passages, rerank.Scorer(scorer.info, scorer, cache_bytes=0), path=None, name="built-in corpus")
        rows.append((engine, time.perf_counter() - started, len(passages)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    dev_sets.judged_model_arguments(parser, limit="held-out queries per collection")
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--models", default="trained,default",
                        help="which of the two to measure: the trained cross-encoder (--model) and/or the embedded default")
    parsed = dev_sets.parse(parser)
    if parsed is None:
        return 0
    args, folders, _ = parsed
    if not set(args.models.split(",")) <= {"trained", "default"}:
        parser.error(f"--models takes trained and/or default, comma-separated; got {args.models!r}")
    held = [dev_sets.split_pools(f, depth=args.depth, limit=args.limit)[1] for f in folders]
    scifact = next(f for f in folders if f.name == "scifact")
    requests = requests_from(dev_sets.split_pools(scifact, depth=50)[1], args.requests)
    scores, rows = Path(args.scores_cache), []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models, builds = set(args.models.split(",")), []
        if "trained" in models:
            seed_proc, seed_client = seed_app(args.model, tmp)
            try:
                rows += measure_model("trained cross-encoder", args.model, requests, held, tmp, scores, seed_client)
            finally:
                stop(seed_proc)
        if "default" in models:
            rows += measure_model("embedded default", str(rerank.packaged_model_path()), requests, held, tmp, scores,
                                  None)
            picked = next(r["engine"].split(": ")[1] for r in rows if r["model"] == "embedded default"
                          and r["engine"].startswith("auto"))
            builds = index_builds(sorted({FP32, picked}), tmp / "index-cache")
    print_table(rows, [p.name for p in held], len(requests))
    for engine, seconds, passages in builds:
        print(f"local index of the built-in corpus ({passages:,} passages) built with the embedded default on {engine}: "
              f"{seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
