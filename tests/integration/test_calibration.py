"""Calibrated scores: fitted on a small built collection by ``evaluate.py --calibrate``, served by every face as the map
of the model's scores (the order unchanged), refused for another model, and every bad input named."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import numpy as np
import pytest

import app as app_module
import evaluate
from scoring.calibration import Calibration, CalibrationError
from scoring.checkpoint import packaged_model_path
from service import assembly
from service.settings import Settings
from tests.support import ROOT, build_collection, free_port, serve_in_thread, stop_server

QUERY = "tell me about sourdough bread and the oven"
DOCS = ["Knead the dough and let the bread rise for an hour.", "The striker scored a goal in the last minute.",
        "Lava flows down the side of the erupting volcano.", "A baker shapes the bread before it goes in the oven.",
        "Tomatoes need full sun and regular watering."]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return build_collection(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="module")
def fitted(collection, tmp_path_factory, packaged_scorer):
    """(the calibration file, the report) fitted for the packaged model on the built collection."""
    out = tmp_path_factory.mktemp("calibration") / "calibration.json"
    service = assembly.build(Settings(), scorer=packaged_scorer)
    from evaluation.calibrate import calibrate

    report = calibrate(collection, service=service, out=out, seed=1)
    return out, report


def test_the_fit_reports_on_held_out_queries_and_names_its_model(fitted, packaged_scorer):
    out, report = fitted
    body = json.loads(out.read_text())
    assert body["model"] == packaged_scorer.info.name and body["fingerprint"] == packaged_scorer.fingerprint
    assert report["queries"] == {"train": 12, "test": 12} and report["pairs"]["test"] == 12 * 30
    assert 0 <= report["after"]["ece"] <= 1 and report["after"]["brier"] <= report["before"]["brier"]
    assert body["x"] == sorted(body["x"]) and all(0 <= y <= 1 for y in body["y"])


def test_every_face_serves_the_map_of_the_model_scores_in_the_same_order(fitted, packaged_scorer):
    out, _ = fitted
    calibration = Calibration.read(out)
    plain = assembly.build(Settings(), scorer=packaged_scorer).rank(QUERY, DOCS)
    service = assembly.build(Settings(calibration=str(out)), scorer=packaged_scorer)
    calibrated = service.rank(QUERY, DOCS)
    assert [r.index for r in calibrated] == [r.index for r in plain]  # the order is the model's own
    np.testing.assert_allclose(calibrated.scores(len(DOCS)), calibration(plain.scores(len(DOCS))), atol=1e-12)
    assert np.ptp(calibrated.scores(len(DOCS))) > 0  # the map is not flat over these scores
    raw = service.rank(QUERY, DOCS, raw=True)
    assert [r.score for r in raw] != [r.score for r in calibrated]  # raw scores stay the model's logits/cosines
    url, server = serve_in_thread(app_module.build_server(Settings(calibration=str(out)), packaged_scorer,
                                                         service=service, mcp_server=False))
    try:
        answer = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS, "min_score": 0.5}, timeout=60)
        results = answer.json()["results"]
        expected = [(r.index, r.score) for r in calibrated if r.score >= 0.5]
        assert [(r["index"], pytest.approx(r["relevance_score"])) for r in results] == expected
        assert answer.json()["meta"]["min_score"]["dropped"] == len(DOCS) - len(expected)
        info = httpx.get(f"{url}/info", timeout=30).json()
        assert info["calibration"]["file"] == out.name and info["calibration"]["method"] == "isotonic"
        assert httpx.get(f"{url}/info", timeout=30).status_code == 200
    finally:
        stop_server(server)


def test_a_calibration_for_another_model_is_refused_naming_both(fitted, tiny_scorer, packaged_scorer):
    out, _ = fitted
    with pytest.raises(CalibrationError, match=re.escape(f"fitted for {packaged_scorer.info.name}, not the served model "
                                                         f"{tiny_scorer.info.name};")):
        assembly.build(Settings(calibration=str(out)), scorer=tiny_scorer)


def test_app_refuses_to_start_with_another_models_calibration(fitted, tmp_path):
    out, _ = fitted
    other = json.loads(out.read_text()) | {"model": "someone/else", "fingerprint": "cross-encoder:else:0"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    env = {**os.environ, "RERANK_CALIBRATION": str(tmp_path / "other.json"), "RERANK_BACKEND": "torch",
           "RERANK_MODEL": str(packaged_model_path()), "HF_HUB_OFFLINE": "1", "RAG_AUGMENT_CACHE": str(tmp_path / "cache"),
           "GRADIO_SERVER_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "fitted for someone/else" in done.stderr and "not the served model" in done.stderr


@pytest.mark.parametrize(("body", "message"), [
    ("not json", "cannot read it as JSON"),
    ('{"model": "m", "fingerprint": "f"}', "field 'method' must be text"),
    ('{"model": "m", "fingerprint": "f", "method": "magic"}', "method must be one of isotonic, platt"),
    ('{"model": "m", "fingerprint": "f", "method": "isotonic", "x": [0, 1], "y": [0]}', "of one length"),
    ('{"model": "m", "fingerprint": "f", "method": "isotonic", "x": [0, 1], "y": [0, 2]}', "within \\[0, 1\\]"),
    ('{"model": "m", "fingerprint": "f", "method": "platt", "a": "big"}', "finite numbers 'a' and 'b'"),
])
def test_a_malformed_calibration_file_is_refused_naming_the_field(tmp_path, body, message):
    path = tmp_path / "c.json"
    path.write_text(body)
    with pytest.raises(CalibrationError, match=message):
        Calibration.read(path)
    with pytest.raises(CalibrationError, match=message):
        assembly.build(Settings(calibration=str(path)))  # before any model loads


def test_platt_scaling_round_trips(tmp_path):
    from scoring.calibration import fit

    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 400)
    labels = (rng.uniform(0, 1, 400) < scores).astype(float)
    platt = fit(scores, labels, method="platt", model="m", fingerprint="f")
    platt.write(tmp_path / "p.json")
    again = Calibration.read(tmp_path / "p.json")
    np.testing.assert_allclose(again(scores), platt(scores))
    assert np.all(np.diff(again(np.sort(scores))) >= 0) and again.a > 0


def _fails(capsys, *argv) -> str:
    assert evaluate.main([str(a) for a in argv] + ["--model", str(packaged_model_path()), "--backend", "torch"]) == 2
    return capsys.readouterr().err


def test_bad_collections_are_refused_naming_what_is_wrong(tmp_path, capsys, collection):
    out = tmp_path / "c.json"
    few = build_collection(tmp_path / "few", per_topic=1)
    for path in few.glob("qrels/*.tsv"):  # three judged queries left
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:16]) + "\n")
    assert "3 judged queries are too few" in _fails(capsys, few, "--calibrate", out)
    assert "at least 4 judged queries" in _fails(capsys, few, "--calibrate", out)
    none = build_collection(tmp_path / "none")
    (none / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nnobody\tbread-0\t1\n")
    assert "no judged queries" in _fails(capsys, none, "--calibrate", out)
    words = build_collection(tmp_path / "words")
    (words / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq00\tbread-0\thigh\n")
    assert "line 2: the label (third column) must be a whole number, got 'high'" in _fails(capsys, words, "--calibrate",
                                                                                          out)
    empty = build_collection(tmp_path / "empty")
    import gzip

    with gzip.open(empty / "corpus.jsonl.gz", "wt") as handle:
        handle.write('{"_id": "a", "title": "t"}\n')
    assert "every document needs an '_id' and a 'text'" in _fails(capsys, empty, "--calibrate", out)
    assert "--test-fraction must be between 0 and 1" in _fails(capsys, collection, "--calibrate", out,
                                                               "--test-fraction", "1.5")
    assert not out.exists()
