"""Fine-tuning on a tiny built collection end to end: mine hard negatives from the hybrid index, train an epoch in the
model's own family, judge base and fine-tuned on held-out queries, write or refuse, resume, serve the written checkpoint
through ``python app.py``; and every bad input named."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace

import httpx
import pytest

import evaluate
import rerank
from evaluation import fine_tune as ft
from evaluation import mining
from scoring.checkpoint import packaged_model_path
from scoring.synthetic import build_causal_reranker
from service import assembly
from service.settings import Settings
from tests.support import ROOT, TOPICS, build_collection, free_port


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return build_collection(tmp_path_factory.mktemp("ft-collection"))


@pytest.fixture(scope="module")
def written(collection, tmp_path_factory):
    """The packaged embedding model fine-tuned on the collection (kept even if not better): (folder, report)."""
    out = tmp_path_factory.mktemp("ft") / "model"
    cache = tmp_path_factory.mktemp("ft-cache")
    settings = Settings(cache_dir=cache)
    base = rerank.packaged_scorer()
    report = ft.fine_tune(collection, base=base, options=ft.Options(out=out, seed=2, epochs=1, keep_worse=True),
                          service_for=lambda scorer: assembly.build(settings, scorer=scorer), cache_dir=cache,
                          progress=False)
    return out, report


def test_an_embedding_model_is_trained_as_one_and_judged_on_held_out_queries(written):
    out, report = written
    assert report["mode"] == "embedding" and report["queries"] == {"train": 12, "validation": 0, "held_out": 12}
    assert report["training_rows"] == 12 * 5  # every relevant passage of every training query, with mined negatives
    for stage in ("base", "fine_tuned"):
        assert set(report["reranking"][stage]) == {"ndcg@10", "mrr@10"}
        assert set(report["end_to_end"][stage]["reranked"]) == {"ndcg@10", "mrr@10", "recall@100"}
    e2e = report["end_to_end"]  # an embedding model is judged where it serves: the app's pipeline
    assert report["gain"] == pytest.approx(e2e["fine_tuned"]["reranked"]["ndcg@10"] - e2e["base"]["reranked"]["ndcg@10"])
    assert report["written"] == str(out) and (out / "modules.json").is_file()
    assert json.loads((out / "fine_tune.json").read_text())["gain"] == report["gain"]
    assert not out.with_name(out.name + ".training").exists()  # the training state goes once the run ends
    tuned = rerank.load_scorer(str(out), allow_fallback=False, backend="torch")
    assert tuned.info.mode == "embedding" and tuned.fingerprint != rerank.packaged_scorer().fingerprint


def test_the_written_checkpoint_serves_through_app_py(written, tmp_path):
    out, _ = written
    port = free_port()
    env = {**os.environ, "RERANK_MODEL": str(out), "RERANK_BACKEND": "torch", "HF_HUB_OFFLINE": "1",
           "RAG_AUGMENT_CACHE": str(tmp_path / "cache"), "GRADIO_SERVER_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
            assert process.poll() is None, process.stderr.read()
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=30).json()
        assert info["model"]["name"] == out.name and info["model"]["mode"] == "embedding"
        code = TOPICS["bread"][0]
        answer = httpx.post(f"http://127.0.0.1:{port}/v2/rerank", json={
            "query": f"tell me about {code}", "documents": ["Yeast makes bread dough rise.", "The match ended 0-0."]},
            timeout=60).json()
        expected = rerank.rank(f"tell me about {code}", ["Yeast makes bread dough rise.", "The match ended 0-0."],
                               scorer=rerank.load_scorer(str(out), allow_fallback=False, backend="torch"))
        assert [r["index"] for r in answer["results"]] == [r.index for r in expected]
    finally:
        process.terminate()
        process.wait(30)


def test_a_model_no_better_than_the_base_is_not_written(collection, tmp_path, monkeypatch, capsys):
    def untrained(base, rows, options, **_):  # the base itself, saved as training would save it: no gain
        shutil.copytree(base.info.path, options.work / "model")
        return options.work / "model"

    monkeypatch.setattr(ft, "train_model", untrained)
    monkeypatch.setenv("RAG_AUGMENT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "model"
    code = evaluate.main([str(collection), "--fine-tune", str(out), "--model", str(packaged_model_path()),
                          "--backend", "torch", "--seed", "2", "--validation-fraction", "0"])
    printed = capsys.readouterr().out
    assert code == 1 and not out.exists()
    assert "not written: it did not beat the base on the held-out queries (end-to-end hybrid + rerank nDCG@10 short " \
           "by 0.0000); --keep-worse writes it anyway" in printed


def test_a_cross_encoder_is_trained_as_a_cross_encoder(collection, tiny_cross_encoder_dir, tmp_path):
    settings = Settings(cache_dir=tmp_path / "cache")
    base = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="torch")
    out = tmp_path / "ce"
    report = ft.fine_tune(collection, base=base, options=ft.Options(out=out, epochs=1, keep_worse=True, seed=3),
                          service_for=lambda scorer: assembly.build(settings, scorer=scorer), cache_dir=tmp_path / "cache",
                          progress=False)
    assert report["mode"] == "cross-encoder" and "end_to_end" not in report
    assert report["gain"] == pytest.approx(report["reranking"]["fine_tuned"]["ndcg@10"]
                                           - report["reranking"]["base"]["ndcg@10"])
    assert report["training_rows"] == 12 * 5
    tuned = rerank.load_scorer(str(out), allow_fallback=False, backend="torch")
    assert tuned.info.mode == "cross-encoder" and tuned.fingerprint != base.fingerprint


def test_a_stopped_run_resumes_from_its_last_epoch_on_every_core(collection, tmp_path):
    import torch
    from transformers import TrainerCallback

    base = rerank.packaged_scorer()
    dataset, _ = ft.load_collection(collection)
    options = ft.Options(out=tmp_path / "model", epochs=2, seed=1)
    train, _ = ft.split(dataset, None, options)
    index = ft.end_to_end.open_collection_index(collection, dataset, base, tmp_path / "cache")
    rows, _ = mining.mine(train, index, options.negatives, progress=False)
    index.close()

    class StopAfterOneEpoch(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            control.should_training_stop = True

    class FirstStep(TrainerCallback):
        step = threads = None

        def on_step_end(self, args, state, control, **kwargs):
            FirstStep.step = FirstStep.step or state.global_step
            FirstStep.threads = torch.get_num_threads()

    ft.train_model(base, rows, options, progress=False, callbacks=[StopAfterOneEpoch()])
    saved = sorted(options.work.glob("checkpoint-*"))
    assert len(saved) == 1  # the first epoch's state
    per_epoch = int(saved[0].name.split("-")[1])
    served = torch.get_num_threads()
    torch.set_num_threads(1)  # as a CPU engine sets it for the whole process: one thread a worker
    try:
        ft.train_model(base, rows, options, progress=False, callbacks=[FirstStep()])
        assert FirstStep.step == per_epoch + 1  # the second run went on from the first epoch's end
        assert FirstStep.threads == os.cpu_count() and torch.get_num_threads() == 1  # trained on all, then as it was
    finally:
        torch.set_num_threads(served)
    with pytest.raises(ft.FineTuneError, match="training state from a run with other settings"):
        ft.train_model(base, rows, ft.Options(out=options.out, epochs=3, seed=1), progress=False)


def _refused(capsys, *argv) -> str:
    assert evaluate.main([str(a) for a in argv] + ["--model", str(packaged_model_path()), "--backend", "torch"]) == 2
    return capsys.readouterr().err


def test_bad_inputs_are_refused_naming_the_field(collection, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAG_AUGMENT_CACHE", str(tmp_path / "cache"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    assert "exists and is not empty" in _refused(capsys, collection, "--fine-tune", busy)
    assert (busy / "keep.txt").read_text() == "mine"
    assert "--epochs must be at least 1, got 0" in _refused(capsys, collection, "--fine-tune", tmp_path / "a",
                                                            "--epochs", "0")
    assert "--validation-fraction must be at least 0 and below 1, got 1.0" in _refused(
        capsys, collection, "--fine-tune", tmp_path / "a", "--validation-fraction", "1")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q", "passage": "p", "label": 1}\n{"query": "q", "passage": "r", "label": "yes"}\n')
    assert "pairs.jsonl line 2: label must be a number, got 'yes'" in _refused(capsys, pairs, "--fine-tune", tmp_path / "b")
    pairs.write_text('{"query": "q", "label": 1}\n')
    assert "pairs.jsonl line 1: no 'passage' field" in _refused(capsys, pairs, "--fine-tune", tmp_path / "b")
    few = tmp_path / "few.csv"
    few.write_text("query,passage,label\nwhat,one,1\nwhat,two,0\nwho,three,1\n")
    assert "2 judged queries are too few" in _refused(capsys, few, "--fine-tune", tmp_path / "c")
    causal = build_causal_reranker(tmp_path / "causal")
    base = rerank.load_scorer(str(causal), allow_fallback=False)
    with pytest.raises(ft.FineTuneError, match="is a causal-LM reranker"):
        ft.train_model(base, [{"query": "q", "positive": "p", "negatives": []}], ft.Options(out=tmp_path / "d"))


def test_a_pairs_file_without_a_corpus_fine_tunes_a_recipe_chosen_on_validation_and_json_is_all_stdout_carries(
        tmp_path, capsys, monkeypatch):
    rows = [{"query": f"what do you know about {code}", "passage": text, "label": 1}
            for code, texts in TOPICS.values() for text in texts[:3]]
    rows += [{"query": f"facts on {code}", "passage": text, "label": 1} for code, texts in TOPICS.values()
             for text in texts[3:]]
    rows += [{"query": f"facts on {code}", "passage": TOPICS["bread"][1][0], "label": 0}
             for topic, (code, _) in TOPICS.items() if topic != "bread"]
    pairs = tmp_path / "labels.csv"
    import pandas as pd

    pd.DataFrame(rows).to_csv(pairs, index=False)
    monkeypatch.setenv("RAG_AUGMENT_CACHE", str(tmp_path / "cache"))
    before = _scoring_threads()
    code = evaluate.main([str(pairs), "--fine-tune", str(tmp_path / "m"), "--keep-worse", "--json",
                          "--base", str(packaged_model_path()), "--validation-fraction", "0.34"])
    base = assembly.load_model(replace(Settings.from_env(), calibration=None), str(packaged_model_path()))  # the run's
    assert _scoring_threads() - before <= base.workers  # each candidate and the chosen one let go once judged
    out, err = capsys.readouterr()
    report = json.loads(out)  # the report alone: the trainer's logs, its estimate and the progress went to stderr
    assert code == 0 and report["dataset"] == "labels"
    assert report["queries"] == {"train": 4, "validation": 2, "held_out": 6}
    assert "loss" in err and report["written"] == str(tmp_path / "m")
    assert err.count("training: ") == 3 and "s an epoch" in err  # each candidate's estimate, from its first step
    assert (tmp_path / "m" / "modules.json").is_file()
    chosen = report["recipes"]
    figures = [c["validation"]["ndcg@10"] for c in chosen["candidates"]]
    assert [c["negatives"] for c in chosen["candidates"]] == [4, 4, 0] and set(chosen["base"]) == {"ndcg@10", "mrr@10"}
    assert chosen["chosen"] == chosen["candidates"][figures.index(max(figures))]["recipe"]  # the best on validation
    assert chosen["beats_base"] == (max(figures) > chosen["base"]["ndcg@10"])  # --keep-worse wrote it either way
    judged = rerank.load_scorer(str(tmp_path / "m"), allow_fallback=False, backend="torch")
    assert judged.fingerprint != rerank.packaged_scorer().fingerprint  # the chosen one was written, the others removed
    assert not (tmp_path / "m.training").exists()


def _scoring_threads() -> int:
    return sum(thread.name.startswith("scorer-worker") for thread in threading.enumerate())


def test_the_margin_keeps_unjudged_relevant_passages_out_of_the_negatives(collection, tmp_path):
    """One passage judged a query (as a user's labels often are): unfiltered, mining takes the topic's other passages,
    relevant but unjudged, as negatives; the base model's margin keeps many of them out, and every row keeps its
    width."""
    from dataclasses import replace

    base = rerank.packaged_scorer()
    dataset, _ = ft.load_collection(collection)
    one_each = replace(dataset, qrels={q: {sorted(j)[0]: 1} for q, j in sorted(dataset.qrels.items())[:12]})
    index = ft.end_to_end.open_collection_index(collection, dataset, base, tmp_path / "cache")
    try:
        plain, _ = mining.mine(one_each, index, 4, progress=False)
        filtered, mined = mining.mine(one_each, index, 4, progress=False, scorer=base, margin=0.05)
    finally:
        index.close()
    before, after = mining.false_negatives(plain, dataset.qrels), mining.false_negatives(filtered, dataset.qrels)
    print(f"false negatives: {before:.0%} unfiltered, {after:.0%} with the margin; {mined}")
    assert before > 0.25 and after < before - 0.1  # deterministic: the packaged model, fixed labels
    assert mined["dropped_by_margin"] > 0 and mined["margin"] == 0.05
    assert all(len(r["negatives"]) == 4 for r in filtered)  # filled with random unjudged passages where needed


@pytest.mark.parametrize("margin", [-0.1, 1.0])
def test_a_margin_out_of_range_is_refused_naming_the_option(margin, tmp_path):
    with pytest.raises(ft.FineTuneError, match=f"--negative-margin must be at least 0 and below 1, got {margin}"):
        ft.Options(out=tmp_path / "m", margin=margin).check()


def test_an_embedding_model_trains_with_activations_for_a_bounded_number_of_tokens(tmp_path, monkeypatch):
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    base = rerank.packaged_scorer()
    rows = [{"query": f"q{n}", "positive": f"p{n}", "negatives": [f"n{n}"]} for n in range(4)]
    options = ft.Options(out=tmp_path / "m")
    monkeypatch.setattr(ft, "TRAIN_TOKEN_BUDGET", 2 * base.info.max_length)
    trainer = ft._embedding_trainer(base, rows, options, progress=False)
    assert isinstance(trainer.loss, CachedMultipleNegativesRankingLoss) and trainer.loss.mini_batch_size == 2
    monkeypatch.setattr(ft, "TRAIN_TOKEN_BUDGET", 1)  # never below one sequence a pass
    assert ft._embedding_trainer(base, rows, options, progress=False).loss.mini_batch_size == 1
