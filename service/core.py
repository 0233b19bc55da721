"""The one front door: every face (Gradio, MCP, the HTTP routes, evaluation, benchmarks) ranks through here.

Modelled on text-embeddings-inference's ``Infer``: the faces only parse and render; this layer owns
the key, admission (one bound on requests in flight for all faces), the per-request cost budget
(tokens the model would read, known before any forward pass), fair scheduling and cancellation (a
ticket in the worker pool per request; a client that goes away has its pending batches dropped),
metrics for every face, one-line logs for user errors, and the ranking itself
(:func:`scoring.ranking.rank`, the same rules on every face).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from functools import partial

import pandas as pd

from retrieval import hybrid
from retrieval import retrievers as rc
from retrieval.index import LocalIndexError
from retrieval.retrievers import NoRetriever
from scoring import inputs, ranking
from scoring.calibration import Calibration
from scoring.errors import Cancelled, LimitExceeded, RerankError
from scoring.pool import Ticket
from scoring.ranking import DEFAULT_POLICY, Ranking, ScoringPolicy
from scoring.scorer import Scorer
from scoring.skim import SkimPolicy
from scoring.table import RerankResult, rerank_table
from service import pipeline
from service.auth import KeyCheck
from service.calls import Call, CancelToken, Limits
from service.errors import ClientGone, InvalidInput, Overloaded, ServiceError, TooLarge, Unavailable
from service.metrics import ServiceMetrics
from service.models import Models
from service.uploads import build_private_corpus

log = logging.getLogger("rag_augment.service")


class Service:
    """Ranks for every face, with one key, one set of limits, one queue and one set of metrics."""

    def __init__(self, models: Models, *, limits: Limits = Limits(), api_key: str | None = None,
                 policy: ScoringPolicy = DEFAULT_POLICY, retriever=None, embedder=None,
                 batcher: Callable[[ranking.Prepared], Awaitable[Ranking]] | None = None,
                 instruction: str | None = None, calibration: Calibration | None = None,
                 max_tokens_per_doc: int | None = None, skim: SkimPolicy = SkimPolicy()) -> None:

        self.models = models
        self.limits = limits
        self.keys = KeyCheck(api_key)
        self.policy = policy
        self.retriever = retriever or NoRetriever()
        self.embedder = embedder
        self.batcher = batcher
        self.instruction = instruction  # the default task instruction (RERANK_INSTRUCTION)
        self.calibration = calibration  # the default model's scores as probabilities (RERANK_CALIBRATION)
        self.max_tokens_per_doc = max_tokens_per_doc  # each document's first tokens only (RERANK_MAX_TOKENS_PER_DOC)
        self.skim = skim  # read every document's opening, then the best whole (RERANK_SKIM_TOKENS, RERANK_SKIM_KEEP)
        self.metrics = ServiceMetrics(self.scorers)
        self._executor = ThreadPoolExecutor(max_workers=limits.max_in_flight + 8, thread_name_prefix="service")
        self._in_flight = 0
        self._per_client: dict[str, int] = {}
        self._lock = threading.Lock()
        self.started_in_s: float | None = None  # how long building this service took (assembly.build sets it)

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet answered, every face together."""
        return self._in_flight

    def scorers(self) -> list:
        """Every loaded model the service uses (for metrics)."""
        return [*self.models.all, *([self.embedder] if self.embedder is not None else [])]

    # --- admission, metrics, logs ----------------------------------------------------------------

    def full(self, client: str | None) -> Overloaded | None:
        """Why a request from ``client`` would be refused now (the service is full, or the client has its share in
        flight), or None: the door asks before reading a body, so a flood of refusals costs next to nothing. Read
        without the lock: a stale answer only moves a refusal to :meth:`_admit`, which decides under it."""
        limits = self.limits
        if self._in_flight >= limits.max_in_flight:
            return Overloaded(f"the service is busy: {limits.max_in_flight} requests are in flight "
                              "(RERANK_MAX_QUEUE); retry shortly")
        if client is not None and self._per_client.get(client, 0) >= limits.max_in_flight_per_client:
            return Overloaded(f"this client already has {limits.max_in_flight_per_client} requests in flight, its "
                              "share (RERANK_MAX_IN_FLIGHT_PER_CLIENT); wait for an answer before sending more")
        return None

    def _admit(self, client: str | None) -> Overloaded | None:
        """Take a place for one request, or say why there is none (see :meth:`full`)."""
        with self._lock:
            refusal = self.full(client)
            if refusal is not None:
                return refusal
            self._in_flight += 1
            if client is not None:
                self._per_client[client] = self._per_client.get(client, 0) + 1
        return None

    def _release(self, client: str | None) -> None:
        with self._lock:
            self._in_flight -= 1
            if client is not None:
                left = self._per_client.pop(client) - 1
                if left:
                    self._per_client[client] = left

    @contextmanager
    def call(self, face: str, route: str, token: CancelToken | None = None, client: str | None = None) -> Iterator[Call]:
        """Admit one request (or refuse it with 429: the service is full, or ``client`` has its share in flight), then
        count, time and log how it ended."""
        call = Call(face, route, uuid.uuid4().hex[:12], token or CancelToken(), client)
        refusal = self._admit(client)
        if refusal is not None:
            self._record(call, refusal.status, 0.0, refusal)
            raise refusal
        self.metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            yield call
        except ServiceError as exc:
            self._record(call, exc.status, time.perf_counter() - started, exc)
            raise
        except RerankError as exc:
            error = (TooLarge if isinstance(exc, LimitExceeded) else InvalidInput)(str(exc))
            self._record(call, error.status, time.perf_counter() - started, error)
            raise error from None
        except Cancelled:
            error = ClientGone("the client went away; the request's remaining work was dropped")
            self._record(call, error.status, time.perf_counter() - started, error)
            raise error from None
        except Exception as exc:
            log.exception("%s %s request %s failed", call.face, call.route, call.id)
            error = ServiceError(f"internal error while serving request {call.id}; the server log has the details")
            self._record(call, error.status, time.perf_counter() - started, None)
            raise error from exc
        else:
            self._record(call, 200, time.perf_counter() - started, None)
        finally:
            self.metrics.in_flight.dec()
            self._release(client)

    def _record(self, call: Call, status: int, seconds: float, error: ServiceError | None) -> None:
        self.metrics.observe(call.face, call.route, status, seconds, call.documents)
        if error is not None:
            error.recorded = True
            if status < 500:
                log.info("%s %s request %s: %d %s", call.face, call.route, call.id, status, error.message)

    def refuse(self, face: str, route: str, error: ServiceError) -> ServiceError:
        """Count and log a refusal made by a face before the service was called (key, body size, schema)."""
        if not error.recorded:
            self._record(Call(face, route, "-", CancelToken()), error.status, 0.0, error)
        return error

    async def run(self, fn: Callable, *args, disconnected: Callable[[], Awaitable[bool]] | None = None, **kwargs):
        """Run a blocking service method off the event loop; cancel its work when the caller is cancelled
        (Gradio cancels the event) or ``disconnected()`` says the client left (HTTP)."""
        token = CancelToken()
        future = asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args, token=token, **kwargs))
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never an unretrieved exception
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=0.25)
                if done:
                    return future.result()
                if disconnected is not None and await disconnected():
                    token.cancel()
                    raise ClientGone("the client went away")
        except asyncio.CancelledError:
            token.cancel()
            raise

    # --- ranking ---------------------------------------------------------------------------------

    def _prepare(self, call: Call, query: str, documents: Sequence[object], *, scorer: Scorer,
                 ticket: Ticket | None = None, **options) -> ranking.Prepared:
        """Check and plan a request within the cost budget (no forward pass yet): a request over it is refused as
        soon as planning shows it, in time bounded by the budget rather than by the request."""
        options.setdefault("policy", self.policy)
        if options.get("instruction") in (None, ""):
            options["instruction"] = self.instruction
        if options.get("max_tokens_per_doc") is None:  # a request's own cut wins over the service's default
            options["max_tokens_per_doc"] = self.max_tokens_per_doc
        options.setdefault("skim", self.skim.for_model(scorer.info))
        if self.calibration is not None and scorer is self.models.default:  # fitted for that model only
            options["calibration"] = self.calibration
        prepared = ranking.prepare(scorer, query, documents, max_documents=self.limits.max_documents,
                                   budget=self.limits.max_request_tokens, ticket=ticket,
                                   image_limits=self.limits.images, **options)
        call.documents = len(prepared.texts)
        if prepared.cost > self.limits.max_request_tokens:
            raise TooLarge(f"the request needs {prepared.cost:,} tokens ({prepared.plan.windows:,} windows of query "
                           f"+ document); the limit is {self.limits.max_request_tokens:,} (RERANK_MAX_REQUEST_TOKENS)")
        self.metrics.cost.labels(call.face).observe(prepared.cost)
        return prepared

    def _rank(self, call: Call, query: str, documents: Sequence[object], *, model: str | None = None,
              **options) -> Ranking:
        """Plan within the cost budget, then score, all under one fair, cancellable ticket: a large request's
        tokenizing takes turns with other requests' work as its forward passes do."""
        scorer = self.models.pick(model)
        with self._foreground(), call.token.open(scorer.pool, call.id, call.client) as ticket:
            prepared = self._prepare(call, query, documents, scorer=scorer, ticket=ticket, **options)
            return ranking.complete(prepared, ticket=ticket)

    @contextmanager
    def _foreground(self) -> Iterator[None]:
        """While a request plans and scores, every model's background work (an index build) waits."""
        with ExitStack() as stack:
            for pool in {id(s.pool): s.pool for s in self.scorers()}.values():
                stack.enter_context(pool.foreground())
            yield

    def rank(self, query: str, documents: Sequence[object], *, face: str = "python", route: str = "rank",
             token: CancelToken | None = None, client: str | None = None, **options) -> Ranking:
        """Rank texts for a query (see :func:`scoring.ranking.rank` for ``options``; ``model`` picks by name;
        ``client``: who asks, for the per-client share)."""
        with self.call(face, route, token, client) as call:
            return self._rank(call, query, documents, **options)

    async def rank_async(self, query: str, documents: Sequence[object], *, face: str, route: str,
                         disconnected: Callable[[], Awaitable[bool]] | None = None, client: str | None = None,
                         **options) -> Ranking:
        """:meth:`rank` for the async faces. With a ``batcher`` (Ray Serve's ``@serve.batch``), requests are
        planned on the service's threads and handed to it, so concurrent requests share forward passes."""
        if self.batcher is None:
            return await self.run(self.rank, query, documents, face=face, route=route, disconnected=disconnected,
                                  client=client, **options)
        with self.call(face, route, client=client) as call:
            prepared = await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(self._prepare, call, query, documents,
                                        scorer=self.models.pick(options.pop("model", None)), **options))
            return await self.batcher(prepared)

    def rank_table(self, query: str, documents: object, top_n: int | None = None, *, face: str = "python",
                   route: str = "rank_table", token: CancelToken | None = None,
                   parse: Callable[[object], pd.DataFrame] | None = None, instruction: str | None = None,
                   client: str | None = None, min_score: object = None) -> RerankResult:
        """Rerank a table (``parse`` turns a face's wire shape into the DataFrame, inside the call; ``min_score``: rows
        below it dropped and counted)."""
        with self.call(face, route, token, client) as call:
            table = parse(documents) if parse else documents
            rank_fn = partial(self._rank, call, instruction=instruction)
            return rerank_table(query, table, top_n, rank_fn=rank_fn, policy=self.policy,
                                max_documents=self.limits.max_documents, min_score=_threshold(min_score),
                                image_limits=self.limits.images)

    # --- retrieval -------------------------------------------------------------------------------

    @staticmethod
    def _mode(mode: object) -> str | None:
        """A retrieval mode as given (None: the retriever's own), checked; an unknown one is the caller's error."""

        try:
            return None if mode is None or mode == "" else hybrid.check_mode(mode)
        except hybrid.ModeError as exc:
            raise InvalidInput(str(exc)) from None

    def _search(self, query: str, k: object, retriever, mode: object = None) -> pd.DataFrame:

        query = inputs.validate_query(query)
        try:
            query, k = rc.validate_search_args(query, k)
        except rc.RetrievalError as exc:
            raise InvalidInput(str(exc)) from None
        mode = self._mode(mode)
        backend = retriever or self.retriever
        try:  # a retriever without modes is asked as the seed's Space is: (query, k)
            return backend.search(query, k) if mode is None else backend.search(query, k, mode)
        except rc.RetrievalError as exc:
            raise Unavailable(str(exc)) from None

    def search(self, query: str, k: object = 5, *, mode: object = None, retriever=None, face: str = "python",
               route: str = "search", token: CancelToken | None = None, client: str | None = None) -> pd.DataFrame:
        """The k passages closest to the query (the seed Space's table: url, text, distance); ``mode``: hybrid
        (the local index's default), dense or lexical."""
        with self.call(face, route, token, client):
            return self._search(query, k, retriever, mode)

    def retrieve_and_rank(self, query: str, k: object = 50, top_n: object = 5, *, mode: object = None, retriever=None,
                          face: str = "python", route: str = "retrieve_and_rank", token: CancelToken | None = None,
                          client: str | None = None, min_score: object = None):
        """Retrieve k passages (``mode`` as :meth:`search`), rerank them, keep the best top_n (a
        :class:`pipeline.PipelineResult`)."""

        with self.call(face, route, token, client) as call:
            top_n = inputs.validate_top_n(int(top_n) if isinstance(top_n, float) and top_n.is_integer() else top_n)
            mode = self._mode(mode)
            policy = self.policy.for_first_stage((retriever or self.retriever).first_stage(mode))
            return pipeline.retrieve_and_rerank(query, search=lambda q, n: self._search(q, n, retriever, mode), k=k,
                                                top_n=top_n, rank_fn=partial(self._rank, call), policy=policy,
                                                max_documents=self.limits.max_documents,
                                                min_score=_threshold(min_score))

    def index_upload(self, path: str, *, face: str = "gradio", route: str = "index_upload", progress=None,
                     token: CancelToken | None = None, client: str | None = None):
        """Index one session's uploaded corpus in memory, within the upload limits (a :class:`PrivateCorpus`)."""

        with self.call(face, route, token, client):
            if self.embedder is None:
                raise Unavailable("no embedding model is configured for uploads")
            try:
                return build_private_corpus(path, embedder=self.embedder, max_bytes=self.limits.max_upload_bytes,
                                            max_passages=self.limits.max_upload_passages, progress=progress)
            except LocalIndexError as exc:
                raise InvalidInput(str(exc)) from None

    # --- description -----------------------------------------------------------------------------

    def health(self) -> dict:
        """Liveness and readiness (open, so no names or paths): a built service is ready; how long it took to start and
        how its backend was chosen say whether it reused this node's measurement (a fast start) or measured anew."""
        choice = self.models.default.backend
        return {"status": "ok", "ready": True, "started_in_s": self.started_in_s,
                "backend": {"backend": choice.backend, "how": choice.how}, "in_flight": self._in_flight}

    def info(self) -> dict:
        """What serves and under which limits (for /info; behind the key; no filesystem paths)."""
        default = self.models.default
        info = default.info
        limits = self.limits
        return {"model_id": info.name, "model": info.as_dict(), "models": self.models.names, "scoring": info.mode_description,
                "instruction": {"default": self.instruction, "taken": info.takes_instruction},
                "calibration": self.calibration.as_dict() if self.calibration else None,
                "long_documents": "best window of overlapping chunks", "fusion": self.policy.describe(info.mode),
                "reading": {"max_tokens_per_doc": self.max_tokens_per_doc,
                            "skim": skim.describe() if (skim := self.skim.for_model(info)) else None},
                "backend": default.backend.as_dict() | {"engine": default.engine}, "workers": default.workers,
                "max_input_length": info.max_length,
                "max_client_batch_size": limits.max_documents,
                "limits": {"max_documents": limits.max_documents, "max_request_tokens": limits.max_request_tokens,
                           "max_in_flight": limits.max_in_flight,
                           "max_in_flight_per_client": limits.max_in_flight_per_client,
                           "max_body_bytes": limits.max_body_bytes,
                           "max_upload_bytes": limits.max_upload_bytes, "max_upload_passages": limits.max_upload_passages,
                           "max_image_bytes": limits.images.max_bytes, "max_image_pixels": limits.images.max_pixels},
                "auth": self.keys.required}


def _threshold(min_score: object) -> float | None:
    """A face's ``min_score`` (a number; None or an empty box: no threshold), checked where the call can report it."""
    return inputs.validate_min_score(None if min_score == "" else min_score)
