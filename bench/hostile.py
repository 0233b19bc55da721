"""Unlucky and hostile load on loopback, as ratios against the same server idle (``bench/load.py --scenario``).

``hostile``: one client's small requests (20 documents, one after another): p50 idle, then while (a) one request just
under the cost budget runs (new documents each time, and the same ones again from the cache), (b) two clients keep
sending 8.5 MB bodies far over the budget, (c) a client floods with 24 concurrent requests; and how long an 8.5 MB
over-budget body waits for its 413. Each hostile client speaks from its
own loopback address (127.0.0.2, .3, ...), as separate machines would.
``soak``: mixed faces for ``--seconds`` (default 600), 1 request in 10 hostile (over budget, lone surrogates, bad
JSON, a client that disconnects mid-request): answers with 5xx, RSS growth after warm-up, open descriptors, threads.
Scripts, not tests: nothing here asserts a time.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from evaluation.load import just_under_budget, make_documents, one_request, rss_mb, small_latencies

QUERY = "which passage is about latency?"


def _client(url: str, address: str = "127.0.0.1", timeout: float = 600) -> httpx.Client:
    """An HTTP client speaking from ``address`` (another loopback address is another client to the server)."""
    return httpx.Client(base_url=url, timeout=timeout, transport=httpx.HTTPTransport(local_address=address))


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


# --- soak ----------------------------------------------------------------------------------------

def _open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def _hostile_request(client: httpx.Client, url: str, kind: int, rng: random.Random) -> int:
    """One hostile request of four kinds; its status (0: the client itself went away)."""
    if kind == 0:  # far over the cost budget
        docs = [" ".join(f"w{i}" for i in range(60_000)) + f" {n}" for n in range(8)]
        return client.post("/v2/rerank", json={"query": QUERY, "documents": docs}).status_code
    if kind == 1:  # a lone surrogate, escaped in JSON
        raw = b'{"query": "q\\ud800", "documents": ["a", "b"]}'
        return client.post("/v2/rerank", content=raw, headers={"content-type": "application/json"}).status_code
    if kind == 2:  # not JSON at all
        return client.post("/rerank", content=b'{"query": "q", "texts": [', headers={"content-type": "application/json"}
                           ).status_code
    host, port = url.removeprefix("http://").split(":")  # disconnects mid-request: sends half a body, then hangs up
    payload = json.dumps({"query": QUERY, "documents": make_documents(rng, 20)}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(payload) + payload[: len(payload) // 2])
    return 0


def soak_scenario(url: str, pid: int, *, seconds: float = 600.0, clients: int = 6, docs: int = 20) -> dict:
    """Mixed faces with 1 request in 10 hostile, for ``seconds``; the server's health before and after."""
    from gradio_client import Client

    statuses: dict[int, int] = {}
    errors: list[str] = []
    lost = [0]
    lock = threading.Lock()
    samples: list[tuple[float, float, int, int]] = []
    deadline = time.monotonic() + seconds
    warm_until = time.monotonic() + min(60.0, seconds / 5)

    def worker(k: int) -> None:
        rng = random.Random(k)
        gradio = Client(url, verbose=False)
        with _client(url, f"127.0.0.{10 + k}", timeout=120) as client:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                hostile = n % 10 == k % 10
                route = f"hostile-{n // 10 % 4}" if hostile else ("gradio", "v2", "v1", "tei")[n % 4]
                try:
                    if hostile:
                        status = _hostile_request(client, url, n // 10 % 4, rng)
                    else:
                        wrong = one_request(client, gradio, route, make_documents(rng, docs))
                        status = 200
                        with lock:
                            lost[0] += wrong
                except httpx.HTTPStatusError as exc:
                    status = exc.response.status_code
                except Exception as exc:  # a client-side failure: counted, the soak goes on
                    with lock:
                        errors.append(f"{route}: {type(exc).__name__}: {str(exc)[:100]}")
                    continue
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    while time.monotonic() < deadline:
        time.sleep(5)
        samples.append((time.monotonic(), rss_mb(pid), _open_fds(pid), _threads(pid)))
    for t in threads:
        t.join(180)
    after_warm = [s for s in samples if s[0] >= warm_until] or samples
    return {"statuses": statuses, "errors": errors, "lost_rows": lost[0], "rss_warm": after_warm[0][1],
            "rss_end": samples[-1][1], "rss_max": max(s[1] for s in after_warm),
            "fds": (after_warm[0][2], samples[-1][2]), "threads": (after_warm[0][3], samples[-1][3]),
            "lag": _lag(url)}


def _lag(url: str) -> str:
    """The server's event-loop lag histogram, summarised: wake-ups and the slowest bucket reached."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    buckets = [(line.split('le="')[1].split('"')[0], float(line.split()[-1])) for line in text.splitlines()
               if line.startswith("rerank_event_loop_lag_seconds_bucket")]
    total = buckets[-1][1] if buckets else 0
    over = [(le, total - count) for le, count in buckets if total - count > 0]
    worst = over[-1][0] if over else "0.001"
    return f"{total:.0f} wake-ups, the slowest over {worst} s" if over else f"{total:.0f} wake-ups, all under 1 ms"


def print_soak(r: dict, seconds: float) -> None:
    statuses = dict(sorted(r["statuses"].items()))
    server_errors = sum(n for s, n in statuses.items() if s >= 500)
    growth = (r["rss_end"] - r["rss_warm"]) / r["rss_warm"] * 100
    print(f"soak {seconds:.0f} s: answers by status {statuses} (0: the client hung up mid-request); 5xx: {server_errors}; "
          f"client-side failures {len(r['errors'])}; lost rows {r['lost_rows']}")
    print(f"server RSS after warm-up {r['rss_warm']:.0f} MiB, at end {r['rss_end']:.0f} MiB ({growth:+.1f}%), "
          f"peak {r['rss_max']:.0f} MiB; open descriptors {r['fds'][0]} -> {r['fds'][1]}; "
          f"threads {r['threads'][0]} -> {r['threads'][1]}; event loop: {r['lag']}")
    for err in r["errors"][:5]:
        print("client error:", err)
