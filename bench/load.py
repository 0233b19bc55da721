"""A bounded load test on loopback: N clients mixing the Gradio and HTTP rerank routes for T seconds.

``python bench/load.py [--clients 8] [--seconds 60] [--docs 20] [--url URL --pid PID]``
``python bench/load.py --scenario cost-limit [--small 12]``: small requests' latency alone, then while one request
at the cost limit (``RERANK_MAX_REQUEST_TOKENS``) runs: the fair scheduler's effect, as a ratio.
``python bench/load.py --scenario hostile`` and ``--scenario soak [--seconds 600]``: see ``bench/hostile.py``.

Without ``--url`` it starts ``python app.py`` on a free loopback port (a small corpus for the local
index, so no long index build competes with the load) and stops it at the end. It prints requests,
errors, lost rows, p50/p95/p99 latency, pairs/s, and the server's RSS after warm-up and at the end.
Every request is checked: each document comes back exactly once (or is a reported duplicate).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from evaluation.load import just_under_budget, rss_mb, run_load, small_latencies, start_app

ROOT = Path(__file__).resolve().parents[1]


def cost_limit_scenario(url: str, *, small: int = 12, docs: int = 20) -> dict:
    """Small requests' p50 alone, then while one request at the cost limit runs (fair scheduling keeps them moving)."""
    rng = random.Random(5)
    with httpx.Client(base_url=url, timeout=600) as client:
        small_latencies(client, rng, 3, docs)  # warm-up
        alone = small_latencies(client, rng, small, docs)
        limit = client.get("/info").json()["limits"]["max_request_tokens"]
        big_docs = just_under_budget(client, rng, limit)
        big: dict = {}

        def run_big() -> None:
            started = time.perf_counter()
            response = client.post("/v2/rerank", json={"query": "which passage is about latency?", "documents": big_docs})
            big.update(status=response.status_code, seconds=time.perf_counter() - started, ended=time.perf_counter())

        thread = threading.Thread(target=run_big)
        thread.start()
        time.sleep(1.0)
        during = small_latencies(client, rng, small, docs)
        finished = time.perf_counter()
        thread.join()
    return {"limit": limit, "big_documents": len(big_docs), "big_status": big["status"], "big_seconds": big["seconds"],
            "small_alone_p50": float(np.median(alone)), "small_during_p50": float(np.median(during)),
            "small_during_max": max(during), "all_small_done_while_big_ran": finished < big["ended"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=["mixed", "cost-limit", "hostile", "soak"], default="mixed")
    parser.add_argument("--small", type=int, default=12, help="cost-limit: small requests timed alone and during")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--docs", type=int, default=20, help="documents per request (one is a duplicate)")
    parser.add_argument("--url", help="an already running rag-augment (loopback)")
    parser.add_argument("--pid", type=int, help="its process id, for RSS")
    parser.add_argument("--json-out", help="soak: also write every sample and figure to this file")
    parser.add_argument("--backend", default="torch", help="soak and hostile: RERANK_BACKEND of the app started "
                        "(auto: the app measures and picks, as `make run` does)")
    args = parser.parse_args()
    if args.scenario == "cost-limit":
        return _cost_limit_main(args)
    if args.scenario in ("hostile", "soak"):
        return _hostile_main(args)
    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        if args.url:
            url, pid = args.url.rstrip("/"), args.pid
        else:
            proc, url = start_app(Path(tmp))
            pid = proc.pid
        try:
            warm = run_load(url, clients=args.clients, seconds=min(10.0, args.seconds / 6), docs=args.docs, seed=1)
            rss_start = rss_mb(pid) if pid else float("nan")
            report = run_load(url, clients=args.clients, seconds=args.seconds, docs=args.docs)
            rss_end = rss_mb(pid) if pid else float("nan")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    s = report.summary()
    print(f"load: {args.clients} clients x {args.seconds:.0f} s on {url} ({os.cpu_count()} CPUs), "
          f"{args.docs} documents per request; warm-up {warm.summary()['requests']} requests")
    print(f"requests {s['requests']}  errors {s['errors']}  lost rows {s['lost_rows']}  by route {s['by_route']}")
    print(f"latency p50 {s['p50_ms']:.0f} ms  p95 {s['p95_ms']:.0f} ms  p99 {s['p99_ms']:.0f} ms  "
          f"throughput {s['pairs_per_s']:.0f} pairs/s")
    growth = (rss_end - rss_start) / rss_start * 100 if rss_start == rss_start and rss_start else float("nan")
    print(f"server RSS after warm-up {rss_start:.0f} MiB, at end {rss_end:.0f} MiB ({growth:+.1f}%)")
    for err in report.errors[:10]:
        print("error:", err)
    return 1 if report.errors or report.lost_rows else 0


def _cost_limit_main(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = (None, args.url.rstrip("/")) if args.url else start_app(Path(tmp), RERANK_BACKEND="torch")
        try:
            r = cost_limit_scenario(url, small=args.small, docs=args.docs)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    print(f"cost limit {r['limit']:,} tokens (RERANK_MAX_REQUEST_TOKENS); the large request: {r['big_documents']} documents "
          f"of ~3,000 words, answered {r['big_status']} after {r['big_seconds']:.1f} s ({os.cpu_count()} CPUs)")
    print(f"small requests ({args.docs} documents each, one after another): p50 alone {r['small_alone_p50'] * 1000:.0f} ms, "
          f"p50 while the large one ran {r['small_during_p50'] * 1000:.0f} ms "
          f"({r['small_during_p50'] / r['small_alone_p50']:.2f}x; max {r['small_during_max'] * 1000:.0f} ms); "
          f"all {args.small} done while it ran: {r['all_small_done_while_big_ran']}")
    return 0


def _hostile_main(args) -> int:
    import hostile

    from evaluation import soak

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = (None, args.url.rstrip("/")) if args.url else start_app(Path(tmp), RERANK_BACKEND=args.backend)
        pid = args.pid or (proc.pid if proc else None)
        try:
            if args.scenario == "hostile":
                hostile.print_hostile(hostile.hostile_scenario(url, small=args.small, docs=args.docs))
                return 0
            warm = run_load(url, clients=4, seconds=10, docs=args.docs, seed=1)
            result = soak.soak_scenario(url, pid, seconds=args.seconds, docs=args.docs)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    print(f"({os.cpu_count()} CPUs; warm-up {warm.summary()['requests']} requests)")
    soak.print_soak(result, args.seconds)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    return 1 if any(status >= 500 for status in result["statuses"]) else 0


if __name__ == "__main__":
    sys.exit(main())
