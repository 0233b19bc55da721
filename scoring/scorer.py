"""A loaded model that scores (query, document) pairs: windows, batches, cost and cache.

Scores are normalised to [0, 1]: the sigmoid of a cross-encoder's ranking logit, or
(1 + cosine) / 2 for an embedding model; ``raw=True`` gives the logit or the cosine itself.
A text longer than the model's window is scored by its best window of overlapping chunks
(``"chunk"``, the default: Cohere's behaviour) or truncated to one window (``"truncate"``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from scoring import choice as choosing
from scoring import engines
from scoring.batching import padding_waste, plan_batches, spread_budget
from scoring.cache import ScoreCache, cache_key
from scoring.checkpoint import Layout, ModelInfo, file_list
from scoring.engines.st_engine import causal_backends, st_replicas
from scoring.errors import LimitExceeded, ModelLoadError, RerankError
from scoring.pool import Shared, Ticket, WorkerPool
from scoring.tokenizer import word_count

log = logging.getLogger("rag_augment.scorer")

LongDocuments = Literal["truncate", "chunk"]
UNMEASURED = "default until measured on this machine"
__all__ = ["LongDocuments", "ModelSource", "Plan", "Scorer", "padding_waste", "plan_batches", "spread_budget"]


@dataclass(frozen=True)
class ModelSource:
    """Where a loaded model's files are and how to rebuild its engines on another backend."""

    path: Path
    layout: Layout
    cache_dir: Path | None
    trust_remote_code: bool
    needs_tuning: bool = False
    device: str = "cpu"
    runner: str = "graph"  # or "sentence-transformers" (causal-LM rerankers)
    max_tokens: int | None = None


@dataclass(frozen=True)
class Plan:
    """What scoring a request computes: the pieces of text (windows), which document each belongs to, their tokens."""

    query: str
    units: Sequence[str]  # each window's text
    owners: np.ndarray
    lengths: list[int]
    documents: int
    query_encoding: object | None = None  # cross-encoders: the query's tokens ...
    encodings: list | None = None  # ... and each unit's, from which the pair inputs are built without tokenizing again
    instruction: str | None = None  # a task instruction the model takes (causal-LM rerankers)
    names: list[str] | None = None  # what identifies each window's tokens (its cache key), where not its text

    def name(self, i: int) -> str:
        """What identifies window ``i``'s tokens: its text, or the text and how it was cut."""
        return self.names[i] if self.names is not None else self.units[i]

    @property
    def cost(self) -> int:
        """Tokens the model reads for this request (every window, special tokens and query included)."""
        return int(sum(self.lengths))

    @property
    def windows(self) -> int:
        """Forward-pass inputs: one per document, more for documents scored by several windows."""
        return len(self.units)


class Scorer:
    """A loaded model that scores (query, document) pairs; thread-safe (batches run on the worker pool)."""

    def __init__(self, info: ModelInfo, model: WorkerPool | Scorer, *, batch_size: int = 32, cache_size: int | None = None,
                 token_budget: int = 512) -> None:
        self.info = info
        self._token_budget = token_budget
        self._batch_size = batch_size
        if isinstance(model, Scorer):  # a second name for an already loaded model: share its workers (and cache)
            self._pool = model._pool
            self._cache = model._cache if cache_size is None else ScoreCache(cache_size)
        else:
            self._pool = model
            self._cache = ScoreCache(20_000 if cache_size is None else cache_size)

    @property
    def backend(self) -> choosing.Choice:
        """The inference backend in use and how it was chosen."""
        return self._pool.choice

    @property
    def engine(self) -> str:
        """How the forward pass runs (padded batches; packed pairs with flash attention and CUDA graphs on a GPU)."""
        return self._pool.replicas[0].how

    @property
    def workers(self) -> int:
        """Threads running forward passes, each with its own replica."""
        return self._pool.workers

    @property
    def pool(self) -> WorkerPool:
        """The worker pool (tickets for fair, cancellable scheduling; counters for /metrics)."""
        return self._pool

    @property
    def cache(self) -> ScoreCache:
        """The document-embedding (embedding mode) or pair-score (cross-encoder) cache, for metrics."""
        return self._cache

    def describe(self) -> str:
        """The model sentence plus the backend, for the UI and logs."""
        return f"{self.info.describe()}; backend {self.backend.describe()}"

    # --- planning --------------------------------------------------------------------------------

    def plan(self, query: str, texts: Sequence[str], *, long_documents: LongDocuments = "chunk",
             max_tokens_per_doc: int | None = None, truncate_left: bool = False, instruction: str | None = None,
             budget: int | None = None, ticket: Ticket | None = None) -> Plan:
        """The windows to score for each text and their token lengths (``max_tokens_per_doc`` cuts each text first).

        Every text is tokenized once, here: its length, its windows and (for a cross-encoder) the model
        inputs of each (query, window) pair all come from that one pass. A request that costs more than
        ``budget`` tokens is refused as soon as that is certain (see :meth:`_encode_within`); with a
        ``ticket``, a large request tokenizes in slices that take turns with other requests' batches.
        """
        if long_documents not in ("truncate", "chunk"):
            raise RerankError(f"long_documents must be 'truncate' or 'chunk', got {long_documents!r}")
        if max_tokens_per_doc is not None and (isinstance(max_tokens_per_doc, bool) or
                                               not isinstance(max_tokens_per_doc, int) or max_tokens_per_doc < 1):
            raise RerankError(f"max_tokens_per_doc must be a positive integer, got {max_tokens_per_doc!r}")
        texts = list(texts)
        cross = self.info.mode == "cross-encoder"
        specials = self._pool.tokenizer.special_tokens(pair=cross)
        told = [instruction] if instruction and cross else []  # read with every pair: window room and cost, as the query
        head = self._pool.encode([*told, query], spans=False) if cross else []
        instruction_tokens = len(head.pop(0)) if told else 0
        query_encoding = head.pop(0) if cross else None
        query_tokens = len(query_encoding) + instruction_tokens if cross else 0
        window = max(32 if cross else 8, self.info.max_length - min(query_tokens, self.info.max_length // 2) - specials)
        fits = cross and query_tokens + window + specials <= self.info.max_length  # else: the tokenizer truncates
        cutting = {"window": window, "chunk": long_documents == "chunk", "max_tokens": max_tokens_per_doc,
                   "from_end": truncate_left}
        floor = partial(self._cost_floor, cutting=cutting, room=query_tokens + specials)
        encoded = self._encode_within(texts, floor, budget, ticket)
        if not fits:  # windows are scored from their text: a text cut into windows needs its spans now
            cut = [i for i, e in enumerate(encoded) if len(e) > min(window, max_tokens_per_doc or window)]
            for start, stop, again in self._encode_slices([texts[i] for i in cut], ticket, spans=True):
                for i, encoding in zip(cut[start:stop], again, strict=True):
                    encoded[i] = encoding
        owners: list[int] = []
        pieces: list = []
        places: list[tuple[int, int | None]] = []  # (text, window number where the window is a cut of it)
        for i, encoding in enumerate(encoded):
            whole = len(encoding)
            for n, piece in enumerate(_windows(encoding, **cutting)):
                owners.append(i)
                pieces.append(piece)
                places.append((i, n if len(piece) not in (0, whole) else None))
        lengths = [min(self.info.max_length, query_tokens + len(p) + specials) for p in pieces]  # len(): no id list built
        if not fits:
            units = [texts[i] if n is None else _spelled(texts[i], p) for (i, n), p in zip(places, pieces, strict=True)]
            return Plan(query, units, np.asarray(owners, dtype=np.int64), lengths, len(texts), instruction=instruction)
        label = " ".join(f"{k}={v}" for k, v in cutting.items())
        names = [texts[i] if n is None else f"{texts[i]}\x00{label} {n}" for i, n in places]
        return Plan(query, Windows(texts, places, lambda i: self._window_texts(texts[i], cutting)),
                    np.asarray(owners, dtype=np.int64), lengths, len(texts), query_encoding, pieces, instruction, names)

    def _cost_floor(self, tokens: int, *, cutting: dict, room: int) -> int:
        """The fewest tokens the model reads for a text of ``tokens`` tokens, cut as ``cutting`` says (``room``: the
        query's and the template's tokens, read with every window)."""
        if cutting["max_tokens"]:
            tokens = min(tokens, cutting["max_tokens"])
        window, longest = cutting["window"], self.info.max_length
        one = min(longest, room + min(tokens, window))
        if not cutting["chunk"] or tokens <= window:
            return one
        return max(one, tokens if longest >= window else -(-tokens // window) * longest)  # the windows cover every token

    def _encode_within(self, texts: list[str], floor: Callable[[int], int], budget: int | None,
                       ticket: Ticket | None) -> list:
        """Every text's tokens, or :class:`LimitExceeded` as soon as the request is certainly over ``budget``.

        Cheap bounds first: a text's words (runs of word characters between whitespace) are tokens no tokenizer
        here merges, so refusing a body far over the budget reads its characters once and tokenizes nothing.
        Then texts are tokenized in slices, each slice's exact cost added to the rest's bound, stopping once over.
        With a ``ticket``, each slice of a large request is a task in the worker pool: a request's tokenizing
        then takes turns with other requests' forward passes instead of holding the cores.
        """
        floors = self._word_floors(texts, floor, budget) if budget is not None else None
        encoded: list = []
        known, rest = 0, sum(floors) if floors else 0
        for start, stop, part in self._encode_slices(texts, ticket, spans=False):
            encoded.extend(part)
            if floors is not None:
                known += sum(floor(len(e)) for e in encoded[start:stop])
                rest -= sum(floors[start:stop])
                if known + rest > budget:
                    raise LimitExceeded(f"the request needs at least {known + rest:,} tokens ({stop:,} of {len(texts):,} "
                                        f"documents tokenized, the rest counted by their words); the limit is "
                                        f"{budget:,} (RERANK_MAX_REQUEST_TOKENS)")
        return encoded

    def _encode_slices(self, texts: list[str], ticket: Ticket | None, *, spans: bool) -> Iterator[tuple[int, int, list]]:
        """Texts tokenized a slice at a time, as (start, stop, encodings); with a ``ticket`` and more than one slice,
        each slice is a pool task under it, so a large request's tokenizing takes turns with other requests."""
        slices = _slices(texts, SLICE_CHARS)
        pooled = ticket is not None and len(slices) > 1
        for start, stop in slices:
            part = texts[start:stop]
            if not pooled:
                yield start, stop, self._pool.encode(part, spans=spans)
                continue
            cost = sum(len(t) for t in part) // 4  # about a token per four characters, for fair turns
            task = lambda _replica, p=part: self._pool.encode(p, spans=spans)  # noqa: E731
            yield start, stop, self._pool.run(ticket, [(cost, task)])[0]

    def _word_floors(self, texts: list[str], floor: Callable[[int], int], budget: int) -> list[int]:
        """Each text's least cost from its word count; :class:`LimitExceeded` once their sum is over ``budget``."""
        counts = word_count if self._pool.tokenizer.words_are_tokens() else (lambda _text: 0)
        floors, total = [], 0
        for n, text in enumerate(texts, 1):
            floors.append(floor(counts(text)))
            total += floors[-1]
            if total > budget:
                raise LimitExceeded(f"the request needs at least {total:,} tokens (counted from the words of its first "
                                    f"{n:,} of {len(texts):,} documents); the limit is {budget:,} "
                                    "(RERANK_MAX_REQUEST_TOKENS)")
        return floors

    def _window_texts(self, text: str, cutting: dict) -> list[str]:
        """The texts of the windows a text is cut into (tokenized again, with character spans)."""
        encoding = self._pool.encode([text])[0]
        return [_spelled(text, p) if len(p) else text for p in _windows(encoding, **cutting)]

    # --- scoring ---------------------------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str], *, raw: bool = False, long_documents: LongDocuments = "chunk",
              max_tokens_per_doc: int | None = None, truncate_left: bool = False,
              ticket: Ticket | None = None, instruction: str | None = None) -> np.ndarray:
        """Relevance of each text to the query, higher is better (see the module docstring); ``instruction`` only
        where the model takes one (:attr:`ModelInfo.takes_instruction`)."""
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float32)
        plan = self.plan(query, texts, long_documents=long_documents, max_tokens_per_doc=max_tokens_per_doc,
                         truncate_left=truncate_left, instruction=instruction if self.info.takes_instruction else None)
        return self.score_plan(plan, raw=raw, ticket=ticket)

    def score_plan(self, plan: Plan, *, raw: bool = False, ticket: Ticket | None = None) -> np.ndarray:
        """Scores of a planned request: each document's best window."""
        return self.score_plans([plan], raw=raw, ticket=ticket)[0]

    def score_plans(self, plans: Sequence[Plan], *, raw: bool = False, ticket: Ticket | None = None) -> list[np.ndarray]:
        """Scores of several planned requests; a cross-encoder's pairs of every request share its batches, so
        concurrent requests fill forward passes together (Ray Serve's ``@serve.batch`` hands them over at once)."""
        if ticket is None:
            with self._pool.ticket() as own:
                return self.score_plans(plans, raw=raw, ticket=own)
        shared = (self.info.mode == "cross-encoder" and all(p.encodings is not None for p in plans)
                  and self._pool.replicas[0].takes_tokens)
        if shared:
            flat = self._encoded_logits([(p, i) for p in plans for i in range(len(p.units))], ticket)
            per_plan, start = [], 0
            for p in plans:
                logits = flat[start:start + len(p.units)]
                start += len(p.units)
                per_plan.append(logits if raw else (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32))
        else:
            per_plan = [self._score_units(p, raw=raw, ticket=ticket) if p.documents else np.zeros(0, np.float32)
                        for p in plans]
        out = []
        for p, unit_scores in zip(plans, per_plan, strict=True):
            if p.documents == 0 or len(p.units) == p.documents:
                out.append(unit_scores if p.documents else np.zeros(0, dtype=np.float32))
                continue
            best = np.full(p.documents, -np.inf, dtype=np.float32)
            np.maximum.at(best, p.owners, unit_scores)
            out.append(best)
        return out

    def _encoded_logits(self, items: Sequence[tuple[Plan, int]], ticket: Ticket) -> np.ndarray:
        """Raw logits of (plan, unit) pairs from their tokens, batched together whatever request each comes from."""
        engine = self.backend.backend
        keys = [cache_key(engine, p.query, p.name(i)) for p, i in items]

        def batch(positions: list[int]) -> Shared:  # may share a forward pass with other requests' batches
            pairs = [(items[m][0].query_encoding, items[m][0].encodings[items[m][1]]) for m in positions]
            return Shared("encoded-pairs", pairs, _score_encoded, self._token_budget, self._batch_size)

        return self._cached_logits(keys, [p.lengths[i] for p, i in items], batch, ticket)

    def _cached_logits(self, keys: list[bytes], lengths: list[int], batch: Callable[[list[int]], Callable],
                       ticket: Ticket) -> np.ndarray:
        """Logits from the cache where it has them; the rest computed in batches under a token budget (``batch``
        makes the pool task for the items at the given positions)."""
        found = self._cache.get_many(keys)
        logits = np.array([found[k] if k in found else np.nan for k in keys], dtype=np.float32)
        todo = [j for j, k in enumerate(keys) if k not in found]
        if todo:
            sizes = [lengths[j] for j in todo]
            groups = plan_batches(sizes, spread_budget(sizes, self._token_budget, self.workers, self._batch_size),
                                  self._batch_size)
            outputs = self._pool.run(ticket, [(max(sizes[m] for m in g) * len(g), batch([todo[m] for m in g]))
                                              for g in groups])
            for group, out in zip(groups, outputs, strict=True):
                logits[[todo[m] for m in group]] = np.asarray(out, dtype=np.float32).reshape(len(group))
            self._cache.put_many({keys[j]: np.float32(logits[j]) for j in todo})
        return logits

    def _score_units(self, plan: Plan, *, raw: bool, ticket: Ticket) -> np.ndarray:
        """One forward pass per unit (batched) from the texts, cached by engine, query and text."""
        if self.info.mode == "embedding":
            vectors, q = self._embed(plan.units, ticket, lengths=plan.lengths, query=plan.query)
            cosine = np.asarray((vectors * q).sum(axis=1), dtype=np.float32)  # row by row: equal texts tie exactly
            return cosine if raw else (cosine + 1.0) / 2.0
        told = {"instruction": plan.instruction} if plan.instruction else {}
        keys = [cache_key(self.backend.backend, *told.values(), plan.query, u) for u in plan.units]
        logits = self._cached_logits(keys, plan.lengths, lambda positions: lambda replica: replica.score_pairs(
            plan.query, [plan.units[m] for m in positions], **told), ticket)
        return logits if raw else (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    def embed(self, texts: Sequence[str], *, query: bool = False, ticket: Ticket | None = None,
              background: bool = False) -> np.ndarray:
        """Unit-length embeddings (one row per text); only embedding-mode models have them.

        ``background`` work (building an index) runs only when no request's batch is waiting.
        """
        if self.info.mode != "embedding":
            raise ModelLoadError(f"{self.info.name} is a cross-encoder; it has no embeddings")
        if ticket is None:
            with self._pool.ticket(background=background) as own:
                return self.embed(texts, query=query, ticket=own)
        texts = list(texts)
        if query:
            cost = sum(min(self.info.max_length, c + 2) for c in self._pool.count(texts))
            return self._pool.run(ticket, [(cost, lambda replica: replica.embed(texts, query=True))])[0]
        return self._embed(texts, ticket)[0]

    def _embed(self, texts: list[str], ticket: Ticket, *, lengths: Sequence[int] | None = None,
               query: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Document embeddings (cached) and, with ``query``, the query's, all queued at once so they run side by side."""
        engine = self.backend.backend
        keys = [cache_key(engine, t) for t in texts]
        found = self._cache.get_many(keys)
        missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.values())
        todo = [texts[i] for i in missing]
        sizes = ([min(self.info.max_length, lengths[i]) for i in missing] if lengths is not None else
                 [min(self.info.max_length, c + 2) for c in self._pool.count(todo)] if todo else [])
        size = max(64, self._batch_size)
        groups = plan_batches(sizes, spread_budget(sizes, self._token_budget, self.workers, size), size)
        tasks = [(max(sizes[j] for j in g) * len(g), lambda replica, g=g: replica.embed([todo[j] for j in g]))
                 for g in groups]
        if query is not None:
            cost = min(self.info.max_length, self._pool.count([query])[0] + 2)
            tasks.insert(0, (cost, lambda replica: replica.embed([query], query=True)))
        outputs = self._pool.run(ticket, tasks) if tasks else []
        q = outputs.pop(0)[0] if query is not None else None
        if missing:
            fresh = np.empty((len(todo), outputs[0].shape[1]), dtype=np.float32)
            for group, vectors in zip(groups, outputs, strict=True):
                fresh[group] = vectors
            for i, vector in zip(missing, fresh, strict=True):
                found[keys[i]] = vector
            self._cache.put_many({keys[i]: found[keys[i]] for i in missing})
        return (np.stack([found[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)), q

    def seed_embeddings(self, texts: Sequence[str], vectors: np.ndarray) -> bool:
        """Put stored fp32 document embeddings (the local index's) in the cache; refused on a reduced-precision engine."""
        engine = self.backend.backend
        if self.info.mode != "embedding" or engine in choosing.REDUCED_PRECISION or len(texts) > self._cache.capacity // 2:
            return False
        self._cache.put_many({cache_key(engine, t): v for t, v in zip(texts, vectors, strict=True)})
        return True

    @property
    def fingerprint(self) -> str:
        """Identifies the weights and scoring mode, so indexes built with another model are not reused."""
        return f"{self.info.mode}:{Path(self.info.path).name}:{file_list(Path(self.info.path))}"

    # --- the measured backend choice -------------------------------------------------------------

    @property
    def needs_tuning(self) -> bool:
        """True when the backend is ``auto`` and no measured choice exists yet for this model here."""
        source = self._pool.source
        return bool(source and source.needs_tuning and self.backend.provisional)

    def tune(self, budget_s: float | None = None) -> choosing.Choice:
        """Measure every backend here on the probe and, if another is the better choice, serve with it from now on
        (``budget_s`` bounds the measuring time)."""
        source = self._pool.source
        if source is None or source.cache_dir is None:
            return self.backend
        if source.runner == "sentence-transformers":
            names = causal_backends(source.device)
            build = lambda name: st_replicas(source.path, self.info.mode, source.trust_remote_code,  # noqa: E731
                                             self.workers, device=source.device, max_tokens=source.max_tokens,
                                             backend=name)[0]
            choice = choosing.choose(source.path, source.layout, self._pool.tokenizer, cache_dir=source.cache_dir,
                                     workers=self.workers, device=source.device, budget_s=budget_s, names=names,
                                     build=build, reference=self._pool.replicas if self.backend.backend == names[0]
                                     else None)
        else:
            fp32 = engines.backends_for(source.device)[0]
            reference = getattr(self._pool.replicas[0], "model", None) if self.backend.backend == fp32 else None

            def shaped(name: str, workers: int, threads: int) -> list:
                return engines.replicas(name, source.path, source.layout, self._pool.tokenizer, cache_dir=source.cache_dir,
                                        workers=workers, trust_remote_code=source.trust_remote_code,
                                        device=source.device, threads=threads)

            choice = choosing.choose(source.path, source.layout, self._pool.tokenizer, cache_dir=source.cache_dir,
                                     reference_model=reference, trust_remote_code=source.trust_remote_code,
                                     workers=self.workers, device=source.device, budget_s=budget_s,
                                     shape_build=shaped if source.device == "cpu" else None)
            cores = self.workers
            build = lambda name: shaped(name, choice.workers or cores, choice.threads)  # noqa: E731
        current = self.backend
        if (choice.backend, choice.workers or self.workers, choice.threads) != (current.backend, self.workers,
                                                                                current.threads):
            self._pool.swap(build(choice.backend), choice)
        else:
            self._pool.choice = choice
        log.info("backend for %s: %s; measured (probe seconds, Spearman vs fp32): %s", self.info.name,
                 choice.describe(), ", ".join(f"{m.backend} {m.seconds:.3f}s {m.spearman:.4f}" if m.seconds is not None
                                              else f"{m.backend} skipped: {m.note}" for m in choice.measurements))
        return choice


def _score_encoded(replica, pairs: list) -> np.ndarray:
    """Logits of tokenized pairs on one replica (a :class:`Shared` batch's run: whichever requests the pairs are from)."""
    return replica.score_encoded_pairs(pairs)


class Windows(Sequence[str]):
    """A plan's window texts, made when first read: a window scored from its tokens is named by its text and how
    it was cut, so serving never tokenizes a long text a second time just to spell out its windows."""

    def __init__(self, texts: list[str], places: list[tuple[int, int | None]], cut: Callable[[int], list[str]]) -> None:
        self._texts, self._places, self._cut, self._made = texts, places, cut, {}

    def __len__(self) -> int:
        return len(self._places)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        text, n = self._places[index]
        if n is None:
            return self._texts[text]
        if text not in self._made:
            self._made[text] = self._cut(text)
        return self._made[text][n]


SLICE_CHARS = 65_536  # a slice of a request tokenizes in ~10-30 ms on one core: the longest another request waits

def _slices(texts: Sequence[str], chars: int) -> list[tuple[int, int]]:
    """Consecutive ranges of texts of about ``chars`` characters each (a longer text is a slice of its own)."""
    out, start, size = [], 0, 0
    for i, text in enumerate(texts):
        if size and size + len(text) > chars:
            out.append((start, i))
            start, size = i, 0
        size += len(text)
    if start < len(texts) or not out:
        out.append((start, len(texts)))
    return out


def _spelled(text: str, piece) -> str:
    """A window's text, from the character spans of its tokens."""
    return text[piece.offsets[0][0]:piece.offsets[-1][1]]


def _windows(encoding, window: int, *, chunk: bool, max_tokens: int | None, from_end: bool) -> list:
    """A text's tokens cut for scoring: whole where they fit the window; else one window (its start, or its end)
    or overlapping windows every 3/4 of a window (the best one scores the text)."""
    if max_tokens and len(encoding) > max_tokens:
        encoding.truncate(max_tokens)
    if len(encoding) <= window:
        return [encoding]
    if not chunk:
        encoding.truncate(window, direction="left" if from_end else "right")
        return [encoding]
    encoding.truncate(window, stride=window - max(1, window * 3 // 4))
    return [encoding, *encoding.overflowing]
