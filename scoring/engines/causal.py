"""Causal-LM rerankers (Qwen3-Reranker and Llama/Mistral-style decoders scoring yes/no at the last token) packed end to
end on a GPU, as vLLM serves them.

sentence-transformers runs such a reranker as a padded batch: every row computed to the longest pair, a mask that keeps
PyTorch from its flash kernels, and the full-vocabulary head over the last position. Here the checkpoint's own modules
(embeddings, decoder layers, final norm, the head's weights) run over every pair's tokens laid end to end: the linear
layers see only real tokens, attention is variable-length flash attention (causal, within each pair's span, grouped
query heads as the model has them), rotary positions restart at each pair, and only the last token's "yes"/"no" rows of
the head are computed. The tokens are sentence-transformers' own (its chat template, instruction and truncation), so a
pair's score is ``CrossEncoder.predict``'s up to float rounding; what changes is the layout of the activations.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Sequence

import numpy as np

from scoring.checkpoint import Layout
from scoring.engines.base import Engine
from scoring.engines.packed import Attention, GraphCache, capture_graphs, forward_packed
from scoring.tokenizer import pack_rows

log = logging.getLogger("rag_augment.engines")
DECODERS = ("Qwen3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM")


def causal_varlen_attention() -> Attention | None:
    """Variable-length flash attention, causal within each pair, grouped query heads: None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # lazy: torch loads only on this path
    except ImportError:
        return None
    return lambda q, k, v, starts, longest: varlen_attn(q, k, v, starts, starts, longest, longest,
                                                        window_size=(-1, 0), enable_gqa=True)


def causal_span_attention(q, k, v, starts, longest: int):
    """Causal attention on each pair's own span, one call per pair, key/value heads repeated for their query groups: the
    reference the flash kernel is checked against, and the CPU's way (any precision)."""
    import torch  # lazy: torch loads only on this path
    import torch.nn.functional as F  # lazy: torch loads only on this path

    groups = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(groups, dim=1) if groups > 1 else t for t in (k, v))
    bounds = starts.tolist()
    out = [F.scaled_dot_product_attention(*(t[a:b].transpose(0, 1)[None] for t in (q, k, v)), is_causal=True)[0]
           .transpose(0, 1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return torch.cat(out, dim=0)


def unsupported_causal(cross_encoder, precision: str, attention: Attention | None) -> str | None:
    """Why a sentence-transformers causal-LM reranker cannot run packed (then it runs padded, as sentence-transformers
    runs it), or None. ``cross_encoder``: the loaded ``CrossEncoder``."""
    modules = list(cross_encoder)
    lm = getattr(modules[0], "auto_model", None)
    name = type(lm).__name__
    if name not in DECODERS:
        return f"{name} is not one of the packed decoders ({', '.join(DECODERS)})"
    if len(modules) != 2 or type(modules[1]).__name__ != "LogitScore":
        return "the checkpoint's modules are not Transformer + LogitScore"
    config = lm.config
    if getattr(config, "use_sliding_window", False) or "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return "sliding-window attention: not the full causal attention the packed pass computes"
    if precision not in ("fp16", "bf16"):
        return f"flash attention computes fp16 and bf16, not {precision}"
    if attention is None:
        return "this torch has no variable-length attention (torch.nn.attention.varlen, torch >= 2.10)"
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head % 8 or head > 256:
        return f"head size {head} is outside flash attention's (a multiple of 8, at most 256)"
    return None


class PackedDecoder:
    """A causal LM's forward pass over pairs laid end to end, ending in the yes/no log-odds of each pair's last token."""

    def __init__(self, lm, true_id: int, false_id: int | None, attention: Attention) -> None:
        import torch  # lazy: torch loads only on this path

        self.model = lm
        self.base = lm.model
        self.attention = attention
        self.rotate = sys.modules[type(self.base.layers[0].self_attn).__module__].apply_rotary_pos_emb
        rows = [true_id] if false_id is None else [true_id, false_id]
        weight = lm.get_output_embeddings().weight[rows]
        self.head = weight if false_id is None else (weight[0] - weight[1])[None]  # log-odds: one row, as it is linear
        bias = getattr(lm.get_output_embeddings(), "bias", None)
        self.bias = None if bias is None else (bias[rows] if false_id is None else (bias[0] - bias[1])[None])
        self.head = torch.nn.Parameter(self.head.detach().clone(), requires_grad=False)

    def logits(self, ids, types, positions, starts, longest: int):
        """The yes/no log-odds (or the yes logit), one row per pair; ``types`` is unused (a decoder has none), kept so
        the CUDA graphs of the packed encoders replay this pass too."""
        x = self.base.embed_tokens(ids)
        cos, sin = self.base.rotary_emb(x[None], positions[None])
        cos, sin = cos[0], sin[0]
        tokens = x.shape[0]
        for layer in self.base.layers:
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q, k, v = (proj(h).view(tokens, -1, attn.head_dim) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            if hasattr(attn, "q_norm"):  # Qwen3: a norm over each head before the rotation
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = self.rotate(q, k, cos, sin, unsqueeze_dim=1)
            x = x + attn.o_proj(self.attention(q, k, v, starts, longest).reshape(tokens, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        last = self.base.norm(x[starts[1:].long() - 1])
        out = last @ self.head.to(last.dtype).T
        return out if self.bias is None else out + self.bias.to(out.dtype)


class PackedCausalEngine(Engine):
    """A causal-LM reranker replica that scores pairs packed end to end (same interface as the sentence-transformers
    engine it stands in for, which stays its tokenizer: chat template, instruction and truncation are the library's)."""

    merges = True  # a pair's score does not depend on what shares its pass: requests may share one

    def __init__(self, cross_encoder, layout: Layout, name: str, *, device: str, attention: Attention) -> None:
        self.cross_encoder, self.layout, self.name, self.device = cross_encoder, layout, name, device
        scorer = list(cross_encoder)[1]
        self.encoder = PackedDecoder(list(cross_encoder)[0].auto_model, scorer.true_token_id, scorer.false_token_id,
                                     attention)
        self.model = self.encoder.model
        self.graphs: GraphCache | None = None

    @property
    def how(self) -> str:
        """How the pass runs, for /info and the page."""
        return ("causal LM, pairs packed end to end, variable-length flash attention, last-token yes/no head"
                + (", CUDA graphs" if self.graphs else ""))

    def score_pairs(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        """Raw yes/no log-odds of (query, document) pairs; ``instruction`` as sentence-transformers applies it."""
        return self.score_triples([(instruction, query, d) for d in documents])

    def score_triples(self, triples: Sequence[tuple[str | None, str, str]]) -> np.ndarray:
        """Raw log-odds of (instruction, query, document) triples, whichever requests they come from, in one pass."""
        if not triples:
            return np.zeros(0, dtype=np.float32)
        return self._forward(self.pack(triples))

    def pack(self, triples: Sequence[tuple[str | None, str, str]]) -> dict[str, np.ndarray]:
        """The triples tokenized by sentence-transformers (grouped by instruction: it takes one prompt a call), each
        pair's padding dropped, laid end to end in input order."""
        rows: list = [None] * len(triples)
        by_prompt: dict[str | None, list[int]] = {}
        for n, (instruction, _, _) in enumerate(triples):
            by_prompt.setdefault(instruction or None, []).append(n)
        for prompt, members in by_prompt.items():
            features = self.cross_encoder.preprocess([triples[m][1:] for m in members], prompt=prompt)
            ids, mask = features["input_ids"].numpy(), features["attention_mask"].numpy().astype(bool)
            for m, row, keep in zip(members, ids, mask, strict=True):
                rows[m] = row[keep]
        return pack_rows(rows, [np.zeros(len(r), dtype=np.int64) for r in rows])

    def use_graphs(self, on: bool = True) -> str | None:
        """Replay the pass as CUDA graphs (see :class:`scoring.engines.packed.PackedEngine.use_graphs`)."""
        self.graphs = None
        self.graphs, why = capture_graphs(self, on)
        return why

    def sibling(self) -> PackedCausalEngine:
        """Another worker's replica: the same model on the same GPU (and the same graphs)."""
        return copy.copy(self)

    def failure(self) -> str | None:
        """Why the packed pass does not run here, from two short pairs, or None when it runs."""
        try:
            out = self._forward(pack_rows([[1, 2, 3], [1, 2, 3, 4, 5]], [[0] * 3, [0] * 5]))
        except Exception as exc:  # noqa: BLE001 - any failure means: run padded, saying why
            return f"the packed pass failed here: {str(exc).splitlines()[0][:200]}"
        return None if out.shape == (2,) and np.isfinite(out).all() else "the packed pass gave no finite scores"

    def _forward(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        return forward_packed(self, packed)


def packed_or_padded(engines: list, cross_encoder, precision: str, device: str, *,
                     attention: Attention | None = None) -> tuple[list, str | None]:
    """The replicas a causal-LM reranker serves with: packed where it can run so (a GPU, fp16/bf16, a supported decoder,
    the kernel, a probe that passes), else the padded sentence-transformers ones; and why not packed (None when it is)."""
    if device == "cpu":
        return engines, "the packed causal pass runs on a GPU (flash attention); the CPU runs padded"
    attention = attention or causal_varlen_attention()
    why = unsupported_causal(cross_encoder, precision, attention)
    if why is None:
        packed = PackedCausalEngine(cross_encoder, engines[0].layout, engines[0].name, device=device, attention=attention)
        why = packed.failure()
        if why is None:
            graphs = packed.use_graphs()
            if graphs:
                log.info("%s: CUDA graphs off: %s", engines[0].name, graphs)
            return [packed] + [packed.sibling() for _ in engines[1:]], None
    log.info("causal reranker runs padded: %s", why)
    return engines, why
