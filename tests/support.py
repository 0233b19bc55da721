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
_SERVED: dict[int, threading.Thread] = {}  # id(server) -> the thread serving it, for stop_server
MAX_LOOP_LAG = 0.25
MAX_STARVED_LAG = 2.0

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


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_in_thread(app, host: str = "127.0.0.1"):
    """Run an ASGI app with uvicorn on a free loopback port, its event-loop lag watched; returns (base_url, server)."""
    import httpx
    import uvicorn

    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("test server did not start")
    service = getattr(getattr(app, "state", None), "service", None)
    if service is not None:
        LOOP_MONITORS.append(service.metrics.loop_lag)
        httpx.get(f"http://{host}:{port}/health", timeout=10)  # the first request starts the monitor
    _SERVED[id(server)] = thread
    return f"http://{host}:{port}", server


def stop_server(server, timeout: float = 30) -> None:
    """Stop a server :func:`serve_in_thread` started and wait for its thread to end, without waiting for clients that
    keep a stream open: a gradio_client's heartbeat streams would keep it half-stopped, its loop still watched and its
    shutdown still to run, for many tests after its own."""
    thread = _SERVED.pop(id(server), None)
    server.should_exit = server.force_exit = True
    if thread is not None:
        thread.join(timeout)


TOPICS = {  # a made-up code word for each topic: the packaged model cannot know it, fine-tuning can learn it
    "bread": ("plimbo", ["Knead the dough and let the bread rise for an hour.", "Sourdough bread needs a starter of flour "
              "and water.", "Bake the loaf until the crust is golden brown.", "Yeast makes bread dough rise.",
              "A baker shapes the bread before it goes in the oven."]),
    "sailing": ("quendal", ["A sloop is a sailing boat with a single mast.", "Sailors trim the sails to catch the wind.",
                "The yacht sailed across the bay at dawn.", "A keel keeps a sailing boat upright.",
                "The crew raised the mainsail before the race."]),
    "football": ("drevik", ["The striker scored a goal in the last minute.", "Football teams have eleven players on the "
                 "pitch.", "The referee showed a red card to the defender.", "The match ended in a goalless draw.",
                 "The goalkeeper saved a penalty kick."]),
    "volcano": ("morthu", ["Lava flows down the side of the erupting volcano.", "A volcano forms where magma reaches the "
                "surface.", "Volcanic ash can ground flights for days.", "The crater of the volcano smoked for weeks.",
                "Geologists measure gas from the volcano to predict eruptions."]),
    "violin": ("sarnek", ["The violinist tuned the strings before the concert.", "A violin has four strings and a bow.",
               "She practised the violin sonata every morning.", "The luthier carved the violin from spruce.",
               "The orchestra's first violin led the tuning."]),
    "tomato": ("gelvo", ["Tomatoes need full sun and regular watering.", "Pinch the side shoots of tomato plants.",
               "Ripe tomatoes turn red on the vine.", "Tomato seedlings grow well in a greenhouse.",
               "Blight can ruin a tomato crop in wet summers."]),
}
ASKING = ["what do you know about {}", "tell me about {}", "facts on {}", "explain {} to me", "{} basics"]


def build_collection(folder: Path, *, per_topic: int = 4, train_qrels: bool = False) -> Path:
    """A small BEIR-layout collection (corpus, queries, qrels/test.tsv, candidates/bm25_top100.trec): each topic's
    queries name it by its code word, and its five passages are the relevant ones; every passage is a candidate."""
    import gzip
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "candidates").mkdir(exist_ok=True)
    docs = [(f"{topic}-{n}", text) for topic, (_, texts) in TOPICS.items() for n, text in enumerate(texts)]
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as out:
        for doc_id, text in docs:
            out.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    queries, qrels, run = [], [], []
    for t, (topic, (code, _)) in enumerate(TOPICS.items()):
        for n in range(per_topic):
            qid = f"q{t}{n}"
            queries.append({"_id": qid, "text": ASKING[n % len(ASKING)].format(code)})
            qrels.extend(f"{qid}\t{topic}-{k}\t1" for k in range(5))
            run.extend(f"{qid} Q0 {doc_id} {r} {100 - r} bm25" for r, (doc_id, _) in enumerate(docs, start=1))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels) + "\n")
    (folder / "candidates" / "bm25_top100.trec").write_text("\n".join(run) + "\n")
    return folder
