"""sentence-transformers itself, for checkpoints the graph engines do not run: causal-LM rerankers (yes/no log-odds
through its ``LogitScore``, with the checkpoint's chat template or prompts) and modules of their own (a Dense layer,
custom code)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scoring.checkpoint import Layout, Mode
from scoring.engines.base import Engine
from scoring.engines.multi_vector import MultiVectorEngine
from scoring.errors import BackendError
from scoring.media import ImageDocument
from scoring.tokenizer import TextTokenizer

ST_BACKEND = "torch (sentence-transformers)"
# causal-LM rerankers: sentence-transformers in each precision; the first of a device is its fp32 reference
CAUSAL_BACKENDS = {"cpu": ("torch", "torch-bf16"), "cuda": ("cuda-fp32", "cuda-fp16", "cuda-bf16")}
PRECISION = {"torch": "fp32", "torch-bf16": "bf16", "cuda-fp32": "fp32", "cuda-fp16": "fp16", "cuda-bf16": "bf16"}
_DTYPES = {"torch": "float32", "torch-bf16": "bfloat16", "cuda-fp32": "float32", "cuda-fp16": "float16",
           "cuda-bf16": "bfloat16"}


def causal_backends(device: str) -> tuple[str, ...]:
    """The backends a causal-LM reranker may run on ``device`` (reduced precision only through the fidelity gate)."""
    return CAUSAL_BACKENDS["cpu" if device == "cpu" else "cuda"]


class SentenceTransformersEngine(Engine):
    """One sentence-transformers model replica; scores and embeddings as the library computes them."""

    how = "sentence-transformers"

    def __init__(self, model, layout: Layout, name: str = ST_BACKEND) -> None:
        self.model, self.layout, self.name = model, layout, name

    def score_pairs(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs (a document may be an image, for models that read them);
        ``instruction`` is the prompt sentence-transformers gives the model (a chat template's system message, else text
        before the query); None: the checkpoint's default prompt."""
        import torch  # lazy: torch loads only on this path

        pairs = [(query, d.image() if isinstance(d, ImageDocument) else d) for d in documents]
        return np.asarray(self.model.predict(pairs, batch_size=max(1, len(documents)),
                                             prompt=instruction or None, show_progress_bar=False,
                                             activation_fn=torch.nn.Identity()),
                          dtype=np.float32).reshape(len(documents))

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text."""
        method = self.model.encode_query if query else self.model.encode_document
        return np.asarray(method(list(texts), batch_size=max(1, len(texts)), normalize_embeddings=True,
                                 show_progress_bar=False), dtype=np.float32)


def _declared_length(model) -> int:
    """The longest input a loaded model reads: a late-interaction model's document length where it sets one, else its
    maximum sequence length."""
    first = model[0] if len(model) else None
    document = getattr(first, "document_length", None)
    return int(document or getattr(model, "max_seq_length", None) or getattr(model, "max_length", None) or 512)


def pair_overhead(model) -> int | None:
    """Tokens a CrossEncoder adds around a (query, document) pair (special tokens, a chat template's text), measured
    on a probe pair: what the cost and the windows of a request must count beyond its own words."""
    try:
        features = model[0].preprocess([("probe", "probe probe")])
    except Exception:
        return None
    plain = len(model.tokenizer("probe", add_special_tokens=False)["input_ids"]) * 3
    return max(0, int(features["input_ids"].shape[1]) - plain)


def st_replicas(path: Path, mode: Mode, trust_remote_code: bool, workers: int, *, device: str = "cpu",
                max_tokens: int | None = None, backend: str | None = None
                ) -> tuple[list[SentenceTransformersEngine], TextTokenizer, int]:
    """``workers`` replicas of a sentence-transformers checkpoint (one shared model on a GPU), its tokenizer, and the
    window the model declares (it serves at most ``max_tokens`` of it). ``backend``: one of :data:`CAUSAL_BACKENDS`,
    which sets the weights' precision (None: the checkpoint as sentence-transformers loads it)."""
    import torch  # lazy: torch loads only on this path
    from sentence_transformers import (  # lazy: sentence-transformers loads only on this path
        CrossEncoder,
        MultiVectorEncoder,
        SentenceTransformer,
    )
    from tokenizers import Tokenizer  # lazy: tokenizers loads only on this path

    from scoring.engines import unavailable

    if backend is not None:
        reason = unavailable(backend, device)
        if reason or backend not in causal_backends(device):
            raise BackendError(f"backend {backend!r} is unavailable for this model: "
                               f"{reason or 'not one of ' + ', '.join(causal_backends(device))}")
    cls = {"cross-encoder": CrossEncoder, "late-interaction": MultiVectorEncoder}.get(mode, SentenceTransformer)
    kwargs = {"model_kwargs": {"dtype": getattr(torch, _DTYPES[backend])}} if backend else {}
    model = cls(str(path), device=device, local_files_only=True, trust_remote_code=trust_remote_code, **kwargs)
    if workers > 1 and device == "cpu":
        torch.set_num_threads(1)
    declared = _declared_length(model)
    if max_tokens and declared > max_tokens:
        model.max_seq_length = max_tokens  # sentence-transformers truncates there (keeping a chat template's suffix)
    layout = Layout(mode=mode, max_length=min(declared, max_tokens or declared))
    name = backend or ST_BACKEND

    def replica(copied) -> SentenceTransformersEngine | MultiVectorEngine:
        return MultiVectorEngine(copied, name) if mode == "late-interaction" else SentenceTransformersEngine(copied, layout, name)

    engines = [replica(model)] + [replica(copy.deepcopy(model) if device == "cpu" else model) for _ in range(workers - 1)]
    if backend is not None and mode == "cross-encoder" and device != "cpu":  # a causal-LM reranker on a GPU: packed
        from scoring.engines.causal import packed_or_padded

        engines, _ = packed_or_padded(engines, model, PRECISION[backend], device)
    overhead = pair_overhead(model) if mode == "cross-encoder" else None
    tokenizer = TextTokenizer(Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str()), model.tokenizer.pad_token,
                              pair_overhead=overhead)
    return engines, tokenizer, declared
