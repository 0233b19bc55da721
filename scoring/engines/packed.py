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

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from scoring.batching import batching_for
from scoring.checkpoint import Layout
from scoring.engines.base import Engine
from scoring.tokenizer import TextTokenizer, merge_packed, pack_flat, pack_rows

log = logging.getLogger("rag_augment.engines")
# Architecture -> how its classifier reads the first token: through the pooler (BERT) or on its own (RoBERTa's head).
HEADS = {"BertForSequenceClassification": "pooler", "RobertaForSequenceClassification": "head",
         "XLMRobertaForSequenceClassification": "head"}
Attention = Callable  # (q, k, v: (tokens, heads, dim), starts: (pairs + 1,) int32, longest: int) -> (tokens, heads, dim)


def varlen_attention():
    """PyTorch's variable-length flash attention, or None where this torch has none (before 2.10)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # lazy: torch loads only on this path
    except ImportError:
        return None
    return lambda q, k, v, starts, longest: varlen_attn(q, k, v, starts, starts, longest, longest)


def span_attention(q, k, v, starts, longest: int):
    """Each pair's attention on its own span, one call per pair: the reference the flash kernel is checked against
    (any device, any precision)."""
    import torch  # lazy: torch loads only on this path
    import torch.nn.functional as F  # lazy: torch loads only on this path

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


def bucketed(packed: dict[str, np.ndarray], *, step: int, window: int) -> tuple[dict[str, np.ndarray], int]:
    """A packed batch grown to a bucket shape (tokens a multiple of ``step``, pairs a power of two), the extra room
    filled by short pairs of padding tokens (each at most ``window``): a CUDA graph replays one fixed shape, and
    buckets keep the number of shapes small. Returns the grown batch and how many of its pairs are real."""
    real, tokens = len(packed["starts"]) - 1, int(packed["starts"][-1])
    spare = -(-step // (window - 1)) + 1  # enough filler pairs that none exceeds the window
    pairs = max(16, 1 << (real + spare - 1).bit_length())
    fillers = pairs - real
    room = -(-(tokens + fillers) // step) * step - tokens
    filler = np.full(fillers, room // fillers, dtype=np.int64)
    filler[: room % fillers] += 1
    pad = np.zeros(room, dtype=np.int64)
    extra = pack_flat(pad, pad, filler)
    grown = {k: np.concatenate([packed[k], extra[k]]) for k in ("input_ids", "token_type_ids", "position_ids")}
    grown["starts"] = np.concatenate([packed["starts"], extra["starts"][1:] + tokens]).astype(np.int32)
    grown["longest"] = np.int64(window)
    return grown, real


class GraphCache:
    """CUDA graphs of the packed pass, one per bucket shape, captured on first use and replayed after (a pass is a
    few hundred kernel launches; replayed as one graph, the GPU no longer waits on Python to launch them).

    Graphs of one engine share a memory pool; captures and replays of every engine sharing a model hold one lock,
    so no other thread launches work while a graph is captured.
    """

    def __init__(self, encoder: PackedEncoder, device: str, window: int, *, step: int = 2048, size: int = 128) -> None:
        import torch  # lazy: torch loads only on this path

        self.encoder, self.device, self.window, self.step, self.size = encoder, device, window, step, size
        self.graphs: OrderedDict = OrderedDict()
        self.pool = torch.cuda.graph_pool_handle()
        self.lock = _model_lock(encoder.model)

    def run(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of a packed batch, replayed on its bucket's graph (captured now if it is the first of its shape)."""
        import torch  # lazy: torch loads only on this path

        grown, real = bucketed(packed, step=self.step, window=self.window)
        rows = torch.from_numpy(np.stack([grown["input_ids"], grown["token_type_ids"], grown["position_ids"]]))
        starts = torch.from_numpy(grown["starts"])
        key = (rows.shape[1], len(starts))
        with self.lock, torch.inference_mode():
            graph = self.graphs.get(key) or self._capture(key)
            self.graphs.move_to_end(key)
            static_rows, static_starts, out = graph[1:]
            static_rows.copy_(rows.pin_memory(), non_blocking=True)
            static_starts.copy_(starts.pin_memory(), non_blocking=True)
            graph[0].replay()
            host = out[:real, 0].float().to("cpu", non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        done.synchronize()
        return host.numpy()

    def prepare(self, max_pairs: int, max_tokens: int) -> int:
        """Capture ahead the shapes a request of up to ``max_pairs`` pairs (a batch of up to ``max_tokens``) takes, so
        no such request waits for a capture (a capture is a few passes); returns how many were captured."""
        import torch  # lazy: torch loads only on this path

        captured, pairs = 0, 16
        while pairs <= max_pairs:
            for tokens in range(self.step, min(pairs * self.window, max_tokens) + 1, self.step):
                with self.lock, torch.inference_mode():
                    if (tokens, pairs + 1) not in self.graphs:
                        self._capture((tokens, pairs + 1))
                        captured += 1
            pairs *= 2
        return captured

    def _capture(self, key: tuple[int, int]) -> tuple:
        """A graph for one bucket shape (call under the lock); the least recently used one goes beyond ``size``."""
        import torch  # lazy: torch loads only on this path

        tokens, bounds = key
        static_rows = torch.zeros((3, tokens), dtype=torch.int64, device=self.device)
        static_starts = (torch.arange(bounds, dtype=torch.int64, device=self.device) * tokens // (bounds - 1)).int()

        def forward():
            return self.encoder.logits(static_rows[0], static_rows[1], static_rows[2], static_starts, self.window)

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph: kernels pick their plans here
                forward()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = forward()
        entry = (graph, static_rows, static_starts, out)
        self.graphs[key] = entry
        while len(self.graphs) > self.size:
            self.graphs.popitem(last=False)
        return entry


def _model_lock(model) -> threading.Lock:
    """One lock per model on the GPU, kept on the model (its replicas share it): graph captures must not see
    another thread's launches."""
    if not hasattr(model, "graph_lock"):
        model.graph_lock = threading.Lock()
    return model.graph_lock


class PackedEngine(Engine):
    """A cross-encoder replica that scores pairs packed end to end on a GPU (same interface as the padded engines)."""

    takes_tokens = True
    merges = True  # a pair's score does not depend on what shares its batch: requests may share one
    fills = True  # requests fill their batches on their own threads (see WorkerPool.fill)

    def __init__(self, name: str, tokenizer: TextTokenizer, layout: Layout, model, *, device: str,
                 attention: Attention) -> None:
        self.name, self.tokenizer, self.layout, self.model, self.device = name, tokenizer, layout, model, device
        self.encoder = PackedEncoder(model, attention)
        self.graphs: GraphCache | None = None  # see use_graphs

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs from their texts (truncated longest first to the window)."""
        if not documents:
            return np.zeros(0, dtype=np.float32)
        return self._forward(self.tokenizer.packed_texts([(query, d) for d in documents], self.layout.max_length))

    def score_encoded_pairs(self, pairs: Sequence[tuple]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs already tokenized by the request's plan."""
        return self._forward(self.tokenizer.packed_pairs(pairs))

    def score_packed(self, batches: Sequence[dict]) -> np.ndarray:
        """Raw ranking logits of batches filled on the requests' threads, in one pass."""
        return self._forward(merge_packed(batches))

    @property
    def how(self) -> str:
        """How the pass runs, for /info and the page."""
        return "pairs packed end to end, variable-length flash attention" + (", CUDA graphs" if self.graphs else "")

    def use_graphs(self, on: bool = True) -> str | None:
        """Replay the pass as CUDA graphs (on a GPU): checked on a short batch against the plain pass; returns why
        not where they do not run here (then the plain pass serves)."""
        self.graphs = None
        self.graphs, why = capture_graphs(self, on)
        return why

    def failure(self) -> str | None:
        """Why the packed pass does not run here (a kernel missing from this build of torch, say), from two short
        pairs, or None when it runs."""

        try:
            out = self._forward(pack_rows([[1, 2, 3], [1, 2, 3, 4, 5]], [[0, 0, 0], [0, 0, 0, 1, 1]]))
        except Exception as exc:  # noqa: BLE001 - any failure means: run padded, saying why
            return f"the packed pass failed here: {str(exc).splitlines()[0][:200]}"
        return None if out.shape == (2,) and np.isfinite(out).all() else "the packed pass gave no finite scores"

    def _forward(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        return forward_packed(self, packed)


def capture_graphs(engine, on: bool = True) -> tuple[GraphCache | None, str | None]:
    """CUDA graphs of a packed engine's pass (``engine.encoder`` with its ``graphs`` off), checked on a short batch
    against the plain pass, the usual shapes captured ahead: (the graphs, None), or (None, why not) where they do not
    run here (then the plain pass serves)."""
    if not on or engine.device == "cpu":
        return None, None if not on else "CUDA graphs need a GPU"
    probe = pack_rows([[1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7]], [[0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 1]])
    try:
        graphs = GraphCache(engine.encoder, engine.device, engine.layout.max_length)
        replayed, plain = graphs.run(probe), forward_packed(engine, probe)
    except Exception as exc:  # noqa: BLE001 - any failure means: the plain pass serves, saying why
        return None, f"CUDA graphs failed here: {str(exc).splitlines()[0][:200]}"
    if not np.allclose(replayed, plain, atol=1e-2):
        return None, f"CUDA graphs gave other scores ({replayed} against {plain})"
    started = time.perf_counter()
    try:
        count = graphs.prepare(128, min(32_768, batching_for(engine.device)["token_budget"]))
        log.info("%s: %d CUDA graphs captured ahead in %.1f s", engine.name, count, time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - the shapes not captured yet are captured when first seen
        log.warning("%s: capturing CUDA graphs ahead stopped: %s", engine.name, str(exc).splitlines()[0][:200])
    return graphs, None


def forward_packed(engine, packed: dict[str, np.ndarray]) -> np.ndarray:
    """One pass of a packed engine over a packed batch (on its graphs where it has them): the token rows go to the
    device in one copy, one logit a pair comes back in one."""
    import torch  # lazy: torch loads only on this path

    if engine.graphs is not None:
        return engine.graphs.run(packed)
    rows = torch.from_numpy(np.stack([packed["input_ids"], packed["token_type_ids"], packed["position_ids"]]))
    rows = rows.pin_memory().to(engine.device, non_blocking=True) if engine.device != "cpu" else rows
    starts = torch.from_numpy(packed["starts"]).to(engine.device, non_blocking=True)
    with torch.inference_mode():
        logits = engine.encoder.logits(rows[0], rows[1], rows[2], starts, int(packed["longest"]))
        return logits[:, 0].float().cpu().numpy()
