"""Trying hard to break the service: malformed Gradio payloads, a short load run, disconnects, faults."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

import app as app_module
import rerank
from evaluation import load
from service.settings import Settings
from tests.support import ROOT, serve_in_thread, stop_server

# query, documents, top_n (null: every row), instruction, min_score (null: none)
GOOD = ["which document is about bread?", {"headers": ["text"], "data": [["Bread needs yeast."], ["Cars need fuel."]],
                                           "metadata": None}, None, "", None]
MALFORMED = {
    "wrong headers": ["q", {"headers": "text", "data": [["a"]], "metadata": None}, None, "", None],
    "ragged rows": ["q", {"headers": ["text", "url"], "data": [["a"], ["b", "u", "extra"]], "metadata": None}, None, "",
                    None],
    "non-list data": ["q", {"headers": ["text"], "data": "abc", "metadata": None}, None, "", None],
    "rows not lists": ["q", {"headers": ["text"], "data": ["abc", "def"], "metadata": None}, None, "", None],
    "huge metadata": ["q", {"headers": ["text"], "data": [["a"]], "metadata": {"x": ["y"] * 100_000}}, None, "", None],
    "missing documents": ["q"],
    "null documents": ["q", None, None, "", None],
    "number query": [5, GOOD[1], None, "", None],
    "nested cell": ["q", {"headers": ["text"], "data": [[{"a": 1}]], "metadata": None}, None, "", None],
    "no headers": ["q", {"data": [["a"]]}, None, "", None],
    "no text column": ["q", {"headers": ["body"], "data": [["a"]], "metadata": None}, None, "", None],
    "too many rows": ["q", {"headers": ["text"], "data": [[str(i)] for i in range(25)], "metadata": None}, None, "",
                      None],
    "empty table": ["q", {"headers": ["text"], "data": [[]], "metadata": None}, None, "", None],
    "bad top_n": ["q", GOOD[1], "three", "", None],
    "extra inputs": ["q", GOOD[1], None, "", None, "surplus"],
    "bad min_score": ["q", GOOD[1], None, "", "high"],
    "surrogate cell": ["q", {"headers": ["url", "text"], "data": [["\ud800", "a"], ["u", "b\udfff"]], "metadata": None},
                       None, "", None],
    "bad instruction": ["q", GOOD[1], None, 7, None],
}


@pytest.fixture(scope="module")
def server(packaged_scorer):
    url, srv = serve_in_thread(app_module.build_server(Settings(max_documents=20), packaged_scorer, None,
                                                       mcp_server=False))
    yield url
    stop_server(srv)


def _call_gradio(url: str, data: list, timeout: float = 30) -> tuple[str, dict | list | None]:
    """Gradio's REST call API: POST the inputs, then read the event stream to its end."""
    posted = httpx.post(f"{url}/gradio_api/call/rerank", content=json.dumps({"data": data}), timeout=timeout,
                        headers={"content-type": "application/json"})  # json.dumps escapes lone surrogates
    assert posted.status_code < 500, posted.text
    if posted.status_code >= 400:
        return "rejected", posted.json()
    stream = httpx.get(f"{url}/gradio_api/call/rerank/{posted.json()['event_id']}", timeout=timeout).text
    events = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("event: ")]
    payloads = [line.split(": ", 1)[1] for line in stream.splitlines() if line.startswith("data: ")]
    return events[-1], json.loads(payloads[-1]) if payloads else None


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_gradio_payloads_get_a_message_and_the_app_keeps_serving(server, name):
    kind, payload = _call_gradio(server, MALFORMED[name])
    if kind == "complete":
        assert isinstance(payload, list) and "headers" in payload[0]
    else:
        assert kind in ("error", "rejected")
        message = payload.get("error") if isinstance(payload, dict) else None
        assert message, payload
        assert "y', 'y', 'y'" not in message  # never echoes the request back in bulk
    assert _call_gradio(server, GOOD)[0] == "complete"


def test_expected_messages_for_common_mistakes(server):
    assert "rows 0, 1 do not have 2 cells" in _call_gradio(server, MALFORMED["ragged rows"])[1]["error"]
    assert "no 'text' column; columns received: ['body']" in _call_gradio(server, MALFORMED["no text column"])[1]["error"]
    assert "limit is 20" in _call_gradio(server, MALFORMED["too many rows"])[1]["error"]
    assert "documents is empty" in _call_gradio(server, MALFORMED["empty table"])[1]["error"]
    assert "query must be text" in _call_gradio(server, MALFORMED["number query"])[1]["error"]
    assert "instruction must be text, got int" in _call_gradio(server, MALFORMED["bad instruction"])[1]["error"]
    assert "documents[1] holds a lone surrogate (U+DFFF)" in _call_gradio(server, MALFORMED["surrogate cell"])[1]["error"]
    assert "min_score must be a finite number or None, got 'high'" in _call_gradio(server, MALFORMED["bad min_score"])[1][
        "error"]


def test_short_load_run_loses_nothing(server):
    report = load.run_load(server, clients=4, docs=12, requests_per_client=4)
    summary = report.summary()
    assert summary["errors"] == 0, report.errors[:3]
    assert summary["lost_rows"] == 0
    assert summary["requests"] == 16 and set(summary["by_route"]) == set(load.ROUTES)


def _metric(url: str, name: str) -> float:
    """The sum of a Prometheus counter's samples."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _settled(url: str, name: str, seconds: float = 1.0) -> float:
    """A counter's value once it has stopped moving for ``seconds``."""
    value = _metric(url, name)
    for _ in range(60):
        time.sleep(seconds)
        now = _metric(url, name)
        if now == value:
            return now
        value = now
    raise AssertionError(f"{name} kept moving")


def test_a_client_that_goes_away_stops_its_work(server):
    docs = [f"document {i} " + " ".join(f"filler{i} words{j % 97}" for j in range(500)) for i in range(20)]  # ~10 s of work
    dropped = _metric(server, "rerank_batches_dropped_total")
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server}/v2/rerank", json={"query": "q", "documents": docs}, timeout=0.3)
    after_http = _settled(server, "rerank_batches_dropped_total")
    assert after_http > dropped  # the server saw the disconnect and dropped the batches not yet started
    assert 'status="499"' in httpx.get(f"{server}/metrics", timeout=10).text
    gradio = Client(server, verbose=False)
    job = gradio.submit(query="q2", documents={"headers": ["text"], "data": [[d + " again"] for d in docs],
                                                "metadata": None}, api_name="/rerank")
    time.sleep(0.6)
    job.cancel()
    batches = _settled(server, "rerank_batches_total")
    assert _metric(server, "rerank_batches_dropped_total") > after_http  # Gradio's cancel reached the worker pool
    time.sleep(1.0)
    assert _metric(server, "rerank_batches_total") == batches  # and no work goes on after it
    ok = httpx.post(f"{server}/v2/rerank", json={"query": "bread", "documents": ["Bread needs yeast.", "x"]}, timeout=60)
    assert ok.status_code == 200 and ok.json()["results"][0]["index"] == 0
    assert _call_gradio(server, GOOD, timeout=60)[0] == "complete"


def test_startup_with_a_missing_model_announces_the_fallback(tmp_path):
    import subprocess

    code = ("import logging; logging.basicConfig(level=logging.WARNING);"
            "import rerank; s = rerank.load_scorer('/no/such/model'); print('MODE', s.info.mode, s.info.fallback_reason)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    assert "MODE embedding model path '/no/such/model' is not a folder" in out.stdout
    assert "falling back to the packaged all-MiniLM-L6-v2" in out.stderr


def test_error_messages_do_not_echo_documents_or_keys(server, packaged_scorer):
    secret_doc = "TOP-SECRET-" + "z" * 5000
    response = httpx.post(f"{server}/v2/rerank", json={"query": "", "documents": [secret_doc]}, timeout=30)
    assert response.status_code == 422 and "TOP-SECRET" not in response.text
    response = httpx.post(f"{server}/v2/rerank", json={"query": "q", "documents": [secret_doc, 5]}, timeout=30)
    assert response.status_code == 422 and "TOP-SECRET" not in response.text
    with pytest.raises(rerank.RerankError) as err:
        rerank.rerank_table("q", __import__("pandas").DataFrame({"text": [secret_doc, None]}), scorer=packaged_scorer,
                          max_documents=5)
    assert "TOP-SECRET" not in str(err.value)


def _custom_code_checkpoint(folder: Path, marker: Path) -> Path:
    """A checkpoint whose config asks for code of its own: importing it would write ``marker``."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                     "from transformers import BertConfig as EvilConfig, BertModel as EvilModel\n")
    return folder


def test_custom_code_never_runs_unless_configured(tmp_path, server, monkeypatch):
    from transformers import BertConfig, BertModel

    for cls in (BertConfig, BertModel):  # loading the custom code registers these classes for auto-loading, process-wide:
        monkeypatch.setattr(cls, "_auto_class", None)  # undone after the test, or every later save would copy module files
    assert Settings().trust_remote_code is False
    assert Settings.from_env({"RERANK_TRUST_REMOTE_CODE": "1"}).trust_remote_code is True
    marker = tmp_path / "marker"
    checkpoint = _custom_code_checkpoint(tmp_path / "custom", marker)
    rerank.load_scorer(str(checkpoint), allow_fallback=False)  # loads as the built-in architecture it names
    assert not marker.exists()
    # a request can neither name a model to load nor switch custom code on
    answer = httpx.post(f"{server}/v2/rerank", json={"model": str(checkpoint), "trust_remote_code": True,
                                                     "query": "q", "documents": ["a", "b"]}, timeout=30)
    assert answer.status_code == 200 and answer.json()["model"] != "custom"
    assert not marker.exists()
    rerank.load_scorer(str(checkpoint), allow_fallback=False, trust_remote_code=True)  # what the setting unlocks
    assert marker.read_text() == "ran"
