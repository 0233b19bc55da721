"""Every engine scores like fp32 sentence-transformers on a fixed probe; unusable engines fall back to torch and say why."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import rerank
from scoring import choice, engines
from scoring.batching import plan_batches
from scoring.engines.st_engine import ST_BACKEND
from service.settings import Settings

RUNNABLE = [b for b in ("torch", "onnxruntime", "openvino") if engines.unavailable(b) is None]


@pytest.fixture(scope="module")
def backend_cache(tmp_path_factory):
    """One cache folder for the module, so each checkpoint is exported once."""
    return tmp_path_factory.mktemp("backend-cache")


@pytest.fixture(scope="module")
def st_embedder():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(rerank.packaged_model_path()), device="cpu")


@pytest.fixture(scope="module")
def st_cross_encoder(tiny_cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(tiny_cross_encoder_dir), device="cpu")


def _ranks(scores: np.ndarray) -> list[int]:
    return np.argsort(-np.asarray(scores), kind="stable").tolist()


@pytest.mark.parametrize("name", RUNNABLE)
def test_embedding_backend_matches_sentence_transformers(name, backend_cache, st_embedder):
    docs = choice.probe_documents()
    expected = st_embedder.encode_document(docs, normalize_embeddings=True) @ \
        st_embedder.encode_query([choice.PROBE_QUERY], normalize_embeddings=True)[0]
    scorer = rerank.load_scorer(str(rerank.packaged_model_path()), allow_fallback=False, backend=name,
                              cache_dir=backend_cache)
    assert scorer.backend.backend == name and "RERANK_BACKEND" in scorer.backend.how
    got = scorer.score(choice.PROBE_QUERY, docs, raw=True, long_documents="truncate")  # as sentence-transformers does
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert _ranks(got)[:5] == _ranks(expected)[:5]


@pytest.mark.parametrize("name", RUNNABLE)
def test_cross_encoder_backend_matches_cross_encoder_predict(name, backend_cache, tiny_cross_encoder_dir,
                                                             st_cross_encoder):
    import torch

    docs = choice.probe_documents()
    expected = st_cross_encoder.predict([(choice.PROBE_QUERY, d) for d in docs], activation_fn=torch.nn.Identity())
    scorer = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend=name, cache_dir=backend_cache)
    got = scorer.score(choice.PROBE_QUERY, docs, raw=True, long_documents="truncate")  # as sentence-transformers does
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert _ranks(got)[:5] == _ranks(expected)[:5]


def test_unavailable_backend_serves_on_torch_and_says_why(tmp_path, tiny_cross_encoder_dir, monkeypatch):
    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: False)
    scorer = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="torch-bf16", cache_dir=tmp_path)
    assert scorer.backend.backend == "torch" and "no native bf16" in scorer.backend.how
    with pytest.raises(rerank.ModelLoadError, match="RERANK_BACKEND"):
        rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="tensorrt")
    with pytest.raises(ValueError, match="RERANK_BACKEND"):
        Settings.from_env({"RERANK_BACKEND": "tensorrt"})
    assert Settings.from_env({}).backend == "auto"


def test_custom_sentence_transformers_modules_run_through_sentence_transformers(tmp_path, st_embedder):
    from sentence_transformers import SentenceTransformer, models

    dense = models.Dense(in_features=384, out_features=64)
    SentenceTransformer(modules=[st_embedder[0], st_embedder[1], dense], device="cpu").save(str(tmp_path / "dense"))
    scorer = rerank.load_scorer(str(tmp_path / "dense"), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    assert scorer.backend.backend == ST_BACKEND
    reference = SentenceTransformer(str(tmp_path / "dense"), device="cpu")
    docs = choice.probe_documents()[:6]
    expected = reference.encode_document(docs, normalize_embeddings=True) @ \
        reference.encode_query(["probe"], normalize_embeddings=True)[0]
    np.testing.assert_allclose(scorer.score("probe", docs, raw=True, long_documents="truncate"), expected, atol=1e-5)


def test_a_damaged_cached_graph_serves_on_torch_and_is_exported_again(tmp_path, tiny_cross_encoder_dir):
    scorer = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    graph = next(tmp_path.glob("backends/*/model.onnx"))
    expected = scorer.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True)
    choice.save_choice(Path(str(tiny_cross_encoder_dir)), scorer._pool.source.layout, tmp_path,
                         choice.Choice("onnxruntime", "measured"))
    graph.write_bytes(b"not an onnx graph")
    damaged = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert damaged.backend.backend == "torch" and "removed it" in damaged.backend.how
    np.testing.assert_allclose(damaged.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True), expected, atol=1e-4)
    assert not graph.exists()
    again = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    assert again.backend.backend == "onnxruntime" and graph.is_file()


@pytest.mark.parametrize(("setting", "gpus", "device"), [
    ("auto", 0, "cpu"), ("auto", 2, "cuda:0"), ("cpu", 2, "cpu"), ("cuda", 1, "cuda:0"), ("cuda:1", 2, "cuda:1"),
    ("CUDA:0", 1, "cuda:0")])
def test_the_device_follows_rerank_device_and_what_is_there(setting, gpus, device):
    assert engines.resolve_device(setting, cuda_count=gpus) == device


@pytest.mark.parametrize(("setting", "gpus", "message"), [
    ("cuda", 0, "RERANK_DEVICE=cuda but this machine has no CUDA device"),
    ("cuda:2", 2, "RERANK_DEVICE=cuda:2 but this machine has 2 CUDA device(s)"),
    ("gpu", 1, "RERANK_DEVICE must be auto, cpu, cuda or cuda:N")])
def test_a_device_that_is_not_there_is_a_clear_error(setting, gpus, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        engines.resolve_device(setting, cuda_count=gpus)


def test_backend_and_device_settle_together():
    assert engines.settle("torch", "auto", cuda_count=1) == ("cuda-fp32", "cuda:0")  # torch on a GPU is CUDA fp32
    assert engines.settle("auto", "auto", cuda_count=1) == ("auto", "cuda:0")
    assert engines.settle("onnxruntime", "auto", cuda_count=1) == ("onnxruntime", "cpu")  # a CPU-only runtime stays
    assert engines.settle("torch", "auto", cuda_count=0) == ("torch", "cpu")
    with pytest.raises(ValueError, match="RERANK_BACKEND=openvino runs on the CPU but RERANK_DEVICE=cuda"):
        engines.settle("openvino", "cuda", cuda_count=1)
    assert engines.backends_for("cpu")[0] == "torch" and engines.backends_for("cuda:0")[0] == "cuda-fp32"
    assert engines.PRECISION["cuda-fp16"] == "fp16" and engines.PRECISION["openvino"] == "fp32"


def test_cuda_engines_say_why_they_cannot_run_here():
    for name in engines.CUDA_BACKENDS:
        assert "no CUDA device" in engines.unavailable(name, "cpu")
    assert "runs on the CPU" in engines.unavailable("onnxruntime", "cuda:0")


def test_cuda_requested_on_a_machine_without_one_is_named_at_load(tiny_cross_encoder_dir):
    if engines.cuda_devices():
        pytest.skip("this machine has a GPU")
    with pytest.raises(rerank.ModelLoadError, match="RERANK_DEVICE=cuda but this machine has no CUDA device"):
        rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, device="cuda")
    scorer = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="cuda-fp16", device="auto")
    assert scorer.backend.backend == "torch" and "no CUDA device" in scorer.backend.how  # serves, says why
    assert scorer.backend.device == "cpu" and scorer.backend.as_dict()["precision"] == "fp32"


def test_settings_read_rerank_device():
    assert Settings.from_env({}).device == "auto" and Settings.from_env({"RERANK_DEVICE": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ValueError, match="RERANK_DEVICE must be"):
        Settings.from_env({"RERANK_DEVICE": "tpu"})


def test_device_sized_batching_spreads_a_request_over_the_workers():
    from scoring.batching import spread_budget
    from scoring.loading import batching_for

    assert batching_for("cpu")["token_budget"] == 512 and batching_for("cuda:0")["token_budget"] == 65_536
    lengths = [190] * 50  # a 50-document request of short passages
    assert spread_budget(lengths, 1024, 2) == 1024  # two cores: the usual batches
    sixteen = spread_budget(lengths, 1024, 16)
    assert sixteen < 1024 and len(plan_batches(lengths, sixteen, 32)) <= 16  # one round over 16 cores
    long = [340] * 50  # longer passages: a share is above the budget, batches grow to keep one round
    assert len(plan_batches(long, spread_budget(long, 1024, 16), 32)) <= 16
    assert spread_budget(long, 1024, 1) == 1024 and spread_budget([500], 1024, 16) >= 500
    assert engines.workers_for("cpu") == (os.cpu_count() or 1) and engines.workers_for("cuda:0") == 1
