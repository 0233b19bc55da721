"""What the tests share besides fixtures: real servers on loopback, a gated and a counting model, the event-loop guard's
monitors, where the repository and the shared collections are."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from scoring.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]
EVAL_DIR = ROOT.parent / "shared" / "eval"
LOOP_MONITORS: list = []  # the loop-lag monitor of every server the tests started (see conftest's loop_lag_guard)
MAX_LOOP_LAG = 0.25

PASSAGES = pd.DataFrame({
    "url": ["https://e.org/ai", "https://e.org/bread", "https://e.org/ml"],
    "text": ["AI will change the future of work.", "Bread needs yeast.", "Machine learning models learn from data."],
    "distance": [0.2, 0.8, 0.4],
})


def stand_in_space(behaviour: str) -> gr.Blocks:
    """A real Gradio app with the retrieval Space's endpoint; ``behaviour`` (good, slow, wrong-columns) says how it
    answers."""

    def similarity_search(query: str, k: int) -> pd.DataFrame:
        if behaviour == "slow":
            time.sleep(5)
        if behaviour == "wrong-columns":
            return pd.DataFrame({"link": ["x"], "content": ["y"]})
        return PASSAGES.sort_values("distance").head(int(k))

    with gr.Blocks() as demo:
        q = gr.Textbox(label="query")
        k = gr.Number(label="k", value=5, precision=0)
        out = gr.Dataframe()
        gr.Button().click(similarity_search, [q, k], out, api_name="similarity_search")
    return demo


class CountingEmbedder:
    """Wraps an embedder and counts document-embedding calls (to prove an index is reused)."""

    def __init__(self, inner, fingerprint: str | None = None) -> None:
        self.inner = inner
        self.fingerprint = fingerprint or inner.fingerprint
        self.document_texts = 0

    def embed(self, texts, *, query: bool = False, background: bool = False):
        if not query:
            self.document_texts += len(texts)
        return self.inner.embed(texts, query=query, background=background)


class GatedScorer(Scorer):
    """The real model, held at a gate so a test can keep requests in flight (open the gate to let them through)."""

    def __init__(self, base: Scorer) -> None:
        super().__init__(base.info, base)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def score_plan(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(60)
        return super().score_plan(*args, **kwargs)


def serve_in_thread(app, host: str = "127.0.0.1"):
    """Run an ASGI app with uvicorn on a free loopback port, its event-loop lag watched; returns (base_url, server)."""
    import httpx
    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("test server did not start")
    service = getattr(getattr(app, "state", None), "service", None)
    if service is not None:
        LOOP_MONITORS.append(service.metrics.loop_lag)
        httpx.get(f"http://{host}:{port}/health", timeout=10)  # the first request starts the monitor
    return f"http://{host}:{port}", server
