"""Image documents, ranked by a multimodal reranker as sentence-transformers' CrossEncoder ranks them, on every face
that carries them; refused, naming the field and the limit, where they cannot be."""

from __future__ import annotations

import ast
import base64
import io

import httpx
import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

import app as app_module
import rerank
from scoring.errors import RerankError
from scoring.media import read_image
from scoring.synthetic import build_vision_reranker
from service.settings import Settings
from tests.integration.test_faces import mcp_call
from tests.support import serve_in_thread, stop_server

QUERY = "a red stop sign"


def _picture(colour: tuple[int, int, int], size: tuple[int, int], stripe: int) -> Image.Image:
    """A small picture: a colour with a stripe, so that every picture reads differently to the model."""
    image = Image.new("RGB", size, colour)
    for x in range(0, size[0], stripe):
        for y in range(size[1]):
            image.putpixel((x, y), (255 - colour[0], 255 - colour[1], 255 - colour[2]))
    return image


PICTURES = [_picture((200, 30, 30), (40, 30), 3), _picture((30, 200, 30), (28, 28), 5),
            _picture((30, 30, 200), (64, 20), 7), _picture((240, 240, 240), (33, 47), 2)]
TEXTS = ["A stop sign is red and octagonal.", "Bread dough rises when yeast ferments."]


def _uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    """(checkpoint folder, its scorer, sentence-transformers' own CrossEncoder of it)."""
    from sentence_transformers import CrossEncoder

    folder = build_vision_reranker(tmp_path_factory.mktemp("vision") / "tiny-vision", seed=3)
    reference = CrossEncoder(str(folder), device="cpu", local_files_only=True)
    return folder, rerank.load_scorer(str(folder), allow_fallback=False), reference


def _logits(reference, query: str, documents: list) -> np.ndarray:
    import torch

    return reference.predict([(query, d) for d in documents], activation_fn=torch.nn.Identity())


def test_detected_as_a_reranker_that_reads_images(vision):
    _, scorer, _ = vision
    info = scorer.info.as_dict()
    assert info["family"] == "causal-lm" and info["documents"] == ["text", "image"]
    assert "reading text and images" in info["detected"] and "LlavaForConditionalGeneration" in info["detected"]
    assert "ranks image documents too" in scorer.describe()


def test_images_and_texts_score_as_sentence_transformers_does(vision):
    _, scorer, reference = vision
    documents = [PICTURES[0], TEXTS[0], PICTURES[1], PICTURES[2], TEXTS[1], PICTURES[3]]
    expected = _logits(reference, QUERY, documents)
    raw = rerank.rank(QUERY, documents, scorer=scorer, raw=True)
    np.testing.assert_allclose(raw.scores(len(documents)), expected, rtol=1e-5, atol=1e-5)
    ranking = rerank.rank(QUERY, documents, scorer=scorer)
    np.testing.assert_allclose(ranking.scores(len(documents)), 1 / (1 + np.exp(-expected)), atol=1e-5)
    assert [r.index for r in ranking] == list(np.argsort(-expected, kind="stable"))
    assert str(ranking[0].text).startswith("[image") or ranking[0].text in TEXTS


def test_an_image_sent_twice_is_one_document_and_its_pixels_are_its_cost(vision):
    _, scorer, _ = vision
    again = PICTURES[0].copy()  # another object, the same pixels
    ranking = rerank.rank(QUERY, [PICTURES[0], TEXTS[0], again], scorer=scorer)
    assert [(d.index, d.same_as) for d in ranking.duplicates] == [(2, 0)] and len(ranking) == 2
    small, wide = (read_image(base64.b64decode(_uri(p).split(",")[1]), field="x") for p in (PICTURES[1], PICTURES[2]))
    plan = scorer.plan_media(QUERY, [small, wide])
    assert (small.cost, wide.cost) == (1, 2)  # 28 x 28 and 64 x 20 pixels: a token per 784, rounded up
    assert plan.lengths[1] - plan.lengths[0] == 1 and plan.cost == sum(plan.lengths)


def test_a_text_only_model_refuses_image_documents_naming_it(packaged_scorer):
    with pytest.raises(RerankError, match=r"documents\[1\] is an image, and all-MiniLM-L6-v2 \(packaged\) ranks text only"):
        rerank.rank(QUERY, [TEXTS[0], PICTURES[0]], scorer=packaged_scorer)


def test_every_face_ranks_image_documents(vision, tiny_scorer):
    _, scorer, reference = vision
    documents = [TEXTS[0], PICTURES[0], PICTURES[1], TEXTS[1], PICTURES[2]]
    expected = 1 / (1 + np.exp(-_logits(reference, QUERY, documents)))
    order = list(np.argsort(-expected, kind="stable"))
    settings = Settings(max_image_pixels=50_000, max_request_tokens=4096)
    url, server = serve_in_thread(app_module.build_server(settings, scorer, None, [tiny_scorer]))
    try:
        sent = [d if isinstance(d, str) else {"image": _uri(d)} for d in documents]
        jina = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": sent, "return_documents": True},
                          timeout=60)
        assert jina.status_code == 200, jina.text
        results = jina.json()["results"]
        assert [r["index"] for r in results] == order
        np.testing.assert_allclose([r["relevance_score"] for r in results], expected[order], atol=1e-5)
        assert results[order.index(1)]["document"] == {"image": _uri(PICTURES[0])}  # given back as it came
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["model"]["documents"] == ["text", "image"] and info["limits"]["max_image_pixels"] == 50_000

        def refused(document) -> httpx.Response:
            return httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": [TEXTS[0], document]}, timeout=30)

        url_image = refused({"image": "https://example.org/cat.png"})
        assert url_image.status_code == 422 and "documents.1.image is a URL: a URL is never fetched" in url_image.text
        too_many = refused({"image": _uri(_picture((9, 9, 9), (300, 200), 300))})
        assert too_many.status_code == 413 and "60,000 pixels; the limit is 50,000 (RERANK_MAX_IMAGE_PIXELS)" in too_many.text
        over_budget = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": [
            {"image": _uri(_picture((n, 9, 9), (220, 220), 7))} for n in range(70)]}, timeout=30)
        assert over_budget.status_code == 413 and "for its images" in over_budget.text \
            and "RERANK_MAX_REQUEST_TOKENS" in over_budget.text

        table = {"headers": ["id", "text", "image"], "metadata": None,
                 "data": [[f"d{n}", d if isinstance(d, str) else "", "" if isinstance(d, str) else _uri(d)]
                          for n, d in enumerate(documents)]}
        gradio = Client(url, verbose=False).predict(query=QUERY, documents=table, api_name="/rerank")
        assert [row[0] for row in gradio["data"]] == [f"d{n}" for n in order]
        np.testing.assert_allclose([row[3] for row in gradio["data"]], expected[order], atol=1e-5)
        assert gradio["data"][order.index(1)][2] == _uri(PICTURES[0])  # every column comes back as it came
        is_error, text = mcp_call(url, "rerank", {"query": QUERY, "documents": table})
        assert not is_error and [row[0] for row in ast.literal_eval(text)["data"]] == [f"d{n}" for n in order]
        both = {**table, "data": [["x", TEXTS[0], _uri(PICTURES[0])]]}
        with pytest.raises(Exception, match="has both text and an image"):
            Client(url, verbose=False).predict(query=QUERY, documents=both, api_name="/rerank")
    finally:
        stop_server(server)


def test_a_text_only_model_refuses_an_image_row_in_the_table(packaged_scorer):
    import pandas as pd

    table = pd.DataFrame({"text": [TEXTS[0], ""], "image": [None, _uri(PICTURES[0])]})
    with pytest.raises(RerankError, match=r"documents\[1\] is an image, and all-MiniLM-L6-v2 \(packaged\) ranks text only"):
        rerank.rerank(QUERY, table, scorer=packaged_scorer)


def test_page_images_are_scored_by_maxsim_colpali_style(tmp_path_factory, tiny_scorer):
    """A late-interaction model whose processor reads images ranks page images by MaxSim of token vectors, as
    sentence-transformers' MultiVectorEncoder scores them, in Python and over /v1/rerank."""
    from sentence_transformers import MultiVectorEncoder

    from scoring.synthetic import build_vision_multi_vector

    folder = build_vision_multi_vector(tmp_path_factory.mktemp("colpali") / "tiny-colpali", seed=4)
    scorer = rerank.load_scorer(str(folder), allow_fallback=False)
    assert scorer.info.images and scorer.info.family == "late-interaction" and "page images" in scorer.info.detected
    reference = MultiVectorEncoder(str(folder), device="cpu", local_files_only=True)
    documents = [PICTURES[0], TEXTS[0], PICTURES[2], PICTURES[1]]
    expected = reference.similarity(reference.encode_query([QUERY]), reference.encode_document(documents)).numpy()[0]
    raw = rerank.rank(QUERY, documents, scorer=scorer, raw=True)
    np.testing.assert_allclose(raw.scores(len(documents)), expected, rtol=1e-5, atol=1e-5)
    hits = scorer.cache.hits
    rerank.rank("another question", documents, scorer=scorer)
    assert scorer.cache.hits - hits == len(documents)  # the pages' vectors were kept by content: only the query ran
    url, server = serve_in_thread(app_module.build_server(Settings(), scorer, None, [tiny_scorer]))
    try:
        answer = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": [TEXTS[0]]}, timeout=30)
        assert answer.status_code == 200  # text still ranks on the text-only routes
        jina = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": [
            d if isinstance(d, str) else {"image": _uri(d)} for d in documents]}, timeout=60).json()
        assert [r["index"] for r in jina["results"]] == list(np.argsort(-expected, kind="stable"))
    finally:
        stop_server(server)
