"""The service layer itself: the cost budget, the logs, the metrics by face, start-up cleanup."""

from __future__ import annotations

import logging
import os

import pytest

from retrieval.retrievers import Retriever
from service import InvalidInput, TooLarge, assembly
from service.settings import Settings

LONG = "The committee reviewed the quarterly budget and approved the minutes. " * 400  # ~5,600 tokens


def test_the_cost_budget_names_the_limit_and_the_value(packaged_scorer):
    service = assembly.build(Settings(max_request_tokens=4_000), scorer=packaged_scorer)
    with pytest.raises(TooLarge) as err:
        service.rank("budget", [LONG, "short"])
    message = str(err.value)
    assert "the limit is 4,000 (RERANK_MAX_REQUEST_TOKENS)" in message and "tokens" in message
    needed = int(message.split("needs ")[1].removeprefix("at least ").split(" tokens")[0].replace(",", ""))
    assert needed > 4_000
    # the same text cut to fit is answered; truncating counts one window only
    assert len(service.rank("budget", [LONG, "short"], long_documents="truncate")) == 2
    assert len(service.rank("budget", [LONG[:2000], "short"])) == 2


def test_a_user_error_is_one_log_line_and_a_server_error_keeps_its_traceback(packaged_scorer, caplog):
    service = assembly.build(Settings(), scorer=packaged_scorer)
    caplog.set_level(logging.INFO, logger="rag_augment.service")
    with pytest.raises(InvalidInput):
        service.rank("   ", ["a"], face="http", route="/v2/rerank")
    records = [r for r in caplog.records if r.name == "rag_augment.service"]
    assert len(records) == 1 and records[0].exc_info is None
    assert "http /v2/rerank request" in records[0].getMessage() and "422 query is empty" in records[0].getMessage()
    caplog.clear()

    class Broken(Retriever):
        def search(self, query, k):
            raise ZeroDivisionError("a bug")

    with pytest.raises(Exception, match="internal error while serving request"):
        service.search("q", 3, retriever=Broken(), face="gradio", route="/similarity_search")
    records = [r for r in caplog.records if r.name == "rag_augment.service"]
    assert len(records) == 1 and records[0].exc_info and records[0].exc_info[0] is ZeroDivisionError
    text = service.metrics.text()
    assert 'rerank_requests_total{face="http",route="/v2/rerank",status="422"} 1.0' in text
    assert 'rerank_requests_total{face="gradio",route="/similarity_search",status="500"} 1.0' in text


def test_start_up_removes_only_the_temporary_files_of_ended_processes(tmp_path):
    import subprocess
    import sys

    from retrieval.index import remove_stale_builds
    from scoring.engines.onnx_engines import remove_stale_exports

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    mine = os.getpid()
    stale = [tmp_path / f"index-builtin.duckdb.{dead}.tmp", tmp_path / f"index-builtin.duckdb.{dead}.tmp.wal",
             tmp_path / "backends" / "abc" / f"model.{dead}.partial.onnx"]
    live = [tmp_path / f"index-builtin.duckdb.{mine}.tmp", tmp_path / "backends" / "abc" / f"model-int8.{mine}.partial.onnx",
            tmp_path / "index-builtin.duckdb", tmp_path / "backends" / "abc" / "model.onnx"]
    for path in stale + live:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    removed = set(remove_stale_builds(tmp_path)) | set(remove_stale_exports(tmp_path))
    assert removed == set(stale)
    assert all(p.exists() for p in live) and not any(p.exists() for p in stale)


def test_a_failed_index_build_leaves_nothing_behind(tmp_path, packaged_scorer):
    from retrieval.corpus import Passage
    from retrieval.index import LocalIndex

    class Failing:
        fingerprint = packaged_scorer.fingerprint

        def embed(self, texts, *, query=False, background=False):
            raise RuntimeError("embedding failed")

    with pytest.raises(RuntimeError):
        LocalIndex.open([Passage("u", "some text")], Failing(), path=tmp_path / "index-x.duckdb", name="x")
    assert list(tmp_path.iterdir()) == []


def test_the_tokens_per_document_setting_cuts_every_face_unless_a_request_says_otherwise(tiny_scorer):
    texts = [LONG[:3000], LONG[:1500] + " tulips", "short"]
    full = assembly.build(Settings(), scorer=tiny_scorer).rank("budget", texts, long_documents="truncate")
    assert Settings.from_env({"RERANK_MAX_TOKENS_PER_DOC": "64"}).max_tokens_per_doc == 64
    with pytest.raises(ValueError, match="RERANK_MAX_TOKENS_PER_DOC must be >= 16"):
        Settings.from_env({"RERANK_MAX_TOKENS_PER_DOC": "8"})
    service = assembly.build(Settings(max_tokens_per_doc=64), scorer=tiny_scorer)
    cut = service.rank("budget", texts, long_documents="truncate")
    assert cut.cost < full.cost and cut.cost <= 3 * (64 + 8)  # each document's first 64 tokens, query and specials
    own = service.rank("budget", texts, long_documents="truncate", max_tokens_per_doc=200)
    assert cut.cost < own.cost < full.cost  # a request's own cut wins over the service's default
    assert sorted(r.index for r in cut) == [0, 1, 2]  # nothing is lost, only read shorter
