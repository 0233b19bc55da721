"""Padding-free forward passes for BERT-family cross-encoders on a GPU, as text-embeddings-inference runs them.

A padded batch computes every row to its longest pair and builds an attention mask that keeps PyTorch
from its flash kernels (on an H200, 1,000 SciFact pairs: forward passes 70 ms with the mask, 42 ms
without). Here every pair's tokens lie end to end in one ``(tokens, hidden)`` tensor; the linear
layers see only real tokens and attention runs on variable-length flash attention
(``torch.nn.attention.varlen``) over each pair's own span. The weights and modules are the
checkpoint's own (``*ForSequenceClassification`` as transformers loads it), so only the layout of the
activations changes: the same embeddings, layers, pooler and classifier run in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from scoring.checkpoint import Layout
from scoring.tokenizer import TextTokenizer

# Architecture -> how its classifier reads the first token: through the pooler (BERT) or on its own (RoBERTa's head).
HEADS = {"BertForSequenceClassification": "pooler", "RobertaForSequenceClassification": "head",
         "XLMRobertaForSequenceClassification": "head"}
Attention = Callable  # (q, k, v: (tokens, heads, dim), starts: (pairs + 1,) int32, longest: int) -> (tokens, heads, dim)


def varlen_attention():
    """PyTorch's variable-length flash attention, or None where this torch has none (before 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return lambda q, k, v, starts, longest: varlen_attn(q, k, v, starts, starts, longest, longest)


def span_attention(q, k, v, starts, longest: int):
    """Each pair's attention on its own span, one call per pair: the reference the flash kernel is checked against
    (any device, any precision)."""
    import torch
    import torch.nn.functional as F

    bounds = starts.tolist()
    out = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)))[0].transpose(0, 1)
           for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.cat(out, dim=0)


def unsupported(model, precision: str, attention: Attention | None) -> str | None:
    """Why a loaded model cannot run packed (then it runs padded, as transformers runs it), or None."""
    config = model.config
    name = type(model).__name__
    if name not in HEADS:
        return f"{name} is not one of the packed architectures ({', '.join(HEADS)})"
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or getattr(config, "is_decoder", False):
        return "relative positions or a decoder: not the plain encoder the packed path computes"
    if precision not in ("fp16", "bf16"):
        return f"flash attention computes fp16 and bf16, not {precision}"
    if attention is None:
        return "this torch has no variable-length attention (torch.nn.attention.varlen, torch >= 2.10)"
    heads = config.num_attention_heads
    if config.hidden_size % heads or (config.hidden_size // heads) % 8 or config.hidden_size // heads > 256:
        return f"head size {config.hidden_size / heads:g} is outside flash attention's (a multiple of 8, at most 256)"
    return None


class PackedEncoder:
    """A sequence-classification encoder's forward pass over pairs laid end to end (no padding, no mask)."""

    def __init__(self, model, attention: Attention) -> None:
        self.model = model
        self.base = getattr(model, model.base_model_prefix)
        self.head = HEADS[type(model).__name__]
        self.heads = model.config.num_attention_heads
        self.attention = attention
        pad = getattr(self.base.embeddings, "padding_idx", None)
        self.first_position = pad + 1 if self.head == "head" and pad is not None else 0  # RoBERTa counts from pad + 1

    def logits(self, ids, types, positions, starts, longest: int):
        """Classifier logits, one row per pair: ``ids``/``types``/``positions`` hold every token of the batch,
        ``starts`` where each pair begins (and, last, where the batch ends)."""
        embeddings = self.base.embeddings
        x = embeddings.word_embeddings(ids) + embeddings.token_type_embeddings(types)
        x = embeddings.LayerNorm(x + embeddings.position_embeddings(positions + self.first_position))
        tokens, width = x.shape
        for layer in self.base.encoder.layer:
            attn = layer.attention
            q, k, v = (proj(x).view(tokens, self.heads, -1) for proj in (attn.self.query, attn.self.key, attn.self.value))
            context = self.attention(q, k, v, starts, longest).reshape(tokens, width)
            x = attn.output.LayerNorm(attn.output.dense(context) + x)
            inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(layer.output.dense(inner) + x)
        first = x[starts[:-1].long()][:, None, :]  # each pair's first token, shaped as (pairs, 1, hidden)
        if self.head == "pooler":
            return self.model.classifier(self.base.pooler(first))
        return self.model.classifier(first)


class PackedEngine:
    """A cross-encoder replica that scores pairs packed end to end on a GPU (same interface as the padded engines)."""

    def __init__(self, name: str, tokenizer: TextTokenizer, layout: Layout, model, *, device: str,
                 attention: Attention) -> None:
        self.name, self.tokenizer, self.layout, self.model, self.device = name, tokenizer, layout, model, device
        self.encoder = PackedEncoder(model, attention)
        self.merges = True  # a pair's score does not depend on what shares its batch: requests may share one

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs from their texts (truncated longest first to the window)."""
        if not documents:
            return np.zeros(0, dtype=np.float32)
        return self._forward(self.tokenizer.packed_texts([(query, d) for d in documents], self.layout.max_length))

    def score_encoded_pairs(self, pairs: Sequence[tuple]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs already tokenized by the request's plan."""
        return self._forward(self.tokenizer.packed_pairs(pairs))

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        raise NotImplementedError("the packed engine scores cross-encoder pairs; embedding models run padded")

    def failure(self) -> str | None:
        """Why the packed pass does not run here (a kernel missing from this build of torch, say), from two short
        pairs, or None when it runs."""
        from scoring.tokenizer import pack_rows

        try:
            out = self._forward(pack_rows([[1, 2, 3], [1, 2, 3, 4, 5]], [[0, 0, 0], [0, 0, 0, 1, 1]]))
        except Exception as exc:  # noqa: BLE001 - any failure means: run padded, saying why
            return f"the packed pass failed here: {str(exc).splitlines()[0][:200]}"
        return None if out.shape == (2,) and np.isfinite(out).all() else "the packed pass gave no finite scores"

    def _forward(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        """One pass over a packed batch: its token rows go to the GPU in one copy, the logits come back in one."""
        import torch

        rows = torch.from_numpy(np.stack([packed["input_ids"], packed["token_type_ids"], packed["position_ids"]]))
        rows = rows.pin_memory().to(self.device, non_blocking=True) if self.device != "cpu" else rows
        starts = torch.from_numpy(packed["starts"]).to(self.device, non_blocking=True)
        with torch.inference_mode():
            logits = self.encoder.logits(rows[0], rows[1], rows[2], starts, int(packed["longest"]))
            return logits[:, 0].float().cpu().numpy()
