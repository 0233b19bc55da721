"""The soak: every face under mixed load for a long while, one request in ten hostile, and the server's health over it.

``soak_scenario`` drives 6 clients over the Gradio API, ``/v2/rerank``, ``/v1/rerank`` and TEI's ``/rerank`` in turn;
every tenth request is hostile (far over the cost budget, a lone surrogate, JSON cut short, a body half sent before
the client hangs up). It samples the server's RSS, open descriptors and threads, and fits RSS's slope after warm-up
(:func:`fitted_slope`): a straight line through every sample, so one reading at a lucky or unlucky moment does not
decide. ``bench/load.py --scenario soak`` prints it; the test suite runs a short one.
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

from evaluation.load import make_documents, one_request, rss_mb

QUERY = "which passage is about latency?"


def loopback_client(url: str, address: str = "127.0.0.1", timeout: float = 600) -> httpx.Client:
    """An HTTP client speaking from ``address`` (another loopback address is another client to the server)."""
    return httpx.Client(base_url=url, timeout=timeout, transport=httpx.HTTPTransport(local_address=address))


def fitted_slope(samples: list[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, value) samples, per minute (0 for fewer than 3 samples)."""
    if len(samples) < 3:
        return 0.0
    t, v = np.array(samples, dtype=float).T
    return float(np.polyfit(t / 60.0, v, 1)[0])


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


def soak_scenario(url: str, pid: int, *, seconds: float = 600.0, clients: int = 6, docs: int = 20,
                  warm_up: float | None = None, sample_every: float = 5.0) -> dict:
    """Mixed faces with 1 request in 10 hostile, for ``seconds``; the server's health over it: RSS, descriptors and
    threads after ``warm_up`` seconds (default a fifth, at most 60 s) and at the end, and RSS's fitted slope after
    warm-up, over all of it and over its second half (where the slope goes once caches are full)."""
    from gradio_client import Client

    statuses: dict[int, int] = {}
    errors: list[str] = []
    lost = [0]
    lock = threading.Lock()
    samples: list[tuple[float, float, int, int]] = []
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    warm_until = started + (min(60.0, seconds / 5) if warm_up is None else warm_up)

    def worker(k: int) -> None:
        rng = random.Random(k)
        gradio = Client(url, verbose=False)
        with loopback_client(url, f"127.0.0.{10 + k}", timeout=120) as client:
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
        time.sleep(sample_every)
        samples.append((time.monotonic() - started, rss_mb(pid), _open_fds(pid), _threads(pid)))
    for t in threads:
        t.join(180)
    after_warm = [s for s in samples if s[0] >= warm_until - started] or samples
    second_half = [s for s in after_warm if s[0] >= (after_warm[0][0] + after_warm[-1][0]) / 2]
    return {"statuses": statuses, "errors": errors, "lost_rows": lost[0], "rss_warm": after_warm[0][1],
            "rss_end": samples[-1][1], "rss_max": max(s[1] for s in after_warm),
            "slope": fitted_slope([(s[0], s[1]) for s in after_warm]),
            "slope_second_half": fitted_slope([(s[0], s[1]) for s in second_half]),
            "samples": [(round(s[0], 1), s[1], s[2], s[3]) for s in samples],
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
    print(f"RSS fitted slope after warm-up {r['slope']:+.2f} MiB/min ({r['slope'] * 60 / r['rss_warm'] * 100:+.1f}% an "
          f"hour); over its second half {r['slope_second_half']:+.2f} MiB/min")
    for err in r["errors"][:5]:
        print("client error:", err)
