"""The quality harness: metrics against hand-computed rankings, run files, and a real collection slice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import evaluate
import rerank
from evaluation import harness
from scoring.ranking import fuse, ranks_of
from service import assembly
from service.settings import Settings


def test_graded_ndcg_mrr_recall_by_hand():
    qrels = {"q1": {"d1": 3, "d2": 1, "d3": 0, "d9": 2}}
    run = {"q1": [("d2", 3.0), ("d1", 2.0), ("d3", 1.0)]}
    means, per_query = harness.measure(qrels, run)
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert means["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-4)
    assert means["mrr@10"] == pytest.approx(1.0)  # d2 (label 1) is relevant at threshold 1
    assert means["recall@10"] == pytest.approx(2 / 3)  # d1, d2 of the three relevant (d9 missed)
    strict, _ = harness.measure(qrels, run, mrr_threshold=2)
    assert strict["mrr@10"] == pytest.approx(0.5)  # first label >= 2 is d1 at rank 2


def test_binary_labels_and_missing_queries():
    qrels = {"a": {"x": 1}, "b": {"y": 1}}
    run = {"a": [("z", 2.0), ("x", 1.0)], "b": [("w", 1.0)]}
    means, per_query = harness.measure(qrels, run)
    assert per_query["a"]["ndcg@10"] == pytest.approx(1 / math.log2(3), abs=1e-4)
    assert per_query["a"]["mrr@10"] == pytest.approx(0.5) and per_query["b"]["ndcg@10"] == 0.0
    assert means["ndcg@10"] == pytest.approx((1 / math.log2(3)) / 2, abs=1e-4)


def test_run_file_round_trip(tmp_path):
    run = {"2": [("b", 0.5), ("a", 1.25)], "10": [("c", -1.0)]}
    path = tmp_path / "run.trec"
    harness.write_run(run, path, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0] == "2 Q0 a 1 1.250000 t" and lines[1] == "2 Q0 b 2 0.500000 t" and lines[2] == "10 Q0 c 1 -1.000000 t"
    assert harness.read_run(path) == {"2": [("a", 1.25), ("b", 0.5)], "10": [("c", -1.0)]}


def test_fusion_rules():
    model = np.array([0.9, 0.1, 0.5])
    first = np.array([1.0, 3.0, 2.0])
    rrf = fuse(model, first, method="rrf", rrf_k=60)
    expected = 0.5 / (60 + np.array([1, 3, 2])) + 0.5 / (60 + np.array([3, 1, 2]))
    np.testing.assert_allclose(rrf, expected * 61)
    interp = fuse(model, first, method="interpolate", weight=0.75)
    np.testing.assert_allclose(interp, 0.75 * np.array([1, 0, 0.5]) + 0.25 * np.array([0, 1, 0.5]))
    assert fuse(model, first, method="none").tolist() == model.tolist()
    with pytest.raises(rerank.RerankError, match="finite"):
        fuse(model, np.array([1.0, np.nan, 2.0]))
    assert ranks_of(np.array([1.0, 1.0, 2.0])).tolist() == [2, 3, 1]


def test_document_text_does_not_repeat_titles():
    assert harness.document_text("Wing study .", "wing study . results") == "wing study . results"
    assert harness.document_text("Title", "Body") == "Title Body"
    assert harness.document_text("", "Body") == "Body"


def test_harness_on_a_slice_beats_the_first_stage(eval_dir, packaged_scorer, tmp_path, capsys):
    service = assembly.build(Settings(), scorer=packaged_scorer)
    report = harness.evaluate(eval_dir / "cranfield", service=service, policy=harness.SCORINGS["rrf"], limit=10)
    assert report["queries"] == 10
    assert report["reranked"]["ndcg@10"] > report["first_stage"]["ndcg@10"]
    assert sum(report["per_query"].values()) == 10
    run_out, plot_out = tmp_path / "run.trec", tmp_path / "plot.png"
    code = evaluate.main([str(eval_dir / "trec-dl-2019-passage"), "--model", str(rerank.packaged_model_path()),
                          "--backend", "torch", "--limit", "5", "--json", "--run-out", str(run_out), "--plot", str(plot_out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == 5 and set(summary["first_stage"]) == {"ndcg@10", "mrr@10", "recall@10"}
    assert summary["backend"] == "torch" and summary["scoring"] == "default"
    rescored = harness.measure(harness.load_dataset(eval_dir / "trec-dl-2019-passage").qrels | {},
                                {q: d for q, d in harness.read_run(run_out).items()}, mrr_threshold=2)[0]
    assert rescored["ndcg@10"] == pytest.approx(summary["reranked"]["ndcg@10"], abs=1e-4)  # the run file scores the same
    assert plot_out.stat().st_size > 10_000


def test_missing_collection_is_a_clear_error(tmp_path, capsys, monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded for a folder that is not a collection")

    monkeypatch.setattr(evaluate, "evaluation_service", no_models)  # refused first: a first load measures for minutes
    assert evaluate.main([str(tmp_path), "--model", str(rerank.packaged_model_path())]) == 2
    assert "not a BEIR-layout folder (corpus.jsonl[.gz], queries.jsonl, qrels/test.tsv)" in capsys.readouterr().err


def _collection(folder, documents: dict[str, str], queries: dict[str, str], qrels: dict[str, str]):
    """A BEIR-layout collection written by the test."""
    import gzip

    (folder / "qrels").mkdir(parents=True)
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as handle:
        for doc_id, text in documents.items():
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                               "".join(f"{q}\t{d}\t1\n" for q, d in qrels.items()))
    return folder


DOCUMENTS = {
    "code": "Error XK-47b: the coolant pump has overheated; let it cool before restarting.",
    "car": "Automobiles require periodic maintenance such as changing engine oil and rotating tyres.",
    "sloop": "A sloop is a sailing boat with a single mast.",
    "tomato": "Tomatoes need full sun and regular watering.",
    "kettle": "The kettle switched itself off because it got too hot.",
    "bread": "Bread dough rises when yeast ferments its sugars.",
    "train": "High-speed trains run on dedicated tracks at up to 300 km/h.",
    "bike": "Bicycle chains need oil every few hundred kilometres.",
}


def test_end_to_end_reports_every_stage_and_caches_the_index(tmp_path, packaged_scorer, monkeypatch, capsys):
    folder = _collection(tmp_path / "mini", DOCUMENTS,
                         {"q1": "XK-47b", "q2": "car upkeep", "q3": "boat with one mast"},
                         {"q1": "code", "q2": "car", "q3": "sloop"})
    monkeypatch.setenv("RAG_AUGMENT_CACHE", str(tmp_path / "cache"))
    args = [str(folder), "--end-to-end", "--json", "--model", str(rerank.packaged_model_path()), "--backend", "torch",
            "--plot", str(tmp_path / "stages.png")]
    assert evaluate.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == 3 and summary["passages"] == len(DOCUMENTS)
    for stage in ("lexical", "dense", "hybrid", "reranked"):
        assert set(summary[stage]) == {"ndcg@10", "mrr@10", "recall@100"}
        assert all(0 <= v <= 1 for v in summary[stage].values())
        assert summary[stage]["recall@100"] == 1.0  # eight documents: every one is retrieved
    assert summary["hybrid"]["ndcg@10"] >= max(summary["lexical"]["ndcg@10"], summary["dense"]["ndcg@10"])
    assert not summary["index"]["reused"] and (tmp_path / "stages.png").stat().st_size > 5_000
    assert len(list((tmp_path / "cache").glob("index-corpus-*.duckdb"))) == 1
    assert evaluate.main(args) == 0  # the collection's index is cached like any other
    assert json.loads(capsys.readouterr().out)["index"]["reused"]


def test_end_to_end_stages_agree_with_the_pipeline(tmp_path, packaged_scorer):
    from evaluation import end_to_end

    folder = _collection(tmp_path / "mini", DOCUMENTS, {"q1": "XK-47b", "q2": "car upkeep"}, {"q1": "code", "q2": "car"})
    service = assembly.build(Settings(), scorer=packaged_scorer)
    report = end_to_end.evaluate_end_to_end(folder, service=service, embedder=packaged_scorer, cache_dir=tmp_path / "c")
    lexical, dense = report["_per_query"]["lexical"], report["_per_query"]["dense"]
    assert lexical["q1"]["mrr@10"] == 1.0 and lexical["q2"]["mrr@10"] < 1.0  # words find the code, not the paraphrase
    assert dense["q2"]["mrr@10"] == 1.0
    assert report["index"]["memory_bytes"] > 8 * 384 * 4
    # the reranked stage is the app's pipeline over the collection's (cached) index, order and scores
    import retrieval_client as rc

    dataset = harness.load_dataset(folder)
    index = end_to_end.open_collection_index(folder, dataset, packaged_scorer, tmp_path / "c")
    assert index.stats.reused
    direct = service.retrieve_and_rank("car upkeep", 100, None, mode="hybrid", retriever=rc.LocalRetriever(index))
    assert list(zip(direct.reranked["url"], direct.reranked["rank"], strict=True)) == report["_runs"]["reranked"]["q2"]
    hybrid = index.search("car upkeep", 100)
    assert [(u, -d) for u, d in zip(hybrid["url"], hybrid["distance"], strict=True)] == report["_runs"]["hybrid"]["q2"]
    index.close()


def test_end_to_end_refuses_a_corpus_without_text(tmp_path, monkeypatch, capsys):
    folder = _collection(tmp_path / "empty", {"a": "  ", "b": ""}, {"q1": "anything"}, {"q1": "a"})
    monkeypatch.setenv("RAG_AUGMENT_CACHE", str(tmp_path / "cache"))
    assert evaluate.main([str(folder), "--end-to-end", "--model", str(rerank.packaged_model_path()),
                          "--backend", "torch"]) == 2
    assert "the corpus holds no document with text" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").glob("index-*"))
