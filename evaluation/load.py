"""Load on loopback for tests and benchmarks: fresh documents, one request on any face with every row checked, N
clients for T seconds, and ``python app.py`` started on a free port. Loopback only; every loop is bounded."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose app.py is started
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


def small_latencies(client: httpx.Client, rng: random.Random, n: int, docs: int) -> list[float]:
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
    from gradio_client import Client  # lazy: gradio_client loads only on this path

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


def free_port() -> int:
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
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
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


