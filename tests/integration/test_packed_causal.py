"""The packed causal-LM pass against sentence-transformers' padded one (fp32, on the CPU, with the per-pair attention the
flash kernel is checked against): both checkpoint layouts, instructions, windows, requests sharing a pass; and the logic
that picks packed or padded (and CUDA graphs) on a GPU, with each of its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest

import rerank
from scoring.choice import Choice
from scoring.engines.causal import (
    PackedCausalEngine,
    causal_span_attention,
    causal_varlen_attention,
    packed_or_padded,
    unsupported_causal,
)
from scoring.engines.packed import capture_graphs
from scoring.synthetic import TINY, build_causal_reranker

QUERY = "which boat has a single mast"
DOCUMENTS = ["A sloop is a sailing boat with a single mast.", "Bread dough rises when yeast ferments.",
             "Ketches are boats with two masts.", "Tomatoes need full sun and regular watering.",
             "A catboat has one mast set far forward, and a single sail.", "mast"]
INSTRUCTION = "Given a question about sailing, find passages that name the boat"
SPREAD = dict(TINY, initializer_range=0.3)  # random weights large enough that scores differ well past the tolerance


@pytest.fixture(scope="module", params=["plain", "st"])
def causal(request, tmp_path_factory):
    """(sentence-transformers' CrossEncoder of a random tiny Qwen3 reranker, a packed engine on it) for each layout."""
    from sentence_transformers import CrossEncoder

    from scoring.checkpoint import Layout

    folder = build_causal_reranker(tmp_path_factory.mktemp("packed") / request.param, layout=request.param, seed=5,
                                   shape=SPREAD)
    model = CrossEncoder(str(folder), device="cpu")
    engine = PackedCausalEngine(model, Layout(mode="cross-encoder", max_length=8192), "torch", device="cpu",
                                attention=causal_span_attention)
    return folder, model, engine


def _padded(model, pairs, prompt=None) -> np.ndarray:
    import torch

    return np.asarray(model.predict(pairs, prompt=prompt, activation_fn=torch.nn.Identity()), dtype=np.float32)


def test_packed_logits_equal_the_padded_pass(causal):
    _, model, engine = causal
    expected = _padded(model, [(QUERY, d) for d in DOCUMENTS])
    assert np.ptp(expected) > 0.1  # scores that differ: the comparison below means something
    np.testing.assert_allclose(engine.score_pairs(QUERY, DOCUMENTS), expected, atol=1e-5)


def test_an_instruction_is_applied_as_sentence_transformers_applies_it(causal):
    _, model, engine = causal
    told = engine.score_pairs(QUERY, DOCUMENTS, instruction=INSTRUCTION)
    np.testing.assert_allclose(told, _padded(model, [(QUERY, d) for d in DOCUMENTS], INSTRUCTION), atol=1e-5)
    assert np.abs(told - engine.score_pairs(QUERY, DOCUMENTS)).max() > 1e-3


def test_pairs_of_several_requests_in_one_pass_each_get_their_own_scores(causal):
    _, model, engine = causal
    triples = [(None, QUERY, d) for d in DOCUMENTS[:3]] + [(INSTRUCTION, "a second question", d) for d in DOCUMENTS]
    triples += [(None, "a third question", d) for d in DOCUMENTS[2:]]
    shared = engine.score_triples(triples)
    alone = np.concatenate([_padded(model, [(QUERY, d) for d in DOCUMENTS[:3]]),
                            _padded(model, [("a second question", d) for d in DOCUMENTS], INSTRUCTION),
                            _padded(model, [("a third question", d) for d in DOCUMENTS[2:]])])
    np.testing.assert_allclose(shared, alone, atol=1e-5)


def test_the_scorer_serves_the_packed_pass_with_windows_and_instructions(causal):
    folder, _, engine = causal
    padded = rerank.load_scorer(str(folder), allow_fallback=False, max_tokens=64)
    packed = rerank.load_scorer(str(folder), allow_fallback=False, max_tokens=64)
    engine = PackedCausalEngine(packed.pool.replicas[0].model, packed.pool.replicas[0].layout, "torch", device="cpu",
                                attention=causal_span_attention)
    assert packed.pool.swap([engine], Choice("torch", "packed on the CPU for the test"))
    assert packed.engine.startswith("causal LM, pairs packed end to end")
    documents = DOCUMENTS + [" ".join(["the sloop sails past the ketch"] * 40)]  # cut into windows at 64 tokens
    assert packed.plan(QUERY, documents).windows > len(documents)
    for told in (None, INSTRUCTION):
        a = rerank.rank(QUERY, documents, scorer=padded, instruction=told, raw=True)
        b = rerank.rank(QUERY, documents, scorer=packed, instruction=told, raw=True)
        np.testing.assert_allclose(b.scores(len(documents)), a.scores(len(documents)), atol=1e-5)
        assert [r.index for r in a] == [r.index for r in b]


def test_what_serves_packed_and_why_not(causal, tiny_cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    _, model, engine = causal
    assert unsupported_causal(model, "bf16", causal_span_attention) is None
    assert unsupported_causal(model, "fp16", causal_span_attention) is None
    assert "not fp32" in unsupported_causal(model, "fp32", causal_span_attention)
    assert "no variable-length attention" in unsupported_causal(model, "bf16", None)
    bert = CrossEncoder(str(tiny_cross_encoder_dir), device="cpu")
    assert "not one of the packed decoders" in unsupported_causal(bert, "bf16", causal_span_attention)
    padded = [object()]
    assert packed_or_padded(padded, model, "bf16", "cpu")[0] is padded  # the CPU runs padded
    served, why = packed_or_padded(padded, model, "fp32", "cuda:0", attention=causal_span_attention)
    assert served is padded and "not fp32" in why  # fp32 stays the padded reference
    served, why = packed_or_padded([engine], model, "bf16", "cuda:0", attention=causal_span_attention)
    assert served[0] is engine and why.startswith("the packed pass failed here")  # no GPU here: the probe fails
    assert causal_varlen_attention() is not None  # this torch has the kernel the GPU path calls


def test_cuda_graphs_fall_back_to_the_plain_pass(causal):
    _, _, engine = causal
    assert capture_graphs(engine, on=False) == (None, None)
    assert capture_graphs(engine) == (None, "CUDA graphs need a GPU")
    elsewhere = engine.sibling()
    elsewhere.device = "cuda:0"  # as if on a GPU: capturing fails here, and says so
    graphs, why = capture_graphs(elsewhere)
    assert graphs is None and why.startswith("CUDA graphs failed here")
    assert engine.use_graphs() == "CUDA graphs need a GPU" and engine.graphs is None
    assert "CUDA graphs" not in engine.how
