"""The rerank HTTP APIs, called by real clients (the cohere SDK, httpx on the TEI schema) over loopback."""

from __future__ import annotations

import re
import threading

import cohere
import httpx
import pytest

import app as app_module
from service.settings import Settings
from tests.support import GatedScorer, serve_in_thread, stop_server

QUERY = "What is the future of AI?"
DOCS = ["Knead the dough and let the bread rise.",
        "Artificial intelligence will transform medicine and science in the coming decade.",
        "The football match ended in a draw.",
        "Researchers expect future AI systems to reason and plan much better."]


@pytest.fixture(scope="module")
def server(packaged_scorer, tiny_scorer):
    settings = Settings(max_documents=50, max_body_bytes=200_000)
    url, srv = serve_in_thread(app_module.build_server(settings, packaged_scorer, None, [tiny_scorer]))
    yield url
    stop_server(srv)


@pytest.fixture(scope="module")
def locked_server(packaged_scorer):
    settings = Settings(max_documents=5, max_body_bytes=5_000, max_queue=1, api_key="s3cret-key")
    gated = GatedScorer(packaged_scorer)
    gated.gate.set()
    url, srv = serve_in_thread(app_module.build_server(settings, gated, None, mcp_server=False))
    yield url, gated
    stop_server(srv)


def test_cohere_sdk_v2(server, packaged_scorer):
    client = cohere.ClientV2(api_key="anything", base_url=server)
    response = client.rerank(model="rerank-v3.5", query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in response.results][:2] in ([1, 3], [3, 1])
    assert len(response.results) == 3
    expected = packaged_scorer.score(QUERY, DOCS, long_documents="chunk")
    for r in response.results:
        assert r.relevance_score == pytest.approx(float(expected[r.index]), abs=1e-5)
        assert 0 <= r.relevance_score <= 1
    assert response.model == packaged_scorer.info.name


def test_cohere_sdk_v1_client(server):
    client = cohere.Client(api_key="anything", base_url=server)
    response = client.rerank(model="rerank-english-v3.0", query=QUERY, documents=DOCS, top_n=10, return_documents=True)
    assert len(response.results) == 4  # top_n clamped to the list
    assert {r.index for r in response.results} == {0, 1, 2, 3}
    assert all(r.document.text == DOCS[r.index] for r in response.results)


def test_duplicates_are_scored_once_and_reported(server):
    out = httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": [DOCS[0], DOCS[1], DOCS[0]]},
                     timeout=30).json()
    assert out["meta"]["duplicates"] == [{"index": 2, "same_as": 0}]
    scores = {r["index"]: r["relevance_score"] for r in out["results"]}
    assert scores[2] == scores[0] and len(scores) == 3  # every index still comes back, as Cohere's does


def test_v1_omits_document_unless_asked_and_ranks_object_fields(server):
    raw = httpx.post(f"{server}/v1/rerank", json={"query": QUERY, "documents": DOCS}, timeout=30).json()
    assert all("document" not in r for r in raw["results"])
    objects = [{"title": "Baking", "body": DOCS[0]}, {"title": "AI", "body": DOCS[1]}]
    out = httpx.post(f"{server}/v1/rerank", json={"query": QUERY, "documents": objects, "rank_fields": ["body"],
                                                  "return_documents": True}, timeout=30).json()
    assert out["results"][0]["index"] == 1 and out["results"][0]["document"] == objects[1]
    jina = httpx.post(f"{server}/v1/rerank", json={"model": "jina-reranker-v2", "query": QUERY,
                                                   "documents": [{"text": d} for d in DOCS], "top_n": 2}, timeout=30)
    assert jina.status_code == 200 and [r["index"] for r in jina.json()["results"]][0] in (1, 3)
    missing = httpx.post(f"{server}/v1/rerank", json={"query": QUERY, "documents": objects, "rank_fields": ["summary"]},
                         timeout=30)
    assert missing.status_code == 422 and "documents.0 has no field 'summary'" in missing.json()["message"]


def test_tei_schema(server, packaged_scorer):
    out = httpx.post(f"{server}/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True}, timeout=30).json()
    assert isinstance(out, list) and len(out) == 4
    assert out[0]["index"] in (1, 3) and out[0]["text"] == DOCS[out[0]["index"]]
    assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
    raw = httpx.post(f"{server}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}, timeout=30).json()
    cosine = packaged_scorer.score(QUERY, DOCS, raw=True)
    assert all(o["score"] == pytest.approx(float(cosine[o["index"]]), abs=1e-5) for o in raw)
    assert all("text" not in o for o in raw)


def test_model_picks_among_configured_and_says_which(server, tiny_scorer):
    name = tiny_scorer.info.name  # a local folder is named by its folder, never by its filesystem path
    assert "/" not in name
    out = httpx.post(f"{server}/v2/rerank", json={"model": name, "query": QUERY, "documents": DOCS}, timeout=30)
    assert out.json()["model"] == name and out.headers["x-rerank-model"] == name
    by_path = httpx.post(f"{server}/v2/rerank", json={"model": tiny_scorer.info.requested, "query": QUERY,
                                                      "documents": DOCS}, timeout=30)
    assert by_path.json()["model"] == name
    expected = tiny_scorer.score(QUERY, DOCS, long_documents="chunk")
    assert out.json()["results"][0]["relevance_score"] == pytest.approx(float(expected.max()), abs=1e-5)
    other = httpx.post(f"{server}/v2/rerank", json={"model": "/etc/passwd", "query": QUERY, "documents": DOCS}, timeout=30)
    assert other.status_code == 200 and other.json()["model"] != name  # never loads what a request names


def test_long_documents_are_scored_by_their_best_chunk(server, packaged_scorer):
    filler = " ".join(f"The committee reviewed item {i} of the budget." for i in range(150))
    needle = "Artificial intelligence will transform medicine and science in the coming decade."
    docs = [filler + " " + needle, DOCS[0]]
    v2 = httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": docs}, timeout=60).json()
    best = {r["index"]: r["relevance_score"] for r in v2["results"]}
    assert best[0] > best[1]
    assert best[0] == pytest.approx(float(packaged_scorer.score(QUERY, docs[:1], long_documents="chunk")[0]), abs=1e-5)
    cut = httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": docs, "max_tokens_per_doc": 100},
                     timeout=60).json()
    assert {r["index"]: r["relevance_score"] for r in cut["results"]}[0] < best[0] - 0.05
    truncated = httpx.post(f"{server}/rerank", json={"query": QUERY, "texts": docs, "truncate": True}, timeout=60).json()
    assert {o["index"]: o["score"] for o in truncated}[0] < best[0] - 0.05


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/v2/rerank", {"documents": ["a"]}, "query: Field required"),
    ("/v2/rerank", {"query": "q", "documents": "not a list"}, "documents: Input should be a valid list"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, "top_n: Input should be greater than or equal to 1"),
    ("/rerank", {"query": "q"}, "texts: Field required"),
    ("/v2/rerank", {"query": "  ", "documents": ["a"]}, "query is empty"),
    ("/v2/rerank", {"query": "q", "documents": []}, "documents is empty"),
])
def test_schema_errors_are_422_naming_the_field(server, route, body, field):
    response = httpx.post(f"{server}{route}", json=body, timeout=30)
    assert response.status_code == 422 and field in response.json()["message"]


def test_health_info_metrics_docs(server):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["ready"] is True and health["in_flight"] == 0
    assert health["backend"]["backend"] and "how" in health["backend"]
    info = httpx.get(f"{server}/info").json()
    assert info["model"]["mode"] == "embedding" and info["limits"]["max_documents"] == 50 and info["version"]
    assert "/tmp" not in str(info) and "site-packages" not in str(info)  # no filesystem paths
    assert "embedding similarity" in info["scoring"]
    assert info["backend"]["backend"] == "torch" and info["backend"]["how"] and info["workers"] >= 1
    assert info["backend"]["engine"] == "padded batches"
    httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": DOCS}, timeout=30)
    httpx.post(f"{server}/v2/rerank", json={"query": "", "documents": DOCS}, timeout=30)
    text = httpx.get(f"{server}/metrics").text
    assert 'rerank_requests_total{face="http",route="/v2/rerank",status="200"}' in text
    assert 'rerank_errors_total{face="http",route="/v2/rerank",status="422"}' in text
    assert 'rerank_documents_scored_total{face="http",route="/v2/rerank"}' in text
    assert "rerank_batches_total{model=" in text and "rerank_request_tokens_bucket" in text
    assert "rerank_request_duration_seconds_bucket" in text
    assert "rerank_cache_hits_total{model=" in text and "rerank_cache_entries{model=" in text
    held = re.search(r"rerank_token_cache_bytes\{model=[^}]*\} (\S+)", text)
    assert held and float(held.group(1)) > 0 and "rerank_token_cache_hits_total{model=" in text
    cached = re.search(r"rerank_cache_bytes\{model=[^}]*\} (\S+)", text)
    assert cached and float(cached.group(1)) > 0
    docs = httpx.get(f"{server}/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # served offline
    script = re.search(r'src="([^"]*swagger-ui-bundle\.js)"', docs.text).group(1)
    assert httpx.get(f"{server}{script}").status_code == 200 and len(httpx.get(f"{server}{script}").content) > 100_000
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/health", "/info", "/metrics"} <= set(schema["paths"])


def test_gradio_app_is_mounted_beside_the_api(server):
    from gradio_client import Client

    out = Client(server, verbose=False).predict(query=QUERY, documents={"headers": ["text"], "data": [[d] for d in DOCS],
                                                                       "metadata": None}, api_name="/rerank")
    assert len(out["data"]) == 4


def test_mcp_schema_lists_rerank(server):
    tools = httpx.get(f"{server}/gradio_api/mcp/schema", timeout=30).json()
    names = {t["name"] for t in tools}
    assert "rerank" in names and "retrieve_and_rerank" in names


def test_auth_limits_and_queue(locked_server):
    url, gated = locked_server
    body = {"query": QUERY, "documents": DOCS}
    assert httpx.post(f"{url}/v2/rerank", json=body).status_code == 401
    wrong = httpx.post(f"{url}/v2/rerank", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "s3cret" not in wrong.text
    assert httpx.get(f"{url}/health").status_code == 200  # health stays open
    client = cohere.ClientV2(api_key="s3cret-key", base_url=url)
    assert len(client.rerank(model="x", query=QUERY, documents=DOCS).results) == 4
    auth = {"Authorization": "Bearer s3cret-key"}
    too_many = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS * 2}, headers=auth)
    assert too_many.status_code == 413 and "limit is 5 (RERANK_MAX_DOCUMENTS)" in too_many.json()["message"]
    too_big = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": ["x" * 6000]}, headers=auth)
    assert too_big.status_code == 413 and "RERANK_MAX_BODY_BYTES" in too_big.json()["message"]

    def chunks():
        yield b'{"query": "q", "texts": ["' + b"y" * 6000 + b'"]}'

    streamed = httpx.post(f"{url}/rerank", content=chunks(), headers={**auth, "content-type": "application/json"})
    assert streamed.status_code == 413
    big_table = {"data": ["q", {"headers": ["text"], "data": [["z" * 6000]], "metadata": None}]}
    assert httpx.post(f"{url}/gradio_api/call/rerank", json=big_table).status_code == 401  # the Gradio face is closed too
    gradio_call = httpx.post(f"{url}/gradio_api/call/rerank", json=big_table, headers=auth)
    assert gradio_call.status_code == 413 and "RERANK_MAX_BODY_BYTES" in gradio_call.json()["message"]

    gated.gate.clear()
    gated.entered.clear()
    holder = threading.Thread(target=lambda: httpx.post(f"{url}/v2/rerank", json=body, headers=auth, timeout=60))
    holder.start()
    assert gated.entered.wait(30)
    busy = httpx.post(f"{url}/v2/rerank", json=body, headers=auth)
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    gated.gate.set()
    holder.join(30)
    assert httpx.post(f"{url}/v2/rerank", json=body, headers=auth).status_code == 200
