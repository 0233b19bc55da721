"""Late-interaction (ColBERT-style) models, run by sentence-transformers' ``MultiVectorEncoder``: one vector per token,
scored by MaxSim, each query token's best match among the document's tokens, summed.

The checkpoint's own prefixes, query and document lengths, query expansion and skip-list are applied by
sentence-transformers as it applies them in training. A document's vectors depend on the document alone, so
the scorer caches them by content (bounded in bytes) like an embedding model's vectors; a request then costs
one query encoding, the documents not seen before, and the MaxSim products.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scoring.engines.base import Engine
from scoring.media import ImageDocument


def maxsim(query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """Sum over the query's token vectors of their largest dot product with a document's token vectors, for each
    document (a document without scoring tokens, e.g. punctuation alone under a skip-list, scores 0)."""
    q = np.asarray(query, dtype=np.float32)
    return np.asarray([float((q @ np.asarray(d, dtype=np.float32).T).max(axis=1).sum()) if len(d) else 0.0
                       for d in documents], dtype=np.float32)


class MultiVectorEngine(Engine):
    """One ``MultiVectorEncoder`` replica: token vectors of queries and documents, and MaxSim between them.

    ``mean``: the checkpoint scores MeanMaxSim (MaxSim over the query's token count), so ``raw`` is that.
    ``unit``: its vectors are unit length, so MaxSim over the query's tokens is a mean cosine in [-1, 1].
    """

    how = "sentence-transformers (MultiVectorEncoder, MaxSim)"

    def __init__(self, model, name: str) -> None:
        from sentence_transformers.base.modules import Normalize  # lazy: sentence-transformers loads only on this path

        self.model, self.name = model, name
        self.mean = model.similarity_fn_name == "meanmaxsim"
        self.unit = any(isinstance(module, Normalize) for module in model)

    def embed(self, texts: Sequence[str], *, query: bool = False) -> list[np.ndarray]:
        """Each text's token vectors (as many rows as it has scoring tokens), as the checkpoint encodes a query or a
        document."""
        method = self.model.encode_query if query else self.model.encode_document
        inputs = [t.image() if isinstance(t, ImageDocument) else t for t in texts]  # page images, ColPali-style
        vectors = method(inputs, batch_size=max(1, len(inputs)), convert_to_numpy=True, show_progress_bar=False)
        return [np.asarray(v, dtype=np.float32) for v in vectors]

    def similarity(self, query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
        """MaxSim (or MeanMaxSim, where the checkpoint scores that) of the query's token vectors with each document's."""
        scores = maxsim(query, documents)
        return scores / max(1, len(query)) if self.mean else scores

    def normalized(self, raw: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Scores on [0, 1]: the mean over query tokens of their best cosine, mapped as (1 + mean) / 2 for unit vectors;
        the logistic of that mean for vectors of other lengths (unbounded dot products)."""
        mean = np.asarray(raw, dtype=np.float64) / (1 if self.mean else max(1, len(query)))
        if self.unit:
            return np.clip((1.0 + mean) / 2.0, 0.0, 1.0).astype(np.float32)
        return (1.0 / (1.0 + np.exp(-mean))).astype(np.float32)
