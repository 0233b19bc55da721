"""Late-interaction (ColBERT-style) models scored as sentence-transformers' MultiVectorEncoder scores them: MaxSim of
token vectors, document vectors cached by content, on every face."""

from __future__ import annotations

import ast

import httpx
import numpy as np
import pytest
from gradio_client import Client

import app as app_module
import rerank
from scoring.synthetic import build_multi_vector
from service.settings import Settings
from tests.integration.test_faces import mcp_call
from tests.support import serve_in_thread, stop_server

QUERY = "which boat has a single mast"
DOCUMENTS = ["A sloop is a sailing boat with a single mast.", "Bread dough rises when yeast ferments.",
             "Ketches are boats with two masts!", "...", "A catboat has one mast set far forward, and a single sail."]


@pytest.fixture(scope="module")
def late(tmp_path_factory):
    """(checkpoint folder, its scorer, sentence-transformers' own MultiVectorEncoder of it)."""
    from sentence_transformers import MultiVectorEncoder

    folder = build_multi_vector(tmp_path_factory.mktemp("colbert") / "tiny-colbert", seed=5)
    reference = MultiVectorEncoder(str(folder), device="cpu", local_files_only=True)
    return folder, rerank.load_scorer(str(folder), allow_fallback=False), reference


def _maxsim(reference, query: str, documents: list[str]) -> np.ndarray:
    return reference.similarity(reference.encode_query([query]), reference.encode_document(documents)).numpy()[0]


def test_detected_as_late_interaction_and_said_so(late):
    _, scorer, _ = late
    info = scorer.info.as_dict()
    assert info["family"] == info["mode"] == "late-interaction"
    assert "MultiVectorEncoder" in info["detected"] and "MaxSim" in info["scoring"]
    assert scorer.info.max_length == 128  # the checkpoint's document length
    assert "MultiVectorEncoder" in scorer.engine and "MultiVectorEncoder" in scorer.backend.how


def test_maxsim_equals_sentence_transformers_and_scores_sit_on_0_1(late):
    _, scorer, reference = late
    expected = _maxsim(reference, QUERY, DOCUMENTS)
    raw = rerank.rank(QUERY, DOCUMENTS, scorer=scorer, raw=True).scores(len(DOCUMENTS))
    np.testing.assert_allclose(raw, expected, rtol=1e-5, atol=1e-5)
    query_tokens = len(reference.encode_query(QUERY))
    ranking = rerank.rank(QUERY, DOCUMENTS, scorer=scorer)
    np.testing.assert_allclose(ranking.scores(len(DOCUMENTS)), (1 + expected / query_tokens) / 2, atol=1e-5)
    assert [r.index for r in ranking] == list(np.argsort(-expected, kind="stable"))
    assert all(0.0 <= r.score <= 1.0 for r in ranking)


def test_document_vectors_are_cached_by_content(late):
    _, scorer, reference = late
    texts = [f"A boat numbered {n} has {n % 3 + 1} masts." for n in range(6)]
    scorer.cache.clear()
    rerank.rank(QUERY, texts, scorer=scorer)
    hits, misses, held = scorer.cache.hits, scorer.cache.misses, scorer.cache.held()
    assert held >= sum(v.nbytes for v in reference.encode_document(texts, convert_to_numpy=True))  # vectors, in bytes
    other = "how many masts does boat 4 have"
    again = rerank.rank(other, texts, scorer=scorer, raw=True)
    assert scorer.cache.hits - hits == len(texts) and scorer.cache.misses == misses  # only the query was encoded
    np.testing.assert_allclose(again.scores(len(texts)), _maxsim(reference, other, texts), rtol=1e-5, atol=1e-5)


def test_a_long_document_is_scored_by_its_best_window(late):
    _, scorer, reference = late
    filler = " ".join(["Bread dough rises when yeast ferments in a warm kitchen."] * 30)
    long_text = f"{filler} A sloop is a sailing boat with a single mast."
    plan = scorer.plan(QUERY, [long_text])
    assert plan.windows > 1 and max(plan.lengths) <= 128
    raw = rerank.rank(QUERY, [long_text], scorer=scorer, raw=True).scores(1)[0]
    np.testing.assert_allclose(raw, _maxsim(reference, QUERY, list(plan.units)).max(), rtol=1e-5)


def test_every_face_serves_maxsim(late, tiny_scorer):
    folder, scorer, reference = late
    expected = _maxsim(reference, QUERY, DOCUMENTS)
    normalized = (1 + expected / len(reference.encode_query(QUERY))) / 2
    order = [DOCUMENTS[i] for i in np.argsort(-expected, kind="stable")]
    url, server = serve_in_thread(app_module.build_server(Settings(), scorer, None, [tiny_scorer]))
    try:
        jina = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "return_documents": True},
                          timeout=60).json()
        got = {r["index"]: r["relevance_score"] for r in jina["results"]}
        np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], normalized, atol=1e-5)
        tei = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}, timeout=60).json()
        np.testing.assert_allclose([{r["index"]: r["score"] for r in tei}[i] for i in range(len(DOCUMENTS))], expected,
                                   rtol=1e-5, atol=1e-5)
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["model"]["family"] == "late-interaction" and "MaxSim" in info["model"]["scoring"]
        image = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": [DOCUMENTS[0], {
            "image": "https://example.org/page.png"}]}, timeout=30)
        assert image.status_code == 422 and image.json()["message"].startswith(
            "documents.1 is an image, and tiny-colbert ranks text only") and "never fetched" in image.json()["message"]
        table = {"headers": ["text"], "data": [[d] for d in DOCUMENTS], "metadata": None}
        gradio = Client(url, verbose=False).predict(query=QUERY, documents=table, api_name="/rerank")
        assert [row[0] for row in gradio["data"]] == order
        is_error, text = mcp_call(url, "rerank", {"query": QUERY, "documents": table})
        assert not is_error and [row[0] for row in ast.literal_eval(text)["data"]] == order
    finally:
        stop_server(server)


def test_fine_tuning_refuses_a_late_interaction_model(late):
    from evaluation.fine_tune import FineTuneError, trainable

    with pytest.raises(FineTuneError, match="late-interaction model: fine-tuning here trains cross-encoders"):
        trainable(late[1])


def test_the_local_index_stores_its_passages_vectors_and_reranking_them_encodes_only_the_query(late, packaged_scorer,
                                                                                              small_corpus, tmp_path):
    import json

    from retrieval.index import LocalIndex
    from retrieval.retrievers import LocalRetriever

    folder, _, reference = late
    scorer = rerank.load_scorer(str(folder), allow_fallback=False)  # its own cache and store
    corpus = small_corpus[:30]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"url": p.url, "text": p.text}) + "\n" for p in corpus))
    retriever = LocalRetriever.build(corpus_path=str(source), cache_dir=tmp_path, embedder=packaged_scorer, late=scorer)
    assert "token vectors" in retriever.description
    texts = retriever.search("how do I parse a JSON document", k=10)["text"].tolist()
    stored = retriever.index.token_vectors([texts[0], "not a passage"])
    np.testing.assert_allclose(stored[0], reference.encode_document([texts[0]], convert_to_numpy=True)[0], atol=1e-5)
    assert stored[1] is None
    scorer.cache.clear()
    encoded: list[tuple[int, bool]] = []
    for replica in scorer.pool.replicas:
        replica.embed = (lambda inner: lambda texts, *, query=False: encoded.append((len(texts), query))
                         or inner(texts, query=query))(replica.embed)
    query = "parse a JSON document into Python objects"
    ranking = rerank.rank(query, texts, scorer=scorer, raw=True)
    assert encoded == [(1, True)]  # the query only: every passage's (and long ones' windows') vectors from the index
    assert scorer.plan(query, texts).windows > len(texts)  # some were long: their windows were stored too
    plan = scorer.plan(query, texts)  # a long passage scores by its best window, as sentence-transformers scores each
    expected = np.full(len(texts), -np.inf)
    np.maximum.at(expected, plan.owners, _maxsim(reference, query, list(plan.units)))
    np.testing.assert_allclose(ranking.scores(len(texts)), expected, rtol=1e-5, atol=1e-5)
    retriever.index.close()
    reopened = LocalIndex.open(corpus, packaged_scorer, path=tmp_path / "again.duckdb", late=scorer)
    reopened.close()
    again = LocalIndex.open(corpus, packaged_scorer, path=tmp_path / "again.duckdb", late=scorer)
    assert again.stats.reused and "token vectors" in again.description
    again.close()
    plain = LocalIndex.open(corpus, packaged_scorer, path=tmp_path / "plain.duckdb")  # no late model: none stored
    assert plain.token_vectors([texts[0]]) == [None] and "token vectors" not in plain.description
    plain.close()


def test_cached_vectors_own_their_memory(late, packaged_scorer):
    """A cache entry that were a row of its batch's array would keep the whole batch alive, uncounted by the byte
    bound (a soak traced 22 MiB of such batches in ten minutes)."""
    texts = [f"passage {n} about masts and sails" for n in range(9)]
    for scorer in (packaged_scorer, late[1]):
        scorer.cache.clear()
        rerank.rank("which boat", texts, scorer=scorer)
        held = list(scorer.cache._data.values())
        assert held and all(v.base is None for v in held), scorer.info.name
