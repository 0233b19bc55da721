"""The scoring core: model modes, fallback, and the table operation's guarantees."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import rerank
from scoring.batching import padding_waste, plan_batches
from scoring.checkpoint import detect_mode
from scoring.ranking import DEFAULT_POLICY, fuse

QUERY = "What is the future of AI?"
RELEVANT = [
    "Artificial intelligence is expected to transform medicine, science and work over the next decade.",
    "Researchers predict that future AI systems will reason and plan far better than today's models.",
    "The future of machine learning and AI depends on better data, compute and safety research.",
]
UNRELATED = [
    "Knead the dough for ten minutes, then let the bread rise in a warm place for an hour.",
    "The football match ended in a goalless draw after extra time.",
    "Tulips should be planted in autumn, about fifteen centimetres deep.",
]


def test_packaged_model_scores_relevant_documents_clearly_higher(packaged_scorer):
    assert packaged_scorer.info.mode == "embedding"
    scores = packaged_scorer.score(QUERY, RELEVANT + UNRELATED)
    relevant, unrelated = scores[:3], scores[3:]
    assert relevant.min() > unrelated.max() + 0.1, scores
    assert np.all(scores <= 1.0) and np.all(scores >= 0.0)
    cosine = packaged_scorer.score(QUERY, RELEVANT + UNRELATED, raw=True)
    np.testing.assert_allclose(scores, (cosine + 1) / 2, rtol=1e-6)
    assert cosine[:3].min() > 0.3 and cosine[3:].max() < 0.15


def test_rerank_orders_dedups_and_keeps_columns(packaged_scorer):
    docs = pd.DataFrame({
        "url": [f"u{i}" for i in range(7)],
        "text": [UNRELATED[0], RELEVANT[0], UNRELATED[1], RELEVANT[0], RELEVANT[1], UNRELATED[0], UNRELATED[2]],
        "distance": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        "flag": [True, False, True, False, True, False, True],
    })
    result = rerank.rerank_table(QUERY, docs, scorer=packaged_scorer, max_documents=100)
    table = result.table
    assert result.duplicates == [3, 5]
    assert sorted(table.index.tolist()) == [0, 1, 2, 4, 6]
    assert list(table.columns) == ["url", "text", "distance", "flag", "rank"]
    for label, row in table.iterrows():  # every other value unchanged
        assert row[["url", "text", "distance", "flag"]].tolist() == docs.loc[label, ["url", "text", "distance", "flag"]].tolist()
    assert table["rank"].is_monotonic_decreasing
    assert set(table.index[:2]) == {1, 4}  # the relevant texts on top
    assert "2 duplicate texts dropped" in result.summary


def test_rerank_function_top_n_and_attrs(packaged_scorer):
    docs = pd.DataFrame({"text": RELEVANT + UNRELATED + [RELEVANT[2]]})
    top = rerank.rerank(QUERY, docs, top_n=2, scorer=packaged_scorer, max_documents=100)
    assert len(top) == 2 and set(top.index) <= {0, 1, 2}
    assert top.attrs["duplicates"] == [6]
    everything = rerank.rerank(QUERY, docs, top_n=50, scorer=packaged_scorer, max_documents=100)
    assert len(everything) == 6


def test_ties_keep_input_order(packaged_scorer):
    docs = pd.DataFrame({"text": ["same words here", "same words here ", "same words here  "], "n": [1, 2, 3]})
    # three distinct strings that the tokenizer sees alike: equal scores, so input order must hold
    table = rerank.rerank_table("same words", docs, scorer=packaged_scorer, max_documents=10).table
    assert table["n"].tolist() == [1, 2, 3]
    assert table["rank"].nunique() == 1


def test_existing_rank_column_is_replaced(packaged_scorer):
    docs = pd.DataFrame({"text": [UNRELATED[0], RELEVANT[0]], "rank": [99.0, -5.0]})
    table = rerank.rerank_table(QUERY, docs, scorer=packaged_scorer, max_documents=10).table
    assert list(table.columns) == ["text", "rank"]
    assert table.index.tolist() == [1, 0] and table["rank"].max() < 1.01


@pytest.mark.parametrize(("query", "docs", "message"), [
    ("", pd.DataFrame({"text": ["a"]}), "query is empty"),
    ("   \n", pd.DataFrame({"text": ["a"]}), "query is empty"),
    (None, pd.DataFrame({"text": ["a"]}), "query must be text"),
    ("q", pd.DataFrame({"body": ["a"], "url": ["u"]}), "no 'text' column; columns received: ['body', 'url']"),
    ("q", pd.DataFrame({"text": []}), "documents is empty"),
    ("q", pd.DataFrame({"text": ["ok", None, 3, float("nan")]}), "rows 1, 2, 3 hold NoneType, float, int"),
    ("q", pd.DataFrame({"text": ["x"] * 11}), "11 rows; the limit is 10 (RERANK_MAX_DOCUMENTS)"),
    ("q", [["text"], ["a"]], "documents must be a table"),
    ("q", pd.DataFrame([["a", "b"]], columns=["text", "text"]), "2 columns named 'text'"),
])
def test_bad_input_is_a_clear_error(packaged_scorer, query, docs, message):
    with pytest.raises(rerank.RerankError) as err:
        rerank.rerank_table(query, docs, scorer=packaged_scorer, max_documents=10)
    assert message.replace("NoneType", "None") in str(err.value).replace("NoneType", "None")


@pytest.mark.parametrize("top_n", [0, -1, 1.5, "3", True])
def test_bad_top_n(packaged_scorer, top_n):
    with pytest.raises(rerank.RerankError, match="top_n"):
        rerank.rerank_table("q", pd.DataFrame({"text": ["a"]}), top_n, scorer=packaged_scorer, max_documents=10)


def test_very_long_text_is_truncated_not_rejected(packaged_scorer):
    long_text = "artificial intelligence " * 5000
    table = rerank.rerank_table(QUERY, pd.DataFrame({"text": [long_text, UNRELATED[0]]}), scorer=packaged_scorer,
                              max_documents=10).table
    assert table.index.tolist() == [0, 1]


def test_tiny_cross_encoder_scores_like_its_transformers_forward(tiny_scorer, tiny_cross_encoder_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    assert tiny_scorer.info.mode == "cross-encoder" and tiny_scorer.info.fallback_reason is None
    texts = RELEVANT + UNRELATED
    tok = AutoTokenizer.from_pretrained(str(tiny_cross_encoder_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_cross_encoder_dir)).eval()
    with torch.no_grad():
        batch = tok([QUERY] * len(texts), texts, padding=True, truncation=True, return_tensors="pt")
        logits = model(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(tiny_scorer.score(QUERY, texts, raw=True), logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tiny_scorer.score(QUERY, texts), 1 / (1 + np.exp(-logits)), rtol=1e-4, atol=1e-6)
    table = rerank.rerank_table(QUERY, pd.DataFrame({"text": texts}), scorer=tiny_scorer, max_documents=10).table
    assert table.index.tolist() == list(np.argsort(-logits, kind="stable"))


def test_embedding_checkpoint_without_head_is_never_a_cross_encoder(tmp_path):
    """The seed's trap: a BertModel checkpoint (all-MiniLM-L12-v2's layout) is scored by embeddings."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    BertModel(config).save_pretrained(str(tmp_path))
    assert detect_mode(tmp_path) == "embedding"
    # a config that claims a classification head while its weights have none: still embedding
    data = json.loads((tmp_path / "config.json").read_text())
    data["architectures"] = ["BertForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert detect_mode(tmp_path) == "embedding"


def test_multi_label_head_is_refused(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(str(tmp_path))
    with pytest.raises(rerank.ModelLoadError, match="3-label"):
        detect_mode(tmp_path)


def test_unavailable_model_falls_back_to_packaged_and_says_so(packaged_scorer):
    scorer = rerank.load_scorer("rag-augment-tests/no-such-model-anywhere")
    assert scorer.info.mode == "embedding"
    assert scorer.info.requested == "rag-augment-tests/no-such-model-anywhere"
    assert "no-such-model-anywhere" in scorer.info.fallback_reason
    assert "Fell back from rag-augment-tests/no-such-model-anywhere" in scorer.info.describe()
    np.testing.assert_allclose(scorer.score(QUERY, RELEVANT), packaged_scorer.score(QUERY, RELEVANT))


@pytest.mark.parametrize("spec", ["/nonexistent/model/folder", "./missing-model"])
def test_missing_local_path(spec):
    with pytest.raises(rerank.ModelLoadError, match="not a folder"):
        rerank.load_scorer(spec, allow_fallback=False)
    assert rerank.load_scorer(spec).info.fallback_reason


def test_corrupt_model_folder_falls_back(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(rerank.ModelLoadError, match="unreadable"):
        rerank.load_scorer(str(tmp_path), allow_fallback=False)
    assert "unreadable" in rerank.load_scorer(str(tmp_path)).info.fallback_reason


FILLER = " ".join(f"The committee reviewed item {i} of the quarterly budget and approved the minutes." for i in range(80))
NEEDLE = "Artificial intelligence will transform medicine and science in the coming decade."


def test_long_document_best_chunk_finds_a_late_passage(packaged_scorer):
    long_doc = FILLER + " " + NEEDLE
    truncated, chunked = (packaged_scorer.score(QUERY, [long_doc], long_documents=mode)[0] for mode in ("truncate", "chunk"))
    needle_alone = packaged_scorer.score(QUERY, [NEEDLE])[0]
    assert chunked > truncated + 0.1
    assert chunked <= needle_alone + 1e-6  # the best window contains the needle among some filler
    # max_tokens_per_doc cuts the document before chunking: the needle is gone
    cut = packaged_scorer.score(QUERY, [long_doc], long_documents="chunk", max_tokens_per_doc=200)[0]
    assert cut == pytest.approx(truncated, abs=0.025)
    # truncating from the left keeps the end, where the needle is
    left = packaged_scorer.score(QUERY, [long_doc], long_documents="truncate", truncate_left=True)[0]
    assert left > truncated + 0.05


def test_long_document_chunks_with_a_cross_encoder(tiny_scorer):
    long_doc = FILLER * 3 + " " + NEEDLE
    plan = tiny_scorer.plan(QUERY, ["short", long_doc])
    units, owners = plan.units, plan.owners
    assert units[0] == "short" and owners.tolist()[0] == 0 and len(units) > 3 and set(owners[1:].tolist()) == {1}
    assert units[-1].endswith(NEEDLE)
    scores = tiny_scorer.score(QUERY, ["short", long_doc], long_documents="chunk", raw=True)
    per_unit = tiny_scorer.score(QUERY, units[1:], raw=True)
    assert scores[1] == pytest.approx(per_unit.max(), rel=1e-5)


def test_rank_scores_each_text_once_and_reports_duplicates(packaged_scorer):
    texts = [RELEVANT[0], UNRELATED[0], RELEVANT[0]]
    ranking = rerank.rank(QUERY, texts, scorer=packaged_scorer)
    assert [r.index for r in ranking] == [0, 1] and ranking.duplicates == [rerank.Duplicate(2, 0)]
    every = ranking.with_duplicates()
    assert [r.index for r in every] == [0, 2, 1] and every[0].score == every[1].score > every[2].score


@pytest.mark.parametrize(("option", "value"), [("long_documents", "split"), ("max_tokens_per_doc", 0)])
def test_bad_long_document_options(packaged_scorer, option, value):
    with pytest.raises(rerank.RerankError, match=option):
        packaged_scorer.score(QUERY, ["a"], **{option: value})


def test_default_policy_fuses_first_stage_distance_for_embedding_models(packaged_scorer, tiny_scorer):
    docs = pd.DataFrame({"text": RELEVANT + UNRELATED, "distance": [0.9, 0.2, 0.5, 0.1, 0.3, 0.8]})
    result = rerank.rerank_table(QUERY, docs, scorer=packaged_scorer, max_documents=10)
    model = packaged_scorer.score(QUERY, docs["text"].tolist()).astype(float)
    expected = fuse(model, -docs["distance"].to_numpy(), method="interpolate", weight=0.7)
    assert result.fused
    np.testing.assert_allclose(result.table.sort_index()["rank"].to_numpy(), expected)
    # a distance column that is not all numbers is ignored, not an error
    broken = docs.assign(distance=[0.1, None, "far", 0.2, 0.3, 0.4])
    plain = rerank.rerank_table(QUERY, broken, scorer=packaged_scorer, max_documents=10)
    assert not plain.fused
    np.testing.assert_allclose(plain.table.sort_index()["rank"].to_numpy(), model, rtol=1e-6)
    # a cross-encoder's score is used alone under the default policy
    ce = rerank.rerank_table(QUERY, docs, scorer=tiny_scorer, max_documents=10)
    assert not ce.fused
    assert DEFAULT_POLICY.method_for("cross-encoder") == "none"
    assert "0.7 x min-max(model)" in DEFAULT_POLICY.describe("embedding")
    rrf = rerank.rerank_table(QUERY, docs, scorer=packaged_scorer, max_documents=10,
                            policy=rerank.ScoringPolicy(fusion="rrf", weight=0.5))
    assert rrf.fused and rrf.table["rank"].max() <= 1.0


def test_plan_batches_keeps_padded_size_within_budget():
    lengths = [300, 40, 200, 45, 512, 60, 180, 41]
    batches = plan_batches(lengths, token_budget=600, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every item once
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 600
        assert len(b) <= 3
    assert batches[0] == [4]  # longest first, alone
    assert padding_waste(lengths, batches) < padding_waste(lengths, [list(range(len(lengths)))])


def test_cross_encoder_pair_scores_are_cached(tiny_scorer):
    texts = [f"cache probe {i} " + RELEVANT[i % 3] for i in range(6)]
    before = (tiny_scorer.cache.hits, tiny_scorer.cache.misses)
    first = tiny_scorer.score(QUERY, texts)
    middle = (tiny_scorer.cache.hits, tiny_scorer.cache.misses)
    again = tiny_scorer.score(QUERY, texts[::-1])
    after = (tiny_scorer.cache.hits, tiny_scorer.cache.misses)
    assert middle[1] - before[1] == 6 and after[0] - middle[0] == 6 and after[1] == middle[1]
    np.testing.assert_array_equal(again, first[::-1])
    raw = tiny_scorer.score(QUERY, texts, raw=True)  # raw logits are cached apart from the sigmoid
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), first, rtol=1e-5)
    other_query = tiny_scorer.score("a different question", texts)
    assert not np.allclose(other_query, first)


def test_concurrent_requests_share_forward_passes(tiny_scorer):
    from scoring import ranking

    requests = [(f"question {n} about {topic}", [f"{topic} fact {k} for request {n}" for k in range(6)])
                for n, topic in enumerate(["bread", "football", "tulips", "AI"])]
    prepared = [ranking.prepare(tiny_scorer, q, d) for q, d in requests]
    before = tiny_scorer.pool.batches_run
    together = ranking.complete_many(prepared)
    shared = tiny_scorer.pool.batches_run - before
    apart = [rerank.rank(q, d, scorer=rerank.Scorer(tiny_scorer.info, tiny_scorer, cache_bytes=0)) for q, d in requests]
    for a, b in zip(together, apart, strict=True):
        assert [r.index for r in a] == [r.index for r in b]
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=1e-5)
    assert shared <= tiny_scorer.workers < len(requests)  # 24 pairs of 4 requests in one round of batches


def test_a_wire_table_keeps_cells_as_sent_so_bad_text_is_named_not_crashed_on():
    from web.gradio_io import documents_from_payload

    table = documents_from_payload({"headers": ["url", "text"], "data": [["\ud800", "a"], ["u", "b\udfff"]]},
                                   max_documents=10)
    assert table["url"].tolist() == ["\ud800", "u"]  # a string dtype would refuse these before any check ran
    with pytest.raises(rerank.RerankError, match=r"documents\[1\] holds a lone surrogate \(U\+DFFF\)"):
        rerank.rerank("q", table, scorer=rerank.packaged_scorer())
