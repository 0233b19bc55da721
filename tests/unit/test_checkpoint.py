"""Detection: every kind of ranking checkpoint, how it is scored, and the kinds that are refused."""

from __future__ import annotations

import json

import pytest

import rerank
from scoring.checkpoint import detect
from scoring.errors import ModelLoadError
from scoring.synthetic import build_causal_reranker


@pytest.fixture(scope="module")
def causal_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    return {"plain": build_causal_reranker(root / "plain"), "st": build_causal_reranker(root / "st", layout="st"),
            "no-yes-no": build_causal_reranker(root / "noyes", yes_no=False)}


def test_sequence_classification_cross_encoder(tiny_cross_encoder_dir):
    found = detect(tiny_cross_encoder_dir)
    assert (found.mode, found.family, found.runner) == ("cross-encoder", "sequence-classification", "graph")
    assert "BertForSequenceClassification with a trained one-logit head" == found.why


def test_embedding_model():
    found = detect(rerank.packaged_model_path())
    assert (found.mode, found.family) == ("embedding", "embedding")


def test_head_without_weights_is_an_embedding_model(tmp_path, tiny_cross_encoder_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "headless"
    shutil.copytree(tiny_cross_encoder_dir, folder)
    weights = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("classifier.")}
    save_file(weights, str(folder / "model.safetensors"))
    found = detect(folder)
    assert found.family == "embedding" and "random head would be noise" in found.why


def test_plain_causal_lm_with_yes_and_no(causal_dirs):
    found = detect(causal_dirs["plain"])
    assert (found.mode, found.family, found.runner) == ("cross-encoder", "causal-lm", "sentence-transformers")
    assert found.why == "Qwen3ForCausalLM with 'yes' and 'no' tokens: scored by sentence-transformers' LogitScore"


def test_sentence_transformers_module_chain(causal_dirs):
    found = detect(causal_dirs["st"])
    assert found.family == "causal-lm" and found.runner == "sentence-transformers"
    modules = json.loads((causal_dirs["st"] / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "LogitScore"]
    assert "CrossEncoder chain (Transformer + LogitScore; true token" in found.why


def test_causal_lm_without_yes_no_is_refused_with_what_to_do(causal_dirs):
    with pytest.raises(ModelLoadError, match=r"tokenizer has no 'yes' or 'no' token, so it cannot be scored as a "
                                             r"yes/no reranker; save it as a sentence-transformers CrossEncoder"):
        detect(causal_dirs["no-yes-no"])
    with pytest.raises(ModelLoadError, match="no 'yes' or 'no' token"):
        rerank.load_scorer(str(causal_dirs["no-yes-no"]), allow_fallback=False)


def test_multi_label_head_and_missing_config_are_refused(tmp_path, tiny_cross_encoder_dir):
    import shutil

    folder = tmp_path / "three"
    shutil.copytree(tiny_cross_encoder_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    config.pop("num_labels", None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="3-label classification head, not a one-logit ranking head"):
        detect(folder)
    with pytest.raises(ModelLoadError, match="has no config.json"):
        detect(tmp_path)


@pytest.mark.parametrize("marker", ["MultiVectorEncoder", "ColBERT", "HF_ColBERT", "ColPaliForRetrieval"])
def test_late_interaction_checkpoints_as_sentence_transformers_loads_them(tmp_path, marker):
    """A sentence-transformers MultiVectorEncoder save, PyLate's (model_type ColBERT), Stanford ColBERT's (HF_ColBERT) and
    transformers' retrievers are MaxSim models, never pooled into one embedding."""
    config = {"architectures": [marker if marker.endswith(("ColBERT", "Retrieval")) and marker != "ColBERT"
                                else "BertModel"], "model_type": "bert"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    if marker in ("MultiVectorEncoder", "ColBERT"):
        (tmp_path / "config_sentence_transformers.json").write_text(json.dumps({"model_type": marker}))
    found = detect(tmp_path)
    assert (found.mode, found.family, found.runner) == ("late-interaction", "late-interaction", "sentence-transformers")
    assert marker in found.why and "MaxSim" in found.why
