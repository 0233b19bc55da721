"""Shared fixtures: real models (loaded once per session), a live app, a stand-in retrieval Space."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import rerank as core  # noqa: E402

EVAL_DIR = ROOT.parent / "shared" / "eval"


def build_tiny_cross_encoder(target: Path, *, seed: int = 0) -> Path:
    """Save a small BERT cross-encoder (one-logit head) with the packaged model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(core.packaged_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                        num_labels=1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(target))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def packaged_scorer() -> core.Scorer:
    """The packaged all-MiniLM-L6-v2, the offline default, in embedding mode."""
    return core.packaged_scorer()


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory) -> Path:
    """A freshly built tiny cross-encoder checkpoint in a temp folder."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="session")
def tiny_scorer(tiny_cross_encoder_dir) -> core.Scorer:
    """The tiny cross-encoder loaded through the same path as a hub model."""
    return core.get_scorer(str(tiny_cross_encoder_dir), allow_fallback=False)


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """The shared IR collections, or a skip saying where they are expected."""
    if not EVAL_DIR.is_dir():
        pytest.skip(f"public IR collections not found at {EVAL_DIR} (a user's clone has no ../shared/eval)")
    return EVAL_DIR


PASSAGES = pd.DataFrame({
    "url": ["https://e.org/ai", "https://e.org/bread", "https://e.org/ml"],
    "text": ["AI will change the future of work.", "Bread needs yeast.", "Machine learning models learn from data."],
    "distance": [0.2, 0.8, 0.4],
})


def _space(behaviour: str) -> gr.Blocks:
    """A real Gradio app with the retrieval Space's endpoint; ``behaviour`` picks how it answers."""

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


@pytest.fixture(scope="session")
def spaces():
    """Stand-in retrieval Spaces on loopback: good, slow and wrong-columns."""
    urls, demos = {}, []
    for behaviour in ["good", "slow", "wrong-columns"]:
        demo = _space(behaviour)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
        urls[behaviour] = url
        demos.append(demo)
    yield urls
    for demo in demos:
        demo.close()


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


@pytest.fixture(scope="session")
def small_corpus():
    """A few stdlib modules' docs: the built-in corpus in miniature."""
    import corpus

    return corpus.builtin_passages(modules={"json", "tempfile", "threading", "zipfile"})


@pytest.fixture(scope="session")
def local_retriever(packaged_scorer, small_corpus):
    """The small corpus indexed in memory with the packaged model."""
    import retrieval_client as rc
    from local_index import LocalIndex

    return rc.LocalRetriever(LocalIndex.open(small_corpus, packaged_scorer, path=None, name="small corpus"))


class GatedScorer(core.Scorer):
    """The real model, held at a gate so a test can keep requests in flight (open the gate to let them through)."""

    def __init__(self, base: core.Scorer) -> None:
        import threading

        super().__init__(base.info, base)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def score_plan(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(60)
        return super().score_plan(*args, **kwargs)


LOOP_MONITORS: list = []  # the loop-lag monitor of every server the tests started (see loop_lag_guard)
MAX_LOOP_LAG = 0.25


@pytest.fixture(autouse=True)
def loop_lag_guard(request):
    """Fails the test during which any served event loop was blocked for more than 250 ms (every route waits then)."""
    marks = {id(m): len(m.stalls) for m in LOOP_MONITORS}
    yield
    stalls = [lag for m in LOOP_MONITORS for _, lag in m.stalls[marks.get(id(m), 0):] if lag > MAX_LOOP_LAG]
    if stalls:
        pytest.fail(f"the server's event loop was blocked for {max(stalls) * 1000:.0f} ms during {request.node.name} "
                    f"({len(stalls)} wake-up(s) over {MAX_LOOP_LAG * 1000:.0f} ms)", pytrace=False)


def pytest_terminal_summary(terminalreporter) -> None:
    """The worst event-loop lag any served app saw over the run (the guard fails a test past 250 ms)."""
    if LOOP_MONITORS:
        worst = max(m.worst for m in LOOP_MONITORS)
        terminalreporter.write_line(f"event-loop lag: worst {worst * 1000:.0f} ms over {len(LOOP_MONITORS)} served apps "
                                    f"(limit {MAX_LOOP_LAG * 1000:.0f} ms)")


def serve_in_thread(app, host: str = "127.0.0.1"):
    """Run an ASGI app with uvicorn on a free loopback port, its event-loop lag watched; returns (base_url, server)."""
    import socket
    import threading

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
        import httpx

        httpx.get(f"http://{host}:{port}/health", timeout=10)  # the first request starts the monitor
    return f"http://{host}:{port}", server


def _hypothesis_profile() -> None:
    """Generated inputs are the same on every run, so CI is repeatable; HYPOTHESIS_PROFILE=explore varies them."""
    from hypothesis import settings

    settings.register_profile("repeatable", derandomize=True, database=None)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


_hypothesis_profile()
