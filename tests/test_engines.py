"""Every engine scores like fp32 sentence-transformers on a fixed probe; unusable engines fall back to torch and say why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rerank as core
from config import Settings
from scoring import choice, engines
from scoring.engines.st_engine import ST_BACKEND

RUNNABLE = [b for b in ("torch", "onnxruntime", "openvino") if engines.unavailable(b) is None]


@pytest.fixture(scope="module")
def backend_cache(tmp_path_factory):
    """One cache folder for the module, so each checkpoint is exported once."""
    return tmp_path_factory.mktemp("backend-cache")


@pytest.fixture(scope="module")
def st_embedder():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(core.packaged_model_path()), device="cpu")


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
    scorer = core.load_scorer(str(core.packaged_model_path()), allow_fallback=False, backend=name,
                              cache_dir=backend_cache)
    assert scorer.backend.backend == name and "RERANK_BACKEND" in scorer.backend.how
    got = scorer.score(choice.PROBE_QUERY, docs, raw=True)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert choice.spearman(got, expected) >= choice.MIN_SPEARMAN
    assert _ranks(got)[:5] == _ranks(expected)[:5]


@pytest.mark.parametrize("name", RUNNABLE)
def test_cross_encoder_backend_matches_cross_encoder_predict(name, backend_cache, tiny_cross_encoder_dir,
                                                             st_cross_encoder):
    import torch

    docs = choice.probe_documents()
    expected = st_cross_encoder.predict([(choice.PROBE_QUERY, d) for d in docs], activation_fn=torch.nn.Identity())
    scorer = core.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend=name, cache_dir=backend_cache)
    got = scorer.score(choice.PROBE_QUERY, docs, raw=True)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert choice.spearman(got, expected) >= choice.MIN_SPEARMAN


def test_unavailable_backend_serves_on_torch_and_says_why(tmp_path, tiny_cross_encoder_dir, monkeypatch):
    monkeypatch.setattr(engines, "cpu_has_native_bf16", lambda: False)
    scorer = core.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="torch-bf16", cache_dir=tmp_path)
    assert scorer.backend.backend == "torch" and "no native bf16" in scorer.backend.how
    with pytest.raises(core.ModelLoadError, match="RERANK_BACKEND"):
        core.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="tensorrt")
    with pytest.raises(ValueError, match="RERANK_BACKEND"):
        Settings.from_env({"RERANK_BACKEND": "tensorrt"})
    assert Settings.from_env({}).backend == "auto"


def test_custom_sentence_transformers_modules_run_through_sentence_transformers(tmp_path, st_embedder):
    from sentence_transformers import SentenceTransformer, models

    dense = models.Dense(in_features=384, out_features=64)
    SentenceTransformer(modules=[st_embedder[0], st_embedder[1], dense], device="cpu").save(str(tmp_path / "dense"))
    scorer = core.load_scorer(str(tmp_path / "dense"), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    assert scorer.backend.backend == ST_BACKEND
    reference = SentenceTransformer(str(tmp_path / "dense"), device="cpu")
    docs = choice.probe_documents()[:6]
    expected = reference.encode_document(docs, normalize_embeddings=True) @ \
        reference.encode_query(["probe"], normalize_embeddings=True)[0]
    np.testing.assert_allclose(scorer.score("probe", docs, raw=True), expected, atol=1e-5)


def test_a_damaged_cached_graph_serves_on_torch_and_is_exported_again(tmp_path, tiny_cross_encoder_dir):
    scorer = core.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    graph = next(tmp_path.glob("backends/*/model.onnx"))
    expected = scorer.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True)
    choice.save_choice(Path(str(tiny_cross_encoder_dir)), scorer._pool.source.layout, tmp_path,
                         choice.Choice("onnxruntime", "measured"))
    graph.write_bytes(b"not an onnx graph")
    damaged = core.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert damaged.backend.backend == "torch" and "removed it" in damaged.backend.how
    np.testing.assert_allclose(damaged.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True), expected, atol=1e-4)
    assert not graph.exists()
    again = core.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    assert again.backend.backend == "onnxruntime" and graph.is_file()
