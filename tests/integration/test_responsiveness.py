"""One visitor never stalls the others: nothing blocks the event loop, refusing costs in proportion to the limit,
a large request plans in turns, and a flooding client gets 429 while another client is served."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest
from gradio_client import Client
from prometheus_client import CollectorRegistry

import app as app_module
import retrieval_client as rc
from service import assembly
from service.loop_lag import LoopLagMonitor
from service.settings import Settings
from tests.support import GatedScorer, serve_in_thread, stop_server
from web.handlers import Handlers

QUERY = "How do I read a file line by line?"


@pytest.fixture()
def tokenized(monkeypatch, packaged_scorer):
    """Counts the characters the packaged model's tokenizer is given (the work a request's planning does)."""
    counted = {"chars": 0}
    pool = packaged_scorer.pool
    encode = pool.encode

    def counting(texts, **kwargs):
        counted["chars"] += sum(len(t) for t in texts)
        return encode(texts, **kwargs)

    monkeypatch.setattr(pool, "encode", counting)
    return counted


def test_waiting_for_the_index_is_awaited_not_blocking_the_loop(packaged_scorer, local_retriever):
    gate = threading.Event()

    def build(progress):
        progress(1, 2)
        gate.wait(30)
        return local_retriever

    building = rc.BackgroundRetriever(build, name="test index")
    service = assembly.build(Settings(), scorer=packaged_scorer, retriever=building)
    handlers = Handlers(service)

    async def click_while_building() -> tuple:
        monitor = LoopLagMonitor(CollectorRegistry(), interval=0.02)
        monitor.start()
        clicked = asyncio.create_task(handlers.pipeline_ui("temporary directory", 5, 2, None, None))
        await asyncio.sleep(1.0)  # the click waits for the index meanwhile
        assert not clicked.done()
        gate.set()
        out = await asyncio.wait_for(clicked, 60)
        await monitor.stop()
        return out, monitor.worst

    (moves, _, summary), worst = asyncio.run(click_while_building())
    assert len(moves) == 2 and summary
    assert worst < 0.25  # the loop kept answering every 20 ms while the click waited a second


@pytest.fixture(scope="module")
def big_server(packaged_scorer):
    url, srv = serve_in_thread(app_module.build_server(Settings(max_body_bytes=20 * 1024 * 1024), packaged_scorer,
                                                       None, mcp_server=False))
    yield url
    stop_server(srv)


def test_a_body_far_over_the_budget_is_refused_without_tokenizing_it(big_server, tokenized):
    words = " ".join(f"word{i}" for i in range(10_500))  # ~94 KB of words each
    body = {"query": QUERY, "documents": [f"{n} {words}" for n in range(90)]}  # ~8.5 MB, ~950,000 words
    answer = httpx.post(f"{big_server}/v2/rerank", json=body, timeout=60)
    assert answer.status_code == 413
    message = answer.json()["message"]
    assert "the limit is 262,144 (RERANK_MAX_REQUEST_TOKENS)" in message and "at least" in message
    assert tokenized["chars"] <= len(QUERY)  # only the query was tokenized: the words alone were over the budget


def test_text_without_blanks_is_tokenized_only_until_it_is_over_the_budget(big_server, tokenized):
    documents = [f"{n}" + "数据科学研究方法" * 250 for n in range(1000)]  # 2 M characters, a token each, no blanks
    answer = httpx.post(f"{big_server}/v2/rerank", json={"query": QUERY, "documents": documents}, timeout=120)
    assert answer.status_code == 413 and "at least" in answer.json()["message"]
    assert tokenized["chars"] < sum(map(len, documents)) / 4  # stopped soon after the budget, not at the end


def test_a_streamed_body_over_the_limit_is_refused_before_it_is_read_whole(big_server):
    host, port = big_server.removeprefix("http://").split(":")
    chunk = b"x" * 1024 * 1024
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sock.setblocking(False)
        answer = b""
        for _ in range(60):  # up to 60 MiB offered; the limit is 20 MiB
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += 1
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            time.sleep(0.02)
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                continue
            if b"\r\n\r\n" in answer:
                break
    assert answer.startswith(b"HTTP/1.1 413") and b"RERANK_MAX_BODY_BYTES" in answer
    assert sent < 60  # refused while it streamed: the body was never finished, so a server reading it whole never answers


def test_a_large_request_tokenizes_in_slices_that_take_turns_in_the_pool(packaged_scorer):
    service = assembly.build(Settings(), scorer=packaged_scorer)
    documents = [f"passage {n}: " + "the quick brown fox jumps over the lazy dog " * 8 for n in range(1000)]
    before = packaged_scorer.pool.batches_run
    ranking = service.rank(QUERY, documents)
    assert len(ranking) == 1000
    slices = sum(len(d) for d in documents) // 65_536
    batches = packaged_scorer.pool.batches_run - before
    assert batches >= slices + 1  # the planning ran as pool tasks too, one a slice, beside the forward passes


@pytest.fixture(scope="module")
def shared_server(packaged_scorer):
    held = GatedScorer(packaged_scorer)
    url, srv = serve_in_thread(app_module.build_server(Settings(max_in_flight_per_client=2), held, None,
                                                       mcp_server=False))
    yield url, held
    held.gate.set()
    stop_server(srv)


def test_a_flooding_client_gets_429_while_another_client_is_served(shared_server):
    url, held = shared_server
    body = {"query": QUERY, "documents": ["Open the file and iterate over it.", "Bread needs yeast."]}
    held.gate.clear()
    with httpx.Client(timeout=60) as http:
        flood = [threading.Thread(target=http.post, args=(f"{url}/v2/rerank",), kwargs={"json": body}) for _ in range(2)]
        for thread in flood:
            thread.start()
        assert held.entered.wait(10)
        deadline = time.monotonic() + 10
        while 'rerank_in_flight 2.0' not in http.get(f"{url}/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = http.post(f"{url}/v2/rerank", json=body)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert "RERANK_MAX_IN_FLIGHT_PER_CLIENT" in refused.json()["message"]
        other: dict = {}
        gradio = threading.Thread(target=lambda: other.update(out=Client(url, verbose=False).predict(
            query=QUERY, documents={"headers": ["text"], "data": [[d] for d in body["documents"]], "metadata": None},
            api_name="/rerank")))
        gradio.start()  # another client (a browser session): admitted though the flooder is at its share
        while 'rerank_in_flight 3.0' not in http.get(f"{url}/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        held.gate.set()
        gradio.join(60)
        for thread in flood:
            thread.join(60)
        assert len(other["out"]["data"]) == 2
        info = http.get(f"{url}/info").json()
        assert info["limits"]["max_in_flight_per_client"] == 2


def test_the_loop_lag_is_a_metric(big_server):
    time.sleep(0.2)
    text = httpx.get(f"{big_server}/metrics").text
    count = [line for line in text.splitlines() if line.startswith("rerank_event_loop_lag_seconds_count")]
    assert count and float(count[0].split()[-1]) > 0
