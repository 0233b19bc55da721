"""The transformers model on torch: fp32, or bf16 autocast where the CPU computes bf16 natively."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import numpy as np

from scoring.checkpoint import Layout
from scoring.engines.graph import GraphEngine
from scoring.tokenizer import TextTokenizer


def model_inputs(model) -> list[str]:
    """The tokenizer outputs the model's forward takes."""
    names = inspect.signature(model.forward).parameters
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]


def torch_model(model_dir: Path, layout: Layout, trust_remote_code: bool):
    """The transformers model behind a checkpoint, in eval mode."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls = AutoModelForSequenceClassification if layout.mode == "cross-encoder" else AutoModel
    return cls.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code).eval()


def output_name(layout: Layout) -> str:
    """The model output the engines read: the ranking logits or the token states."""
    return "logits" if layout.mode == "cross-encoder" else "last_hidden_state"


def torch_engine(model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, bf16: bool = False,
                 trust_remote_code: bool = False, model=None) -> GraphEngine:
    """fp32 torch (``bf16``: bf16 autocast, only where the CPU computes bf16 natively)."""
    import torch

    model = model if model is not None else torch_model(model_dir, layout, trust_remote_code)
    key = output_name(layout)

    def forward(batch: dict) -> np.ndarray:
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return getattr(model(**tensors), key).float().numpy()

    return GraphEngine("torch-bf16" if bf16 else "torch", tokenizer, layout, forward, model_inputs(model), model=model)
