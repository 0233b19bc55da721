"""The engine shape every runtime shares: tokenize, run a forward function, pool as sentence-transformers does."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from scoring.checkpoint import Layout
from scoring.engines.base import Engine
from scoring.tokenizer import TextTokenizer


def pool(hidden: np.ndarray, mask: np.ndarray, layout: Layout) -> np.ndarray:
    """Sentence embeddings from token states, as sentence-transformers' Pooling (+ Normalize) computes them."""
    mask = mask[..., None].astype(hidden.dtype)
    if layout.pooling == "cls":
        out = hidden[:, 0]
    elif layout.pooling == "max":
        out = np.where(mask > 0, hidden, -1e9).max(axis=1)
    else:
        out = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    out = out.astype(np.float32)
    if layout.normalize:
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


class GraphEngine(Engine):
    """Tokenize, run a forward function, pool: shared by the torch, ONNX Runtime and OpenVINO engines.

    One replica is used by one thread at a time (its tokenizer is not thread-safe).
    """

    takes_tokens = True

    def __init__(self, name: str, tokenizer: TextTokenizer, layout: Layout, forward: Callable[[dict], np.ndarray],
                 inputs: Sequence[str], *, model=None, device: str = "cpu", pad_to_multiple_of: int | None = None) -> None:
        self.name, self.tokenizer, self.layout, self._forward, self._inputs = name, tokenizer, layout, forward, tuple(inputs)
        self.model = model  # the torch module behind a torch engine (copied for more CPU replicas, shared on a GPU)
        self.device = device
        self._multiple = pad_to_multiple_of

    def _run(self, items) -> tuple[np.ndarray, np.ndarray]:
        batch = self.tokenizer.batch(items, self.layout.max_length, pad_to_multiple_of=self._multiple)
        return self._forward({k: batch[k] for k in self._inputs}), batch["attention_mask"]

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs (cross-encoders)."""
        if not documents:
            return np.zeros(0, dtype=np.float32)
        logits, _ = self._run([(query, d) for d in documents])
        return np.asarray(logits, dtype=np.float32).reshape(len(documents), -1)[:, 0]

    def score_encoded_pairs(self, pairs: Sequence[tuple]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs already tokenized by the request's plan (no second
        tokenization); the queries may differ (concurrent requests sharing a batch)."""
        batch = self.tokenizer.mixed_pair_batch(pairs, pad_to_multiple_of=self._multiple)
        logits = self._forward({k: batch[k] for k in self._inputs})
        return np.asarray(logits, dtype=np.float32).reshape(len(pairs), -1)[:, 0]

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text (embedding models)."""
        prompt = self.layout.query_prompt if query else self.layout.document_prompt
        hidden, mask = self._run([prompt + t for t in texts])
        return pool(np.asarray(hidden, dtype=np.float32), mask, self.layout)
