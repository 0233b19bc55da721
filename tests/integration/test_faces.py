"""Every face of one server (HTTP routes, gradio_client, MCP, Python) goes through the one service:
the same key, the same admission, the same answers to hostile input, the same ranking."""

from __future__ import annotations

import ast
import asyncio
import json
import threading

import httpx
import pandas as pd
import pytest
from gradio_client import Client

import app as app_module
import rerank
from service import assembly
from service.settings import Settings
from tests.support import GatedScorer, serve_in_thread, stop_server

KEY = "faces-key-42"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "What is the future of AI?"
TEXTS = ["Knead the dough and let the bread rise for an hour.",
         "Artificial intelligence will transform medicine and science in the coming decade.",
         "The football match ended in a goalless draw.",
         "Researchers expect future AI systems to reason and plan much better.",
         "Tulips should be planted in autumn."]
TABLE = {"headers": ["url", "text"], "data": [[f"https://e.org/{i}", t] for i, t in enumerate(TEXTS)], "metadata": None}


@pytest.fixture(scope="module")
def held(packaged_scorer):
    gated = GatedScorer(packaged_scorer)
    gated.gate.set()
    return gated


@pytest.fixture(scope="module")
def server(held, local_retriever):
    settings = Settings(api_key=KEY, max_documents=20, max_queue=2)
    url, srv = serve_in_thread(app_module.build_server(settings, held, local_retriever))
    yield url
    stop_server(srv)


async def _mcp(url: str, tool: str, arguments: dict, headers: dict) -> tuple[bool, str]:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx.AsyncClient(headers=headers, timeout=60) as http, \
            streamable_http_client(f"{url}/gradio_api/mcp/", http_client=http) as (read, write, _), \
            ClientSession(read, write) as session:
        await session.initialize()
        result = await session.call_tool(tool, arguments)
        return result.isError, result.content[0].text


def mcp_call(url: str, tool: str, arguments: dict, headers: dict | None = None) -> tuple[bool, str]:
    """(is_error, text) of one MCP tool call over streamable HTTP, as an agent makes it."""
    return asyncio.run(_mcp(url, tool, arguments, headers or {}))


def _order_http(url: str, route: str) -> list[str]:
    if route == "/rerank":
        out = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": TEXTS}, headers=AUTH, timeout=60).json()
        return [TEXTS[r["index"]] for r in out]
    body = {"query": QUERY, "documents": TEXTS if route == "/v2/rerank" else [{"text": t} for t in TEXTS]}
    out = httpx.post(f"{url}{route}", json=body, headers=AUTH, timeout=60).json()
    return [TEXTS[r["index"]] for r in out["results"]]


# --- the key ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v2/rerank", {"query": QUERY, "documents": TEXTS}),
    ("POST", "/v1/rerank", {"query": QUERY, "documents": TEXTS}),
    ("POST", "/rerank", {"query": QUERY, "texts": TEXTS}),
    ("GET", "/info", None),
    ("GET", "/metrics", None),
    ("POST", "/gradio_api/call/rerank", {"data": [QUERY, TABLE, None]}),
    ("GET", "/gradio_api/info", None),
])
def test_http_routes_refuse_without_the_key_and_answer_with_it(server, method, path, body):
    anonymous = httpx.request(method, f"{server}{path}", json=body, timeout=60)
    assert anonymous.status_code == 401 and "Bearer" in anonymous.json()["message"]
    wrong = httpx.request(method, f"{server}{path}", json=body, headers={"Authorization": "Bearer nope"}, timeout=60)
    assert wrong.status_code == 401
    assert httpx.request(method, f"{server}{path}", json=body, headers=AUTH, timeout=60).status_code == 200
    assert httpx.get(f"{server}/health").status_code == 200  # liveness stays open


def test_gradio_client_needs_the_key(server):
    with pytest.raises(Exception, match="401|credentials|login"):
        Client(server, verbose=False).predict(query=QUERY, documents=TABLE, api_name="/rerank")
    client = Client(server, verbose=False, headers=AUTH)
    assert len(client.predict(query=QUERY, documents=TABLE, api_name="/rerank")["data"]) == 5
    assert len(client.predict(query="json parsing", k=3, api_name="/similarity_search")["data"]) == 3
    assert len(client.predict(query="json parsing", k=10, top_n=2, api_name="/retrieve_and_rerank")["data"]) == 2


def test_mcp_needs_the_key(server):
    with pytest.raises(BaseException) as refused:
        mcp_call(server, "rerank", {"query": QUERY, "documents": TABLE})
    assert "401" in repr(refused.value) or "Unauthorized" in repr(refused.value)
    is_error, text = mcp_call(server, "rerank", {"query": QUERY, "documents": TABLE}, AUTH)
    assert not is_error and "Artificial intelligence" in text
    is_error, text = mcp_call(server, "similarity_search", {"query": "json parsing", "k": 2}, AUTH)
    assert not is_error and "docs.python.org" in text


def test_info_shows_no_filesystem_paths(server):
    info = httpx.get(f"{server}/info", headers=AUTH).json()
    assert info["auth"] is True and info["limits"]["max_request_tokens"] > 0
    assert "/tmp" not in json.dumps(info) and "site-packages" not in json.dumps(info)


# --- one ranking ----------------------------------------------------------------------------------------

def test_every_face_ranks_the_same_table_alike(server, packaged_scorer):
    expected = [r.text for r in rerank.rank(QUERY, TEXTS, scorer=packaged_scorer)]
    table = pd.DataFrame(TABLE["data"], columns=TABLE["headers"])
    service = assembly.build(Settings(), scorer=packaged_scorer)
    orders = {"python rerank.rank": expected,
              "python rerank.rerank": rerank.rerank(QUERY, table, scorer=packaged_scorer)["text"].tolist(),
              "service table": service.rank_table(QUERY, table).table["text"].tolist()}
    gradio = Client(server, verbose=False, headers=AUTH).predict(query=QUERY, documents=TABLE, api_name="/rerank")
    orders["gradio_client /rerank"] = [row[1] for row in gradio["data"]]
    is_error, text = mcp_call(server, "rerank", {"query": QUERY, "documents": TABLE}, AUTH)
    orders["MCP rerank"] = [row[1] for row in ast.literal_eval(text)["data"]]
    for route in ("/v2/rerank", "/v1/rerank", "/rerank"):
        orders[f"HTTP {route}"] = _order_http(server, route)
    assert expected[0] != TEXTS[0]  # the ranking reorders, so agreement means something
    for face, order in orders.items():
        assert order == expected, face


def test_min_score_makes_the_same_cut_with_the_same_count_on_every_face(server, packaged_scorer):
    scores = sorted(r.score for r in rerank.rank(QUERY, TEXTS, scorer=packaged_scorer))
    cut = (scores[1] + scores[2]) / 2  # two below, three kept
    kept = [r.text for r in rerank.rank(QUERY, TEXTS, scorer=packaged_scorer) if r.score >= cut]
    python = rerank.rank(QUERY, TEXTS, scorer=packaged_scorer, min_score=cut)
    assert [r.text for r in python] == kept and len(kept) == 3 and python.threshold.dropped == 2
    assert len(rerank.rank(QUERY, TEXTS, scorer=packaged_scorer, min_score=cut, top_n=1)) == 1  # top_n after the cut
    table = pd.DataFrame(TABLE["data"], columns=TABLE["headers"])
    frame = rerank.rerank(QUERY, table, scorer=packaged_scorer, min_score=cut)
    assert frame["text"].tolist() == kept and frame.attrs["below_min_score"] == 2
    got = {}
    for route in ("/v2/rerank", "/v1/rerank"):
        out = httpx.post(f"{server}{route}", json={"query": QUERY, "documents": TEXTS, "min_score": cut, "top_n": 2},
                         headers=AUTH, timeout=60).json()
        got[route] = ([TEXTS[r["index"]] for r in out["results"]], out["meta"]["min_score"])
        assert all(r["relevance_score"] >= cut for r in out["results"])
    tei = httpx.post(f"{server}/rerank", json={"query": QUERY, "texts": TEXTS, "min_score": cut}, headers=AUTH, timeout=60)
    got["TEI"] = ([TEXTS[r["index"]] for r in tei.json()], {"min_score": cut, "dropped": int(tei.headers[
        "X-Rerank-Below-Min-Score"])})
    client = Client(server, verbose=False, headers=AUTH)
    gradio = client.predict(query=QUERY, documents=TABLE, min_score=cut, api_name="/rerank")
    got["gradio_client"] = ([row[1] for row in gradio["data"]], gradio["below_min_score"])
    is_error, text = mcp_call(server, "rerank", {"query": QUERY, "documents": TABLE, "min_score": cut}, AUTH)
    answer = ast.literal_eval(text.replace("null", "None"))
    got["MCP"] = ([row[1] for row in answer["data"]], answer["below_min_score"])
    for face, (texts, threshold) in got.items():
        assert threshold == {"min_score": cut, "dropped": 2}, face
        assert texts == (kept[:2] if face.startswith("/v") else kept), face


def test_min_score_on_retrieve_and_rerank_counts_what_it_dropped(server):
    client = Client(server, verbose=False, headers=AUTH)
    every = client.predict(query="json parsing", k=10, top_n=10, api_name="/retrieve_and_rerank")
    ranks = [row[every["headers"].index("rank")] for row in every["data"]]
    cut = sorted(ranks)[len(ranks) // 2]
    some = client.predict(query="json parsing", k=10, top_n=3, min_score=cut, api_name="/retrieve_and_rerank")
    below = sum(r < cut for r in ranks)
    assert some["below_min_score"] == {"min_score": cut, "dropped": below} and below > 0
    assert len(some["data"]) == min(3, len(ranks) - below)
    assert every["below_min_score"] is None


@pytest.mark.parametrize("bad", ["high", True, float("inf")])
def test_a_min_score_that_is_not_a_finite_number_is_refused_naming_the_field(server, held, bad):
    body = {"query": QUERY, "documents": TEXTS, "min_score": bad}
    answer = httpx.post(f"{server}/v2/rerank", content=json.dumps(body), headers=AUTH | {"Content-Type": "application/json"},
                        timeout=60)
    assert answer.status_code == 422 and "min_score" in answer.json()["message"]
    with pytest.raises(rerank.RerankError, match="min_score must be a finite number"):
        rerank.rank(QUERY, TEXTS, scorer=held, min_score=bad)
    if bad == float("inf"):
        return  # a JSON client cannot send it to Gradio
    with pytest.raises(Exception, match="min_score must be a finite number"):
        Client(server, verbose=False, headers=AUTH).predict(query=QUERY, documents=TABLE, min_score=bad,
                                                            api_name="/rerank")


# --- hostile input --------------------------------------------------------------------------------------

SURROGATE_QUERY = '"q\\ud800"'  # valid JSON: a lone surrogate escape


@pytest.mark.parametrize("route", ["/v2/rerank", "/v1/rerank", "/rerank"])
def test_a_lone_surrogate_is_a_422_naming_the_field_on_http(server, route):
    texts_key = "texts" if route == "/rerank" else "documents"
    for body, field in ((f'{{"query": {SURROGATE_QUERY}, "{texts_key}": ["abc"]}}', "query"),
                        (f'{{"query": "q", "{texts_key}": ["abc", "x\\udfff"]}}', "documents[1]")):
        response = httpx.post(f"{server}{route}", content=body.encode(), timeout=30,
                              headers={**AUTH, "content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.json()["message"].startswith(f"{field} holds a lone surrogate")


def test_hostile_input_on_the_gradio_and_mcp_faces(server):
    body = f'{{"data": [{SURROGATE_QUERY}, {{"headers": ["text"], "data": [["abc"]]}}, null, "", null]}}'
    posted = httpx.post(f"{server}/gradio_api/call/rerank", content=body.encode(), timeout=30,
                        headers={**AUTH, "content-type": "application/json"})
    stream = httpx.get(f"{server}/gradio_api/call/rerank/{posted.json()['event_id']}", headers=AUTH, timeout=30).text
    assert "event: error" in stream and "query holds a lone surrogate (U+D800)" in stream
    raw = (b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"rerank","arguments":'
           b'{"query":"q\\ud800","documents":{"headers":["text"],"data":[["abc"]]}}}}')
    mcp = httpx.post(f"{server}/gradio_api/mcp/", content=raw, timeout=30,
                     headers={**AUTH, "content-type": "application/json", "accept": "application/json, text/event-stream"})
    assert mcp.status_code == 422 and "params.arguments.query holds a lone surrogate" in mcp.json()["message"]
    is_error, text = mcp_call(server, "rerank", {"query": "  ", "documents": TABLE}, AUTH)
    assert is_error and "query is empty" in text
    # NUL is valid text: it is ranked, not refused
    is_error, text = mcp_call(server, "rerank", {"query": "a\x00b", "documents": {"headers": ["text"],
                                                                                    "data": [["x\x00y"], ["z"]]}}, AUTH)
    assert not is_error
    client = Client(server, verbose=False, headers=AUTH)
    with pytest.raises(Exception, match="no 'text' column"):
        client.predict(query="q", documents={"headers": ["body"], "data": [["a"]]}, api_name="/rerank")


# --- admission: one bound for all faces ------------------------------------------------------------------

def test_one_bound_on_work_in_flight_for_every_face(server, held):
    held.gate.clear()
    held.entered.clear()
    holders = [threading.Thread(target=httpx.post, args=(f"{server}/v2/rerank",),
                                kwargs={"json": {"query": f"hold {i}", "documents": ["a", "b"]}, "headers": AUTH,
                                        "timeout": 90}) for i in range(2)]
    try:
        for t in holders:
            t.start()
        assert held.entered.wait(30)
        for _ in range(100):  # both holders admitted (max_queue=2)
            if 'rerank_in_flight 2.0' in httpx.get(f"{server}/metrics", headers=AUTH).text:
                break
            threading.Event().wait(0.05)
        busy = httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": TEXTS}, headers=AUTH)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1" and "RERANK_MAX_QUEUE" in busy.text
        with pytest.raises(Exception, match="busy"):
            Client(server, verbose=False, headers=AUTH).predict(query=QUERY, documents=TABLE, api_name="/rerank")
        is_error, text = mcp_call(server, "rerank", {"query": QUERY, "documents": TABLE}, AUTH)
        assert is_error and "busy" in text
    finally:
        held.gate.set()
        for t in holders:
            t.join(60)
    assert httpx.post(f"{server}/v2/rerank", json={"query": QUERY, "documents": TEXTS}, headers=AUTH).status_code == 200
    metrics = httpx.get(f"{server}/metrics", headers=AUTH).text
    for face in ("http", "gradio", "mcp"):
        assert f'rerank_requests_total{{face="{face}"' in metrics  # every face is counted
        assert f'face="{face}",route="/rerank",status="429"' in metrics or face == "http"
