"""Unlucky and hostile load on loopback, as ratios against the same server idle (``bench/load.py --scenario``).

``hostile``: one client's small requests (20 documents, one after another): p50 idle, then while (a) one request just
under the cost budget runs (new documents each time, and the same ones again from the cache), (b) two clients keep
sending 8.5 MB bodies far over the budget, (c) a client floods with 24 concurrent requests; and how long an 8.5 MB
over-budget body waits for its 413. Each hostile client speaks from its
own loopback address (127.0.0.2, .3, ...), as separate machines would.
``soak`` (``evaluation/soak.py``): mixed faces for ``--seconds`` (default 600), 1 request in 10 hostile: answers with
5xx, RSS after warm-up and its fitted slope, open descriptors, threads.
Scripts, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import numpy as np

from evaluation.load import just_under_budget, make_documents, small_latencies
from evaluation.soak import QUERY
from evaluation.soak import loopback_client as _client


def _over_budget_body() -> bytes:
    """90 distinct documents of ~94 KB (8.5 MB, ~950,000 words): far over the default 262,144-token budget."""
    words = " ".join(f"word{i}" for i in range(10_500))
    return json.dumps({"query": QUERY, "documents": [f"{n} {words}" for n in range(90)]}).encode()


def _while(background, measure) -> list[float]:
    """``measure()`` while ``background(stop)`` runs in threads; stops them after."""
    stop = threading.Event()
    threads = [threading.Thread(target=b, args=(stop,), daemon=True) for b in background]
    for t in threads:
        t.start()
    time.sleep(1.0)
    try:
        return measure()
    finally:
        stop.set()
        for t in threads:
            t.join(120)


def hostile_scenario(url: str, *, small: int = 12, docs: int = 20) -> dict:
    """Small requests' p50 idle and under each kind of hostile load; time to 413 for a 9 MB over-budget body."""
    rng = random.Random(5)
    body = _over_budget_body()
    limit = httpx.get(f"{url}/info", timeout=30).json()["limits"]["max_request_tokens"]
    out: dict = {}
    with _client(url) as client:
        small_latencies(client, rng, 3, docs)
        out["idle"] = small_latencies(client, rng, small, docs)
        refusals = []
        with _client(url, "127.0.0.9") as other:
            for _ in range(5):
                started = time.perf_counter()
                answer = other.post("/v2/rerank", content=body, headers={"content-type": "application/json"})
                refusals.append((answer.status_code, time.perf_counter() - started))
        out["refusals"] = refusals
        big_docs = just_under_budget(client, rng, limit)

        def large(fresh: bool):
            def send(stop: threading.Event) -> None:
                with _client(url, "127.0.0.2") as c:
                    n = 0
                    while not stop.is_set():
                        n += 1  # fresh: every document new, so each request is scored; else the same, from the cache
                        docs = [f"{d} {n}" for d in big_docs] if fresh else big_docs
                        c.post("/v2/rerank", json={"query": QUERY, "documents": docs})
            return send

        def hostile(address: str):
            def send(stop: threading.Event) -> None:
                with _client(url, address) as c:
                    while not stop.is_set():
                        c.post("/v2/rerank", content=body, headers={"content-type": "application/json"})
            return send

        def flood(stop: threading.Event) -> None:
            statuses: list[int] = out.setdefault("flood_statuses", [])
            with _client(url, "127.0.0.5") as c:
                def one() -> None:
                    while not stop.is_set():
                        statuses.append(c.post("/v2/rerank", json={"query": QUERY,
                                                                   "documents": make_documents(rng, docs)}).status_code)
                pool = [threading.Thread(target=one) for _ in range(24)]
                for t in pool:
                    t.start()
                for t in pool:
                    t.join()

        measure = lambda: small_latencies(client, rng, small, docs)  # noqa: E731
        out["large"] = _while([large(fresh=True)], measure)
        out["large-cached"] = _while([large(fresh=False)], measure)
        out["hostile"] = _while([hostile("127.0.0.3"), hostile("127.0.0.4")], measure)
        out["flood"] = _while([flood], measure)
        out["large_documents"] = len(big_docs)
    return out


def print_hostile(r: dict) -> None:
    idle = float(np.median(r["idle"]))
    times = [s for status, s in r["refusals"]]
    statuses = sorted({s for s, _ in r["refusals"]})
    print(f"{len(_over_budget_body()) / 1e6:.1f} MB body far over the budget: answered {statuses} in "
          f"{min(times):.2f}-{max(times):.2f} s (median {float(np.median(times)):.2f} s, body sent and read included)")
    print(f"small requests, p50 idle {idle * 1000:.0f} ms; during:")
    for key, label in (("large", f"one request just under the budget ({r['large_documents']} documents of 3,000 "
                                 "words, new each time)"),
                       ("large-cached", "the same request sent again and again (scored from the cache: its planning is "
                                        "the work)"),
                       ("hostile", "two clients sending 8.5 MB over-budget bodies"),
                       ("flood", "a client flooding with 24 concurrent requests")):
        p50 = float(np.median(r[key]))
        print(f"  {label}: p50 {p50 * 1000:.0f} ms = {p50 / idle:.2f}x idle (max {max(r[key]) * 1000:.0f} ms)")
    statuses = r.get("flood_statuses", [])
    print(f"  the flooding client's answers: {statuses.count(200)} x 200, {statuses.count(429)} x 429 "
          f"(Retry-After), others {len(statuses) - statuses.count(200) - statuses.count(429)}")
