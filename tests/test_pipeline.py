"""Retrieve-then-rerank through the app's API, on the local index and on a remote stand-in Space."""

from __future__ import annotations

import pandas as pd
import pytest
from gradio_client import Client

import app as app_module
import pipeline
import retrieval_client as rc
from config import Settings
from local_index import LocalIndex


@pytest.fixture(scope="module")
def local_retriever(packaged_scorer, small_corpus):
    return rc.LocalRetriever(LocalIndex.open(small_corpus, packaged_scorer, path=None, name="small corpus"))


def _launch(demo):
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    return url


@pytest.fixture(scope="module")
def local_app(packaged_scorer, local_retriever):
    demo = app_module.build_demo(Settings(), packaged_scorer, local_retriever)
    yield _launch(demo)
    demo.close()


def _frame(payload) -> pd.DataFrame:
    return pd.DataFrame(payload["data"], columns=payload["headers"])


def test_pipeline_function_moves_and_dedups(packaged_scorer, tiny_scorer, local_retriever):
    result = pipeline.retrieve_and_rerank("How do I extract files from a zip archive?", retriever=local_retriever,
                                          scorer=tiny_scorer, k=20, top_n=5)
    assert len(result.retrieved) == 20 and len(result.reranked) == 5
    assert list(result.reranked.columns) == ["retrieved_position", "url", "text", "distance", "rank", "move"]
    for after, row in enumerate(result.reranked.itertuples(), start=1):
        assert row.move == f"{row.retrieved_position} -> {after}"
        assert result.retrieved.loc[row.retrieved_position - 1, "text"] == row.text
    chart = pipeline.score_chart(result.reranked)
    assert chart["score"].tolist() == result.reranked["rank"].tolist()


class DuplicatingRetriever:
    """A backend that returns every passage twice, as retrieval Spaces sometimes do."""

    description = "duplicating"

    def __init__(self, inner):
        self.inner = inner

    def search(self, query, k=5):
        hits = self.inner.search(query, k)
        return pd.concat([hits, hits]).reset_index(drop=True)


def test_duplicates_from_retrieval_are_dropped(packaged_scorer, local_retriever):
    result = pipeline.retrieve_and_rerank("zip archive", retriever=DuplicatingRetriever(local_retriever),
                                          scorer=packaged_scorer, k=5, top_n=50)
    assert len(result.retrieved) == 10 and len(result.reranked) == 5
    assert result.rerank.duplicates == [5, 6, 7, 8, 9]


def test_retrieve_and_rerank_through_gradio_client(local_app):
    client = Client(local_app, verbose=False)
    out = _frame(client.predict(query="How do I extract files from a zip archive?", k=30, top_n=5,
                                api_name="/retrieve_and_rerank"))
    assert len(out) == 5 and out["rank"].is_monotonic_decreasing
    assert "zipfile.html" in out["url"].iloc[0]
    hits = _frame(client.predict(query="temporary directory", k=4, api_name="/similarity_search"))
    assert list(hits.columns) == ["url", "text", "distance"] and len(hits) == 4
    assert "tempfile.html" in hits["url"].iloc[0]


def test_app_stands_in_for_the_retrieval_space(local_app):
    hits = rc.RemoteRetriever(local_app, timeout=30).search("temporary directory", 3)
    assert len(hits) == 3 and hits["distance"].is_monotonic_increasing


def test_remote_backend_through_the_app(packaged_scorer, spaces):
    demo = app_module.build_demo(Settings(), packaged_scorer, rc.RemoteRetriever(spaces["good"], timeout=20))
    url = _launch(demo)
    try:
        out = _frame(Client(url, verbose=False).predict(query="future of AI", k=3, top_n=2,
                                                        api_name="/retrieve_and_rerank"))
        assert out["url"].tolist()[0] == "https://e.org/ai" and len(out) == 2
    finally:
        demo.close()


@pytest.mark.parametrize(("backend", "message"), [("wrong-columns", "without column(s)"),
                                                   ("unreachable", "unreachable")])
def test_backend_errors_are_clear_and_the_app_keeps_serving(packaged_scorer, spaces, backend, message):
    url = spaces.get(backend, "http://127.0.0.1:9/")
    demo = app_module.build_demo(Settings(), packaged_scorer, rc.RemoteRetriever(url, timeout=5))
    app_url = _launch(demo)
    try:
        client = Client(app_url, verbose=False)
        with pytest.raises(Exception) as err:
            client.predict(query="future of AI", k=3, top_n=2, api_name="/retrieve_and_rerank")
        assert message in str(err.value)
        ok = client.predict(query="q", documents={"headers": ["text"], "data": [["a"]], "metadata": None},
                            api_name="/rerank")
        assert len(ok["data"]) == 1
    finally:
        demo.close()


def test_building_index_is_reported_not_hung(packaged_scorer):
    import threading

    gate = threading.Event()

    def slow_build(progress):
        progress(3, 10)
        gate.wait(30)
        raise RuntimeError("stopped")

    pending = rc.BackgroundRetriever(slow_build, name="local index")
    try:
        with pytest.raises(rc.RetrievalError, match=r"still being built \(3/10 passages\)"):
            pending.wait(timeout=0.2)
    finally:
        gate.set()


def test_ui_upload_indexes_a_file_and_replaces_the_backend(tmp_path, packaged_scorer, local_retriever):
    services = app_module.Services(Settings(cache_dir=tmp_path / "cache"), packaged_scorer, local_retriever)
    _, _, _, index_upload = app_module.make_retrieval_handlers(services)
    upload = tmp_path / "faq.csv"
    upload.write_text("url,text\nhttps://e.org/returns,Items can be returned within 30 days.\n"
                      "https://e.org/shipping,Shipping takes three to five working days.\n")
    line = index_upload(str(upload))
    assert "faq.csv: 2 passages" in line
    hits = services.retriever.search("how long does delivery take?", 1)
    assert hits["url"].tolist() == ["https://e.org/shipping"]
    import gradio as gr

    bad = tmp_path / "bad.csv"
    bad.write_text("title\nno text column here\n")
    with pytest.raises(gr.Error, match="has no 'text' column"):
        index_upload(str(bad))
    with pytest.raises(gr.Error, match="choose a JSONL"):
        index_upload(None)
