"""Causal-LM rerankers served as sentence-transformers scores them, with instructions, on every face."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import app as app_module
import rerank
from scoring.synthetic import build_causal_reranker
from service import assembly
from service.settings import Settings
from tests.support import serve_in_thread, stop_server

QUERY = "which boat has a single mast"
DOCUMENTS = ["A sloop is a sailing boat with a single mast.", "Bread dough rises when yeast ferments.",
             "Ketches are boats with two masts.", "Tomatoes need full sun and regular watering.",
             "A catboat has one mast set far forward, and a single sail."]
INSTRUCTION = "Given a question about sailing, find passages that name the boat"


@pytest.fixture(scope="module", params=["plain", "st"])
def causal(request, tmp_path_factory):
    """(checkpoint folder, its scorer, sentence-transformers' own CrossEncoder of it) for each layout."""
    from sentence_transformers import CrossEncoder

    folder = build_causal_reranker(tmp_path_factory.mktemp("causal") / request.param, layout=request.param, seed=3)
    return folder, rerank.load_scorer(str(folder), allow_fallback=False), CrossEncoder(str(folder), device="cpu")


def test_scores_equal_sentence_transformers_through_the_core(causal):
    folder, scorer, reference = causal
    assert scorer.info.kind == "causal-lm" and scorer.info.takes_instruction
    expected = reference.predict([(QUERY, d) for d in DOCUMENTS])  # sigmoid of the yes/no log-odds
    ranking = rerank.rank(QUERY, DOCUMENTS, scorer=scorer)
    np.testing.assert_allclose(ranking.scores(len(DOCUMENTS)), expected, atol=1e-4)
    assert [r.index for r in ranking] == list(np.argsort(-expected, kind="stable"))
    raw = rerank.rank(QUERY, DOCUMENTS, scorer=scorer, raw=True)
    import torch

    logits = reference.predict([(QUERY, d) for d in DOCUMENTS], activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(raw.scores(len(DOCUMENTS)), logits, atol=1e-4)


def test_an_instruction_changes_the_scores_as_sentence_transformers_applies_it(causal):
    _, scorer, reference = causal
    told = rerank.rank(QUERY, DOCUMENTS, scorer=scorer, instruction=INSTRUCTION)
    plain = rerank.rank(QUERY, DOCUMENTS, scorer=scorer)
    expected = reference.predict([(QUERY, d) for d in DOCUMENTS], prompt=INSTRUCTION)
    np.testing.assert_allclose(told.scores(len(DOCUMENTS)), expected, atol=1e-4)
    assert np.abs(told.scores(len(DOCUMENTS)) - plain.scores(len(DOCUMENTS))).max() > 1e-4
    assert told.instruction.applied and plain.instruction is None
    assert told.cost > plain.cost  # the instruction's tokens are read with every pair


def test_the_window_follows_the_model_capped_by_max_tokens(causal):
    folder, scorer, _ = causal
    assert scorer.info.max_length == 8192 and "declares 32,768; capped by RERANK_MAX_TOKENS" in scorer.info.window_note
    small = rerank.load_scorer(str(folder), allow_fallback=False, max_tokens=64)
    assert small.info.max_length == 64
    long_text = " ".join(["the sloop sails"] * 200)
    plan = small.plan(QUERY, [long_text])
    assert plan.windows > 1 and max(plan.lengths) <= 64  # best window of several, each within the cap


def test_a_cross_encoder_ignores_the_instruction_and_says_so(tiny_scorer):
    ranking = rerank.rank(QUERY, DOCUMENTS, scorer=tiny_scorer, instruction=INSTRUCTION)
    plain = rerank.rank(QUERY, DOCUMENTS, scorer=tiny_scorer)
    assert ranking.instruction.applied is False
    assert "ignored:" in ranking.instruction.note and "sequence-classification" in ranking.instruction.note
    np.testing.assert_array_equal(ranking.scores(len(DOCUMENTS)), plain.scores(len(DOCUMENTS)))


def test_instruction_limits_name_the_field(tiny_scorer):
    with pytest.raises(rerank.RerankError, match="instruction must be text, got int"):
        rerank.rank(QUERY, DOCUMENTS, scorer=tiny_scorer, instruction=3)
    with pytest.raises(rerank.RerankError, match="instruction has 2,001 characters; the limit is 2,000"):
        rerank.rank(QUERY, DOCUMENTS, scorer=tiny_scorer, instruction="x" * 2001)


def test_http_routes_serve_the_causal_reranker_as_sentence_transformers_does(causal, tiny_scorer):
    folder, scorer, reference = causal
    settings = Settings(instruction=None)
    url, server = serve_in_thread(app_module.build_server(settings, scorer, None, [tiny_scorer], mcp_server=False))
    try:
        expected = reference.predict([(QUERY, d) for d in DOCUMENTS], prompt=INSTRUCTION)
        v2 = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS, "instruction": INSTRUCTION},
                        timeout=60).json()
        got = {r["index"]: r["relevance_score"] for r in v2["results"]}
        np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], expected, atol=1e-4)
        assert v2["meta"]["instruction"]["applied"] is True
        tei = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "instruct": INSTRUCTION}, timeout=60)
        assert tei.headers["x-rerank-instruction"] == "applied"
        assert {r["index"]: r["score"] for r in tei.json()} == pytest.approx(got, abs=1e-6)
        bert = httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "instruction": INSTRUCTION,
                                                    "model": tiny_scorer.info.name}, timeout=60).json()
        assert bert["meta"]["instruction"]["applied"] is False and "takes no instruction" in bert["meta"]["instruction"]["note"]
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["model"]["family"] == "causal-lm" and info["model"]["takes_instruction"] is True
        too_long = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS, "instruction": "x" * 3000},
                              timeout=30)
        assert too_long.status_code in (400, 413, 422) and "instruction has 3,000 characters" in too_long.json()["message"]
    finally:
        stop_server(server)


def test_default_instruction_from_the_settings(causal):
    _, scorer, reference = causal
    service = assembly.build(Settings.from_env({"RERANK_INSTRUCTION": INSTRUCTION}), scorer=scorer)
    ranking = service.rank(QUERY, DOCUMENTS)
    np.testing.assert_allclose(ranking.scores(len(DOCUMENTS)),
                               reference.predict([(QUERY, d) for d in DOCUMENTS], prompt=INSTRUCTION), atol=1e-4)
    assert ranking.instruction.text == INSTRUCTION and service.info()["instruction"]["default"] == INSTRUCTION


def test_precision_is_measured_behind_the_fidelity_gate_and_remembered(causal, tmp_path):
    from scoring.engines import cpu_has_native_bf16

    folder, _, reference = causal
    auto = rerank.load_scorer(str(folder), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert auto.needs_tuning and auto.backend.backend == "torch"  # fp32 until measured
    choice = auto.tune(budget_s=60)
    by_name = {m.backend: m for m in choice.measurements}
    assert set(by_name) == {"torch", "torch-bf16"} and by_name["torch"].spearman == 1.0
    if cpu_has_native_bf16():
        assert by_name["torch-bf16"].seconds is not None and by_name["torch-bf16"].spearman is not None
    else:
        assert "no native bf16" in by_name["torch-bf16"].note
    assert choice.backend == "torch" or by_name[choice.backend].faithful  # reduced precision only through the gate
    again = rerank.load_scorer(str(folder), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert not again.needs_tuning and again.backend.backend == choice.backend
    assert again.backend.how == "measured on this machine at an earlier start"
    if choice.backend == "torch":
        np.testing.assert_allclose(rerank.rank(QUERY, DOCUMENTS, scorer=again).scores(len(DOCUMENTS)),
                                   reference.predict([(QUERY, d) for d in DOCUMENTS]), atol=1e-4)
    onnx = rerank.load_scorer(str(folder), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    assert onnx.backend.backend == "torch" and "does not run causal-LM rerankers" in onnx.backend.how
