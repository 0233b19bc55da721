"""The quality harness: metrics against hand-computed rankings, run files, and a real collection slice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import app as app_module
import evaluate
import rerank as core
from config import Settings


def test_graded_ndcg_mrr_recall_by_hand():
    qrels = {"q1": {"d1": 3, "d2": 1, "d3": 0, "d9": 2}}
    run = {"q1": [("d2", 3.0), ("d1", 2.0), ("d3", 1.0)]}
    means, per_query = evaluate.measure(qrels, run)
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert means["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-4)
    assert means["mrr@10"] == pytest.approx(1.0)  # d2 (label 1) is relevant at threshold 1
    assert means["recall@10"] == pytest.approx(2 / 3)  # d1, d2 of the three relevant (d9 missed)
    strict, _ = evaluate.measure(qrels, run, mrr_threshold=2)
    assert strict["mrr@10"] == pytest.approx(0.5)  # first label >= 2 is d1 at rank 2


def test_binary_labels_and_missing_queries():
    qrels = {"a": {"x": 1}, "b": {"y": 1}}
    run = {"a": [("z", 2.0), ("x", 1.0)], "b": [("w", 1.0)]}
    means, per_query = evaluate.measure(qrels, run)
    assert per_query["a"]["ndcg@10"] == pytest.approx(1 / math.log2(3), abs=1e-4)
    assert per_query["a"]["mrr@10"] == pytest.approx(0.5) and per_query["b"]["ndcg@10"] == 0.0
    assert means["ndcg@10"] == pytest.approx((1 / math.log2(3)) / 2, abs=1e-4)


def test_run_file_round_trip(tmp_path):
    run = {"2": [("b", 0.5), ("a", 1.25)], "10": [("c", -1.0)]}
    path = tmp_path / "run.trec"
    evaluate.write_run(run, path, tag="t")
    lines = path.read_text().splitlines()
    assert lines[0] == "2 Q0 a 1 1.250000 t" and lines[1] == "2 Q0 b 2 0.500000 t" and lines[2] == "10 Q0 c 1 -1.000000 t"
    assert evaluate.read_run(path) == {"2": [("a", 1.25), ("b", 0.5)], "10": [("c", -1.0)]}


def test_fusion_rules():
    model = np.array([0.9, 0.1, 0.5])
    first = np.array([1.0, 3.0, 2.0])
    rrf = core.fuse(model, first, method="rrf", rrf_k=60)
    expected = 0.5 / (60 + np.array([1, 3, 2])) + 0.5 / (60 + np.array([3, 1, 2]))
    np.testing.assert_allclose(rrf, expected * 61)
    interp = core.fuse(model, first, method="interpolate", weight=0.75)
    np.testing.assert_allclose(interp, 0.75 * np.array([1, 0, 0.5]) + 0.25 * np.array([0, 1, 0.5]))
    assert core.fuse(model, first, method="none").tolist() == model.tolist()
    with pytest.raises(core.RerankError, match="finite"):
        core.fuse(model, np.array([1.0, np.nan, 2.0]))
    assert core.ranks_of(np.array([1.0, 1.0, 2.0])).tolist() == [2, 3, 1]


def test_document_text_does_not_repeat_titles():
    assert evaluate.document_text("Wing study .", "wing study . results") == "wing study . results"
    assert evaluate.document_text("Title", "Body") == "Title Body"
    assert evaluate.document_text("", "Body") == "Body"


def test_harness_on_a_slice_beats_the_first_stage(eval_dir, packaged_scorer, tmp_path, capsys):
    service = app_module.build_service(Settings(), packaged_scorer)
    report = evaluate.evaluate(eval_dir / "cranfield", service=service, policy=evaluate.SCORINGS["rrf"], limit=40)
    assert report["queries"] == 40
    assert report["reranked"]["ndcg@10"] > report["first_stage"]["ndcg@10"]
    assert sum(report["per_query"].values()) == 40
    run_out, plot_out = tmp_path / "run.trec", tmp_path / "plot.png"
    code = evaluate.main([str(eval_dir / "trec-dl-2019-passage"), "--model", str(core.packaged_model_path()),
                          "--backend", "torch", "--limit", "5", "--json", "--run-out", str(run_out), "--plot", str(plot_out)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == 5 and set(summary["first_stage"]) == {"ndcg@10", "mrr@10", "recall@10"}
    assert summary["backend"] == "torch" and summary["scoring"] == "default"
    rescored = evaluate.measure(evaluate.load_dataset(eval_dir / "trec-dl-2019-passage").qrels | {},
                                {q: d for q, d in evaluate.read_run(run_out).items()}, mrr_threshold=2)[0]
    assert rescored["ndcg@10"] == pytest.approx(summary["reranked"]["ndcg@10"], abs=1e-4)  # the run file scores the same
    assert plot_out.stat().st_size > 10_000


def test_missing_collection_is_a_clear_error(tmp_path, capsys):
    assert evaluate.main([str(tmp_path), "--model", str(core.packaged_model_path())]) == 2
    assert "not a BEIR-layout folder" in capsys.readouterr().err
