"""retrieval_client against a stand-in retrieval Space speaking the seed's /similarity_search protocol."""

from __future__ import annotations

import time

import pytest

import retrieval_client as rc
from retrieval.retrievers import table_from_payload


def test_similarity_search_against_stand_in_space(spaces):
    table = rc.similarity_search("future of AI", k=2, url=spaces["good"], timeout=20)
    assert list(table.columns) == ["url", "text", "distance"]
    assert table["url"].tolist() == ["https://e.org/ai", "https://e.org/ml"]
    assert table["distance"].is_monotonic_increasing


def test_slow_space_times_out_with_a_clear_error(spaces):
    started = time.monotonic()
    with pytest.raises(rc.RetrievalError, match=r"did not answer within 1 s \(RETRIEVAL_TIMEOUT\)"):
        rc.RemoteRetriever(spaces["slow"], timeout=1).search("q", 2)
    assert time.monotonic() - started < 4.5


def test_wrong_shape_is_named(spaces):
    with pytest.raises(rc.RetrievalError, match=r"without column\(s\) \['url', 'text', 'distance'\]"):
        rc.similarity_search("q", k=1, url=spaces["wrong-columns"], timeout=20)


def test_unreachable_space():
    with pytest.raises(rc.RetrievalError, match="unreachable"):
        rc.similarity_search("q", k=1, url="http://127.0.0.1:9/", timeout=3)


def test_no_url_means_the_local_index(monkeypatch, tmp_path, packaged_scorer):
    with pytest.raises(rc.RetrievalError, match="RETRIEVAL_URL"):
        rc.RemoteRetriever("")
    (tmp_path / "notes.md").write_text("Sourdough bread needs a starter.\n\nA sloop has one mast.")
    monkeypatch.delenv("RETRIEVAL_URL", raising=False)
    monkeypatch.setenv("CORPUS_PATH", str(tmp_path / "notes.md"))
    monkeypatch.setenv("RAG_AUGMENT_CACHE", str(tmp_path / "cache"))
    hits = rc.similarity_search("which boat has a single mast?", k=1)
    assert hits["text"].tolist() == ["A sloop has one mast."] or "sloop" in hits["text"].iloc[0]


@pytest.mark.parametrize(("query", "k", "message"), [("", 5, "query is empty"), ("q", 0, "k must be"),
                                                      ("q", 5000, "k must be"), ("q", "5", "k must be")])
def test_bad_arguments(query, k, message):
    with pytest.raises(rc.RetrievalError, match=message):
        rc.validate_search_args(query, k)


@pytest.mark.parametrize("payload", [None, "text", {"headers": ["url"], "data": "x"},
                                     {"headers": ["url", "text", "distance"], "data": [["u", "t"]]},
                                     {"headers": ["url", "text", "distance"], "data": [["u", "t", "far"]]}])
def test_garbage_payloads(payload):
    with pytest.raises(rc.RetrievalError):
        table_from_payload(payload, source="test Space")
