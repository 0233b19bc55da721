"""sentence-transformers itself, for checkpoints with modules the graph engines do not run (a Dense layer, custom code)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scoring.checkpoint import Layout, Mode
from scoring.tokenizer import TextTokenizer

ST_BACKEND = "torch (sentence-transformers)"


class SentenceTransformersEngine:
    """One sentence-transformers model replica; scores and embeddings as the library computes them."""

    name = ST_BACKEND

    def __init__(self, model, layout: Layout) -> None:
        self.model, self.layout = model, layout

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs."""
        import torch

        return np.asarray(self.model.predict([(query, d) for d in documents], batch_size=max(1, len(documents)),
                                             show_progress_bar=False, activation_fn=torch.nn.Identity()),
                          dtype=np.float32).reshape(len(documents))

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        method = self.model.encode_query if query else self.model.encode_document
        return np.asarray(method(list(texts), batch_size=max(1, len(texts)), normalize_embeddings=True,
                                 show_progress_bar=False), dtype=np.float32)


def st_replicas(path: Path, mode: Mode, trust_remote_code: bool, workers: int, *, device: str = "cpu"
                ) -> tuple[list[SentenceTransformersEngine], TextTokenizer, int]:
    """``workers`` replicas of a sentence-transformers checkpoint (one shared model on a GPU), its tokenizer, its window."""
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from tokenizers import Tokenizer

    cls = CrossEncoder if mode == "cross-encoder" else SentenceTransformer
    model = cls(str(path), device=device, local_files_only=True, trust_remote_code=trust_remote_code)
    if workers > 1 and device == "cpu":
        torch.set_num_threads(1)
    max_length = int(getattr(model, "max_seq_length", None) or getattr(model, "max_length", None) or 512)
    layout = Layout(mode=mode, max_length=max_length)
    engines = [SentenceTransformersEngine(model, layout)] + [
        SentenceTransformersEngine(copy.deepcopy(model) if device == "cpu" else model, layout) for _ in range(workers - 1)]
    tokenizer = TextTokenizer(Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str()), model.tokenizer.pad_token)
    return engines, tokenizer, max_length
