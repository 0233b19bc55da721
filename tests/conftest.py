"""Shared fixtures: real models (loaded once per session), a live app, a stand-in retrieval Space."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import rerank as core  # noqa: E402

EVAL_DIR = ROOT.parent / "shared" / "eval"


def build_tiny_cross_encoder(target: Path, *, seed: int = 0) -> Path:
    """Save a small BERT cross-encoder (one-logit head) with the packaged model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(core.packaged_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                        num_labels=1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(target))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def packaged_scorer() -> core.Scorer:
    """The packaged all-MiniLM-L6-v2, the offline default, in embedding mode."""
    return core.get_scorer(str(core.packaged_model_path()))


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory) -> Path:
    """A freshly built tiny cross-encoder checkpoint in a temp folder."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="session")
def tiny_scorer(tiny_cross_encoder_dir) -> core.Scorer:
    """The tiny cross-encoder loaded through the same path as a hub model."""
    return core.get_scorer(str(tiny_cross_encoder_dir), allow_fallback=False)


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """The shared IR collections, or a skip saying where they are expected."""
    if not EVAL_DIR.is_dir():
        pytest.skip(f"public IR collections not found at {EVAL_DIR} (a user's clone has no ../shared/eval)")
    return EVAL_DIR
