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
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("retrieval rerank question answer passage model score vector index query document relevance "
         "python duckdb gradio latency memory thread batch token window chunk fusion cache").split()
ROUTES = ("gradio", "v2", "v1", "tei")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident set size of a process in MiB (Linux /proc); ``field="VmHWM"`` gives its peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_documents(rng: random.Random, n: int) -> list[str]:
    """Fresh random documents (with one deliberate duplicate) so caches do not flatter the numbers."""
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 60))) + f" #{rng.random():.6f}"
            for _ in range(n - 1)]
    return docs + [docs[0]]


@dataclass
class LoadReport:
    """What the clients saw."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lost_rows: int = 0
    pairs: int = 0
    seconds: float = 0.0
    by_route: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        """Numbers for the table."""
        lat = np.array(self.latencies or [float("nan")])
        return {"requests": len(self.latencies) + len(self.errors), "errors": len(self.errors),
                "lost_rows": self.lost_rows, "p50_ms": float(np.percentile(lat, 50) * 1000),
                "p95_ms": float(np.percentile(lat, 95) * 1000), "p99_ms": float(np.percentile(lat, 99) * 1000),
                "pairs_per_s": self.pairs / self.seconds if self.seconds else 0.0, "by_route": dict(self.by_route)}


def one_request(client: httpx.Client, gradio, route: str, docs: list[str]) -> int:
    """Send one request on ``route``; returns how many rows came back wrong (lost or doubled)."""
    query = "which passage talks about rerank latency and memory?"
    unique = list(dict.fromkeys(docs))
    if route == "gradio":
        out = gradio.predict(query=query, documents={"headers": ["text", "n"], "data": [[d, i] for i, d in enumerate(docs)],
                                                     "metadata": None}, api_name="/rerank")
        texts = [row[0] for row in out["data"]]
        return abs(len(texts) - len(unique)) + (len(unique) - len(set(texts) & set(unique)))
    if route == "tei":
        response = client.post("/rerank", json={"query": query, "texts": docs})
        response.raise_for_status()
        indices = [r["index"] for r in response.json()]
    else:
        body = {"query": query, "documents": docs} if route == "v2" else \
            {"query": query, "documents": [{"text": d} for d in docs], "return_documents": True}
        response = client.post(f"/{route}/rerank", json=body)
        response.raise_for_status()
        indices = [r["index"] for r in response.json()["results"]]
    return len(docs) - len(set(indices)) + (len(indices) - len(set(indices)))


def run_load(url: str, *, clients: int = 8, seconds: float = 60.0, docs: int = 20, seed: int = 0,
             headers: dict[str, str] | None = None, requests_per_client: int | None = None) -> LoadReport:
    """Run ``clients`` threads against ``url`` for ``seconds`` (or ``requests_per_client`` requests each); loopback only."""
    from gradio_client import Client

    report = LoadReport()
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        gradio = Client(url, verbose=False, headers=headers)
        with httpx.Client(base_url=url, timeout=120, headers=headers) as client:
            n = 0
            while (time.monotonic() < deadline if requests_per_client is None else n < requests_per_client):
                route = ROUTES[(k + n) % len(ROUTES)]
                n += 1
                batch = make_documents(rng, docs)
                started = time.perf_counter()
                try:
                    lost = one_request(client, gradio, route, batch)
                except Exception as exc:  # counted and reported, the run goes on
                    with lock:
                        report.errors.append(f"{route}: {type(exc).__name__}: {str(exc)[:120]}")
                    continue
                with lock:
                    report.latencies.append(time.perf_counter() - started)
                    report.lost_rows += lost
                    report.pairs += len(batch)
                    report.by_route[route] = report.by_route.get(route, 0) + 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 180)
    report.seconds = time.perf_counter() - started
    return report


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(tmp: Path, *, filler: int = 0, **extra_env: str) -> tuple[subprocess.Popen, str]:
    """``python app.py`` on a free loopback port with a one-file corpus; waits until it answers.

    ``filler`` more passages make the index build take a while (the page shows it building, then ready);
    ``extra_env`` adds configuration (``RERANK_API_KEY=...``, ``RERANK_BACKEND=torch``, ...)."""
    corpus = tmp / "corpus.md"
    rng = random.Random(11)
    extra = "".join(f"\n\nNote {i}: " + " ".join(rng.choice(WORDS) for _ in range(40)) + "." for i in range(filler))
    corpus.write_text("Rerank latency depends on batch size.\n\nMemory stays flat under load." + extra)
    port = _free_port()
    env = {"MALLOC_ARENA_MAX": "2", **os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "CORPUS_PATH": str(corpus), "RAG_AUGMENT_CACHE": str(tmp / "cache"), **extra_env}
    env.pop("RETRIEVAL_URL", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.5)
        if proc.poll() is not None:
            raise RuntimeError("app.py exited before answering")
    proc.terminate()
    raise RuntimeError("app.py did not answer within 180 s")


def _small_latencies(client: httpx.Client, rng: random.Random, n: int, docs: int) -> list[float]:
    """``n`` small /v2/rerank requests one after another (fresh documents each); their latencies."""
    out = []
    for _ in range(n):
        batch = make_documents(rng, docs)
        started = time.perf_counter()
        client.post("/v2/rerank", json={"query": "which passage is about latency?", "documents": batch}).raise_for_status()
        out.append(time.perf_counter() - started)
    return out


def just_under_budget(client: httpx.Client, rng: random.Random, limit: int) -> list[str]:
    """Documents of ~3,000 words whose request costs just under ``limit`` tokens (a few's cost read off ``usage``)."""
    doc = lambda: " ".join(rng.choice(WORDS) for _ in range(3000)) + f" #{rng.random():.6f}"  # noqa: E731
    sample = [doc() for _ in range(4)]
    answer = client.post("/v1/rerank", json={"query": "q", "documents": sample})
    answer.raise_for_status()
    each = answer.json()["usage"]["total_tokens"] / len(sample)
    return sample + [doc() for _ in range(max(1, int(limit * 0.95 / each)) - len(sample))]


def cost_limit_scenario(url: str, *, small: int = 12, docs: int = 20) -> dict:
    """Small requests' p50 alone, then while one request at the cost limit runs (fair scheduling keeps them moving)."""
    rng = random.Random(5)
    with httpx.Client(base_url=url, timeout=600) as client:
        _small_latencies(client, rng, 3, docs)  # warm-up
        alone = _small_latencies(client, rng, small, docs)
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
        during = _small_latencies(client, rng, small, docs)
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

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = (None, args.url.rstrip("/")) if args.url else start_app(Path(tmp), RERANK_BACKEND="torch")
        pid = args.pid or (proc.pid if proc else None)
        try:
            if args.scenario == "hostile":
                hostile.print_hostile(hostile.hostile_scenario(url, small=args.small, docs=args.docs))
                return 0
            warm = run_load(url, clients=4, seconds=10, docs=args.docs, seed=1)
            result = hostile.soak_scenario(url, pid, seconds=args.seconds, docs=args.docs)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    print(f"({os.cpu_count()} CPUs; warm-up {warm.summary()['requests']} requests)")
    hostile.print_soak(result, args.seconds)
    return 1 if any(status >= 500 for status in result["statuses"]) else 0


if __name__ == "__main__":
    sys.exit(main())
