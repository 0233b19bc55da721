"""A loaded model that scores (query, document) pairs: windows, batches, cost and cache.

Scores are normalised to [0, 1]: the sigmoid of a cross-encoder's ranking logit, (1 + cosine) / 2 for an
embedding model, or (1 + MaxSim / query tokens) / 2 for a late-interaction model; ``raw=True`` gives the logit,
the cosine or the MaxSim itself.
A text longer than the model's window is scored by its best window of overlapping chunks
(``"chunk"``, the default: Cohere's behaviour) or truncated to one window (``"truncate"``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from scoring import choice as choosing
from scoring import engines
from scoring.batching import plan_batches, spread_budget
from scoring.cache import DEFAULT_CACHE_BYTES, ScoreCache, cache_key
from scoring.checkpoint import Layout, ModelInfo, file_list
from scoring.engines.st_engine import causal_backends, st_replicas
from scoring.errors import ModelLoadError
from scoring.media import identity
from scoring.planning import LongDocuments, Plan, Planner
from scoring.pool import Shared, Ticket, WorkerPool

log = logging.getLogger("rag_augment.scorer")

UNMEASURED = "default until measured on this machine"
__all__ = ["LongDocuments", "ModelSource", "Plan", "Scorer"]


class VectorStore(Protocol):
    """Document vectors computed earlier by the same model (the local index's), looked up by text."""

    def token_vectors(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """Each text's stored vectors, or None where the store has none."""
        ...


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


class Scorer:
    """A loaded model that scores (query, document) pairs; thread-safe (batches run on the worker pool)."""

    def __init__(self, info: ModelInfo, model: WorkerPool | Scorer, *, batch_size: int = 32, cache_bytes: int | None = None,
                 token_budget: int = 512) -> None:
        self.info = info
        self._token_budget = token_budget
        self._batch_size = batch_size
        self._store: VectorStore | None = None
        if isinstance(model, Scorer):  # a second name for an already loaded model: share its workers (and cache)
            self._pool = model._pool
            self._cache = model._cache if cache_bytes is None else ScoreCache(cache_bytes)
            self._store = model._store
        else:
            self._pool = model
            self._cache = ScoreCache(DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes)

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

    def close(self) -> None:
        """Let go of the model's replicas and worker threads (a model loaded for a while: a candidate judged and
        dropped); a second name for the same model shares them, so both are closed."""
        self._pool.close()

    def bound_caches(self, cache_bytes: int, token_cache_bytes: int) -> None:
        """Hold at most these bytes in this model's score (or embedding) cache and its token cache (0 turns one off);
        set before serving: what the replaced caches held is dropped."""
        if self._cache.capacity != cache_bytes:
            self._cache.resize(cache_bytes)
        if self._pool.tokens.capacity != token_cache_bytes:
            self._pool.tokens.resize(token_cache_bytes)

    def attach_store(self, store: VectorStore) -> None:
        """Read document vectors from ``store`` (the local index's, stored by this model at its build) before encoding:
        reranking the index's own passages then costs a late-interaction model one query encoding and MaxSim."""
        self._store = store

    def _stored(self, texts: list[str]) -> list[np.ndarray | None]:
        """The attached store's vectors of ``texts``; none where it cannot be read (a closed or damaged index file:
        the model encodes them as it would without one)."""
        try:
            return self._store.token_vectors(texts)
        except Exception as exc:
            log.warning("the stored document vectors cannot be read (%s); encoding instead", str(exc).splitlines()[0])
            return [None] * len(texts)

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
        """The windows to score for each text and their token lengths (see :class:`scoring.planning.Planner`)."""
        return Planner(self._pool, self.info).plan(query, texts, long_documents=long_documents,
                                                  max_tokens_per_doc=max_tokens_per_doc, truncate_left=truncate_left,
                                                  instruction=instruction, budget=budget, ticket=ticket)

    def plan_media(self, query: str, documents: Sequence, *, instruction: str | None = None,
                   budget: int | None = None) -> Plan:
        """A request with image documents, one unit each (see :meth:`scoring.planning.Planner.plan_media`)."""
        return Planner(self._pool, self.info).plan_media(query, documents, instruction=instruction, budget=budget)

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

        fills = self._pool.replicas[0].fills

        def batch(positions: list[int]) -> Shared:  # may share a forward pass with other requests' batches
            pairs = [(items[m][0].query_encoding, items[m][0].encodings[items[m][1]]) for m in positions]
            return Shared("encoded-pairs", pairs, _score_encoded, self._token_budget, self._batch_size,
                          self._pool.fill(pairs) if fills else None)

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
        if self.info.mode != "cross-encoder":  # vectors (one per text, or one per token) and the engine's similarity
            vectors, q = self._embed(plan.units, ticket, lengths=plan.lengths, query=plan.query)
            similarity = self._pool.replicas[0].similarity(q, vectors)
            return similarity if raw else self._pool.replicas[0].normalized(similarity, q)
        told = {"instruction": plan.instruction} if plan.instruction else {}
        keys = [cache_key(self.backend.backend, *told.values(), plan.query, plan.name(i)) for i in range(len(plan.units))]
        if self._pool.replicas[0].merges:  # the batches may share a pass with other requests' (packed engines)
            def batch(positions: list[int]) -> Callable:
                triples = [(plan.instruction, plan.query, plan.units[m]) for m in positions]
                return Shared("text-triples", triples, _score_triples, self._token_budget, self._batch_size)
        else:
            def batch(positions: list[int]) -> Callable:
                return lambda replica: replica.score_pairs(plan.query, [plan.units[m] for m in positions], **told)
        logits = self._cached_logits(keys, plan.lengths, batch, ticket)
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
        vectors = self._embed(texts, ticket)[0]
        return np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)

    def document_vectors(self, texts: Sequence[str], *, background: bool = False) -> list[tuple[str, np.ndarray]]:
        """(piece, vectors) for each piece this model scores the texts by (a text, or each window of one longer than its
        window; the windows of a model that reads documents apart from the query do not depend on the query): what
        an index built with the model stores. ``background``: only when no request's batch waits."""
        if self.info.mode == "cross-encoder":
            raise ModelLoadError(f"{self.info.name} is a cross-encoder; its documents have no vectors of their own")
        plan = self.plan("", texts)
        units = list(plan.units)
        with self._pool.ticket(background=background) as own:
            return list(zip(units, self._embed(units, own, lengths=plan.lengths)[0], strict=True))

    def _embed(self, texts: list[str], ticket: Ticket, *, lengths: Sequence[int] | None = None,
               query: str | None = None) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Document vectors (cached, else from the attached store; one row per text, or a late-interaction model's one
        per token) and, with ``query``, the query's, all queued at once so they run side by side."""
        engine = self.backend.backend
        keys = [cache_key(engine, identity(t)) for t in texts]
        found = self._cache.get_many(keys)
        missing = sorted({k: i for i, k in enumerate(keys) if k not in found}.values())
        stored = [i for i in missing if isinstance(texts[i], str)]  # the index stores passages' vectors, not images'
        if stored and self._store is not None:
            found.update({keys[i]: v for i, v in zip(stored, self._stored([texts[i] for i in stored]), strict=True)
                          if v is not None})
            missing = [i for i in missing if keys[i] not in found]
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
            for group, vectors in zip(groups, outputs, strict=True):
                for j, vector in zip(group, vectors, strict=True):  # a copy: a row view would keep its whole batch
                    found[keys[missing[j]]] = np.array(vector, dtype=np.float32)  # alive in the cache, uncounted
            self._cache.put_many({keys[i]: found[keys[i]] for i in missing})
        return [found[k] for k in keys], q

    def seed_embeddings(self, texts: Sequence[str], vectors: np.ndarray) -> bool:
        """Put stored fp32 document embeddings (the local index's) in the cache; refused on a reduced-precision engine."""
        engine = self.backend.backend
        if (self.info.mode != "embedding" or engine in choosing.REDUCED_PRECISION
                or not self._cache.fits(len(texts), vectors[0].nbytes if len(texts) else 0)):
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

    def _build(self, name: str, workers: int, threads: int) -> list:
        """``name``'s replicas of this model as ``workers`` x ``threads``."""
        source = self._pool.source
        if source.runner == "sentence-transformers":
            return st_replicas(source.path, self.info.mode, source.trust_remote_code, workers, device=source.device,
                               max_tokens=source.max_tokens, backend=name)[0]
        return engines.replicas(name, source.path, source.layout, self._pool.tokenizer, cache_dir=source.cache_dir,
                                workers=workers, trust_remote_code=source.trust_remote_code, device=source.device,
                                threads=threads)

    def _serve_with(self, choice: choosing.Choice) -> None:
        """Swap to ``choice``'s engine and shape unless it is the one serving."""
        current, cores = self.backend, self.workers
        if (choice.backend, choice.workers or cores, choice.threads) != (current.backend, cores, current.threads):
            self._pool.swap(self._build(choice.backend, choice.workers or cores, choice.threads),
                            choice)
        else:
            self._pool.choice = choice

    def tune(self, budget_s: float | None = None) -> choosing.Choice:
        """Measure every backend here on the probe and, if another is the better choice, serve with it from now on
        (``budget_s`` bounds the measuring time)."""
        source = self._pool.source
        if source is None or source.cache_dir is None:
            return self.backend
        if source.runner == "sentence-transformers":
            names = causal_backends(source.device)
            choice = choosing.choose(source.path, source.layout, self._pool.tokenizer, cache_dir=source.cache_dir,
                                     workers=self.workers, device=source.device, budget_s=budget_s, names=names,
                                     build=lambda name: self._build(name, self.workers, 1),
                                     reference=self._pool.replicas if self.backend.backend == names[0] else None)
        else:
            fp32 = engines.backends_for(source.device)[0]
            reference = getattr(self._pool.replicas[0], "model", None) if self.backend.backend == fp32 else None
            choice = choosing.choose(source.path, source.layout, self._pool.tokenizer, cache_dir=source.cache_dir,
                                     reference_model=reference, trust_remote_code=source.trust_remote_code,
                                     workers=self.workers, device=source.device, budget_s=budget_s,
                                     shape_build=self._build if source.device == "cpu" else None)
        self._serve_with(choice)
        log.info("backend for %s: %s; measured (probe seconds, x the reference's time in the same rounds, the gate's "
                 "verdict): %s", self.info.name, choice.describe(), ", ".join(
                     f"{m.backend} {m.seconds:.3f}s x{m.relative or 1:.2f}, {m.verdict()}" if m.seconds is not None
                     else f"{m.backend} skipped: {m.note}" for m in choice.measurements))
        return choice

    def adopt_remembered(self) -> choosing.Choice | None:
        """Serve with the choice remembered for this model here (measured by another process), if there is one."""
        source = self._pool.source
        if source is None or source.cache_dir is None:
            return None
        choice = choosing.load_choice(source.path, source.layout, source.cache_dir, device=source.device)
        if choice is None or (source.runner == "sentence-transformers"
                              and choice.backend not in causal_backends(source.device)):
            return None
        choice = replace(choice, how="measured on this machine at this start, in a child process")
        self._serve_with(choice)
        log.info("backend for %s: %s (measured apart)", self.info.name, choice.describe())
        return choice


def _score_triples(replica, triples: list) -> np.ndarray:
    """Logits of (instruction, query, text) triples on one replica (a :class:`Shared` batch's run)."""
    return replica.score_triples(triples)


def _score_encoded(replica, pairs: list) -> np.ndarray:
    """Logits of tokenized pairs on one replica (a :class:`Shared` batch's run: whichever requests the pairs are from)."""
    return replica.score_encoded_pairs(pairs)


