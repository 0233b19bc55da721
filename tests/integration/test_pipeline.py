"""Retrieve-then-rerank through the app's API, on the local index and on a remote stand-in Space."""

from __future__ import annotations

import pandas as pd
import pytest
from gradio_client import Client

import app as app_module
import retrieval_client as rc
from retrieval.retrievers import Retriever
from service import assembly
from service.settings import Settings
from web import views


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
    service = assembly.build(Settings(), scorer=tiny_scorer, retriever=local_retriever)
    result = service.retrieve_and_rank("How do I extract files from a zip archive?", 20, 5)
    assert len(result.retrieved) == 20 and len(result.reranked) == 5
    assert list(result.reranked.columns) == ["retrieved_position", "url", "text", "distance", "rank", "move"]
    for after, row in enumerate(result.reranked.itertuples(), start=1):
        assert row.move == f"{row.retrieved_position} -> {after}"
        assert result.retrieved.loc[row.retrieved_position - 1, "text"] == row.text
    view = views.moves_view(result.reranked)
    assert view["score"].tolist() == result.reranked["rank"].round(3).tolist()
    assert all(m == views.movement(int(b), a) for a, (b, m) in enumerate(zip(view["was"], view["move"], strict=True), start=1))


class DuplicatingRetriever(Retriever):
    """A backend that returns every passage twice, as retrieval Spaces sometimes do."""

    description = "duplicating"

    def __init__(self, inner):
        self.inner = inner

    def search(self, query, k=5):
        hits = self.inner.search(query, k)
        return pd.concat([hits, hits]).reset_index(drop=True)


def test_duplicates_from_retrieval_are_dropped(packaged_scorer, local_retriever):
    service = assembly.build(Settings(), scorer=packaged_scorer, retriever=DuplicatingRetriever(local_retriever))
    result = service.retrieve_and_rank("zip archive", 5, 50)
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


def test_modes_through_gradio_client_and_an_unknown_mode_names_the_field(local_app):
    client = Client(local_app, verbose=False)
    seen = {}
    for mode in ("hybrid", "dense", "lexical"):
        hits = _frame(client.predict(query="extract members of a zip archive", k=5, mode=mode,
                                     api_name="/similarity_search"))
        assert list(hits.columns) == ["url", "text", "distance"] and hits["distance"].is_monotonic_increasing
        seen[mode] = hits["url"].tolist()
    assert seen["dense"] != seen["lexical"]  # the two halves really differ
    out = _frame(client.predict(query="extract members of a zip archive", k=20, top_n=3, mode="lexical",
                                api_name="/retrieve_and_rerank"))
    assert len(out) == 3
    with pytest.raises(Exception, match="mode must be one of hybrid, dense, lexical, got 'fuzzy'"):
        client.predict(query="zip", k=3, mode="fuzzy", api_name="/similarity_search")


def test_remote_space_takes_no_mode(spaces):
    with pytest.raises(rc.RetrievalError, match="mode='dense' is not available: the retrieval Space"):
        rc.RemoteRetriever(spaces["good"], timeout=20).search("future of AI", 2, "dense")


def test_pipeline_weighs_the_model_by_what_the_first_stage_holds(packaged_scorer, local_retriever):
    import numpy as np

    from scoring.ranking import fuse

    service = assembly.build(Settings(), scorer=packaged_scorer, retriever=local_retriever)
    for mode, weight in (("hybrid", 0.3), (None, 0.3), ("lexical", 0.7), ("dense", 0.7)):
        ranking = service.retrieve_and_rank("extract a zip archive", 20, None, mode=mode).rerank.ranking
        model = np.array([r.model_score for r in ranking])
        first = np.array([ranking.first_stage[r.index] for r in ranking])
        np.testing.assert_allclose([r.score for r in ranking], fuse(model, first, method="interpolate", weight=weight))
    remote = assembly.build(Settings(), scorer=packaged_scorer, retriever=DuplicatingRetriever(local_retriever))
    ranking = remote.retrieve_and_rank("extract a zip archive", 10, None).rerank.ranking  # first stage unknown: 0.7
    first = np.array([ranking.first_stage[r.index] for r in ranking])
    np.testing.assert_allclose([r.score for r in ranking], fuse(np.array([r.model_score for r in ranking]), first,
                                                                method="interpolate", weight=0.7))


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


def test_an_upload_is_indexed_privately_within_limits(tmp_path, packaged_scorer, local_retriever):
    from service import InvalidInput, TooLarge

    cache = tmp_path / "cache"
    settings = Settings(cache_dir=cache, max_upload_bytes=2_000, max_upload_passages=3)
    service = assembly.build(settings, scorer=packaged_scorer, retriever=local_retriever)
    upload = tmp_path / "faq.csv"
    upload.write_text("url,text\nhttps://e.org/returns,Items can be returned within 30 days.\n"
                      "https://e.org/shipping,Shipping takes three to five working days.\n")
    private = service.index_upload(str(upload))
    assert private.passages == 2 and "faq.csv" in private.description
    hits = service.search("how long does delivery take?", 1, retriever=private)
    assert hits["url"].tolist() == ["https://e.org/shipping"]
    shared = service.search("how long does delivery take?", 1)  # everyone else keeps the shared index
    assert "docs.python.org" in shared["url"].iloc[0]
    assert not cache.exists() or not any(cache.iterdir())  # in memory: nothing is written to the cache
    private.close()
    import duckdb

    with pytest.raises(duckdb.ConnectionException):  # closed: its memory is released
        private.search("anything", 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("title\nno text column here\n")
    with pytest.raises(InvalidInput, match="has no 'text' column"):
        service.index_upload(str(bad))
    big = tmp_path / "big.csv"
    big.write_text("text\n" + "word " * 1000)
    with pytest.raises(TooLarge, match="the limit is 2,000 \\(RERANK_MAX_UPLOAD_BYTES\\)"):
        service.index_upload(str(big))
    many = tmp_path / "many.csv"
    many.write_text("text\n" + "\n".join(f"passage {i}" for i in range(5)))
    with pytest.raises(TooLarge, match="5 passages; the limit is 3 \\(RERANK_MAX_UPLOAD_PASSAGES\\)"):
        service.index_upload(str(many))
