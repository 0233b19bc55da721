"""The rerank HTTP APIs that RAG frameworks already call, on the same scoring core as the Gradio app.

Routes: ``POST /v2/rerank`` (Cohere v2), ``POST /v1/rerank`` (Cohere v1 and Jina), ``POST /rerank``
(Hugging Face TEI), ``GET /health``, ``GET /info``, ``GET /metrics`` (Prometheus), docs at ``/docs``.
Long documents are scored by their best window (Cohere's behaviour) unless the caller asks to
truncate. Models are only ever loaded from configuration: a request's ``model`` picks among them.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

import rerank as core
from config import VERSION

RERANK_ROUTES = ("/v2/rerank", "/v1/rerank", "/rerank")


class ApiError(Exception):
    """An error answered as JSON with a status code; the message names the field and the limit."""

    def __init__(self, status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type, self.headers = status, message, error_type, headers


def error_response(status: int, message: str, error_type: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The error body every route uses: Cohere reads ``message``, TEI reads ``error``/``error_type``."""
    return JSONResponse({"message": message, "error": message, "error_type": error_type}, status_code=status,
                        headers=headers)


class Models:
    """The configured scorers by name; a request's unknown model name gets the default."""

    def __init__(self, default: core.Scorer, others: Sequence[core.Scorer] = ()) -> None:
        self.default = default
        self.by_name: dict[str, core.Scorer] = {}
        for scorer in [default, *others]:
            for name in {scorer.info.requested, scorer.info.name, scorer.info.requested.rstrip("/").split("/")[-1]}:
                self.by_name.setdefault(name, scorer)

    def pick(self, requested: str | None) -> core.Scorer:
        """The scorer configured under that name, else the default (clients send their own defaults)."""
        return self.by_name.get(requested or "", self.default)

    @property
    def names(self) -> list[str]:
        """Every name a request may use."""
        return sorted(self.by_name)


# --- request schemas -------------------------------------------------------------------------------

class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CohereV2Request(_Request):
    model: str | None = Field(None, description="a configured model name; others are answered by the default")
    query: str
    documents: list[str]
    top_n: int | None = Field(None, ge=1, description="return the best N (clamped to the number of documents)")
    max_tokens_per_doc: int | None = Field(None, ge=1, description="cut each document to this many tokens first")


class CohereV1Request(_Request):
    model: str | None = None
    query: str
    documents: list[str | dict[str, Any]]
    rank_fields: list[str] | None = Field(None, description="fields of object documents to rank on")
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    max_chunks_per_doc: int | None = Field(None, ge=1)
    max_tokens_per_doc: int | None = Field(None, ge=1)


class TeiRequest(_Request):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = False
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"


class Result(BaseModel):
    index: int
    relevance_score: float


class CohereV2Response(BaseModel):
    id: str
    results: list[Result]
    meta: dict[str, Any]
    model: str


class TeiResult(BaseModel):
    index: int
    score: float
    text: str | None = None


# --- the shared scoring step -----------------------------------------------------------------------

def _v1_text(document: str | dict[str, Any], position: int, rank_fields: list[str] | None) -> str:
    """The text a v1/Jina document is ranked on: the string, its ``text``, or its ``rank_fields``."""
    if isinstance(document, str):
        return document
    fields = rank_fields or ["text"]
    missing = [f for f in fields if f not in document]
    if missing:
        raise ApiError(422, f"documents.{position} has no field {missing[0]!r} (rank_fields: {fields})", "Validation")
    values = [document[f] if isinstance(document[f], str) else str(document[f]) for f in fields]
    return values[0] if len(fields) == 1 else "\n".join(f"{f}: {v}" for f, v in zip(fields, values, strict=True))


class Service:
    """Validation, limits and scoring shared by every route."""

    def __init__(self, models: Models, *, max_documents: int, max_queue: int) -> None:
        self.models = models
        self.max_documents = max_documents
        self.max_queue = max_queue
        self._in_flight = 0
        self._lock = threading.Lock()

    def score(self, model: str | None, query: str, texts: list[str], **options) -> tuple[core.Scorer, np.ndarray]:
        """Score ``texts`` for ``query`` on the chosen model, enforcing the limits; the caller's order is kept."""
        try:
            core.validate_query(query)
        except core.RerankError as exc:
            raise ApiError(422, str(exc), "Validation") from None
        if not texts:
            raise ApiError(422, "documents is empty: send at least one document", "Validation")
        if len(texts) > self.max_documents:
            raise ApiError(413, f"{len(texts)} documents sent; the limit is {self.max_documents} "
                                "(RERANK_MAX_DOCUMENTS)", "Validation")
        with self._lock:
            if self._in_flight >= self.max_queue:
                raise ApiError(429, f"too many requests in progress (RERANK_MAX_QUEUE={self.max_queue}); retry shortly",
                               "Overloaded", {"Retry-After": "1"})
            self._in_flight += 1
        try:
            scorer = self.models.pick(model)
            return scorer, core.score_unique(scorer, query, texts, **options)
        except core.RerankError as exc:
            raise ApiError(422, str(exc), "Validation") from None
        finally:
            with self._lock:
                self._in_flight -= 1


def _top(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Indices by descending score (ties in input order), cut to ``top_n`` clamped to the list."""
    order = np.argsort(-scores, kind="stable").tolist()
    return order[: min(top_n, len(order))] if top_n else order


# --- the app ---------------------------------------------------------------------------------------

class CacheCollector(Collector):
    """The scorers' caches, read at scrape time: hits, misses and entries by model."""

    def __init__(self, models: Models) -> None:
        self.models = models

    def collect(self):
        hits = CounterMetricFamily("rerank_cache_hits", "scores or embeddings served from cache", labels=["model"])
        misses = CounterMetricFamily("rerank_cache_misses", "scores or embeddings computed", labels=["model"])
        entries = GaugeMetricFamily("rerank_cache_entries", "items held in the cache", labels=["model"])
        seen = set()
        for scorer in self.models.by_name.values():
            cache = scorer.cache
            if id(cache) in seen:
                continue
            seen.add(id(cache))
            hits.add_metric([scorer.info.name], cache.hits)
            misses.add_metric([scorer.info.name], cache.misses)
            entries.add_metric([scorer.info.name], len(cache))
        yield from (hits, misses, entries)


class Metrics:
    """Prometheus counters for the rerank routes, in a registry of this app's own."""

    def __init__(self, models: Models | None = None) -> None:
        self.registry = CollectorRegistry()
        if models is not None:
            self.registry.register(CacheCollector(models))
        self.requests = Counter("rerank_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.documents = Counter("rerank_documents_scored", "documents scored", ["route"], registry=self.registry)
        self.errors = Counter("rerank_errors", "requests answered with an error", ["route", "status"],
                              registry=self.registry)
        self.latency = Histogram("rerank_request_duration_seconds", "request latency", ["route"],
                                 registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))


def create_api(models: Models, *, max_documents: int = 1000, max_body_bytes: int = 10 * 1024 * 1024,
               max_queue: int = 64, api_key: str | None = None, fusion_description: str | None = None) -> FastAPI:
    """The FastAPI app with the rerank routes; the Gradio app is mounted beside them by ``app.py``."""
    api = FastAPI(title="rag-augment rerank API", version=VERSION,
                  description="Cohere-, Jina- and TEI-compatible rerank endpoints over one scoring core.")
    service = Service(models, max_documents=max_documents, max_queue=max_queue)
    metrics = Metrics(models)
    api.state.metrics = metrics

    @api.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.error_type, exc.headers)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "Validation" if exc.status_code in (400, 413, 415, 422) else "HTTP"
        return error_response(exc.status_code, str(exc.detail), kind, getattr(exc, "headers", None))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        return error_response(422, "; ".join(problems[:5]) or "invalid request body", "Validation")

    @api.middleware("http")
    async def _limits_and_metrics(request: Request, call_next):
        route = request.url.path
        length = request.headers.get("content-length")
        too_big = length is not None and (not length.isdigit() or int(length) > max_body_bytes)
        over_limit = error_response(413, f"request body of {length} bytes is over the limit of {max_body_bytes} "
                                         "bytes (RERANK_MAX_BODY_BYTES)", "Validation") if too_big else None
        if request.method != "POST" or route not in RERANK_ROUTES:
            # the mounted Gradio app's calls are capped too; file uploads (a corpus) are Gradio's to limit
            if request.method == "POST" and over_limit is not None and not route.endswith("/upload"):
                return over_limit
            return await call_next(request)
        started = time.perf_counter()
        if over_limit is not None:
            response: Response = over_limit
        else:
            response = await call_next(request)
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            metrics.errors.labels(route, str(response.status_code)).inc()
        return response

    async def body_cap(request: Request) -> None:
        """Bodies sent without a Content-Length are measured too."""
        if len(await request.body()) > max_body_bytes:
            raise ApiError(413, f"request body is over the limit of {max_body_bytes} bytes (RERANK_MAX_BODY_BYTES)",
                           "Validation")

    def auth(request: Request) -> None:
        """``Authorization: Bearer <RERANK_API_KEY>`` on rerank routes when a key is configured."""
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "Unauthorized",
                           {"WWW-Authenticate": "Bearer"})

    guards = [Depends(body_cap), Depends(auth)]

    @api.post("/v2/rerank", dependencies=guards, response_model=CohereV2Response, tags=["rerank"])
    def cohere_v2(body: CohereV2Request, response: Response) -> dict:
        """Cohere v2 rerank: relevance of each document, best first."""
        scorer, scores = service.score(body.model, body.query, body.documents, long_documents="chunk",
                                       max_tokens_per_doc=body.max_tokens_per_doc)
        metrics.documents.labels("/v2/rerank").inc(len(body.documents))
        response.headers["X-Rerank-Model"] = scorer.info.name
        return {"id": str(uuid.uuid4()), "model": scorer.info.name,
                "results": [{"index": i, "relevance_score": float(scores[i])} for i in _top(scores, body.top_n)],
                "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}}

    @api.post("/v1/rerank", dependencies=guards, tags=["rerank"])
    def cohere_v1(body: CohereV1Request, response: Response) -> dict:
        """Cohere v1 / Jina rerank: strings or objects, ``document`` returned only when asked."""
        texts = [_v1_text(d, i, body.rank_fields) for i, d in enumerate(body.documents)]
        scorer, scores = service.score(body.model, body.query, texts, long_documents="chunk",
                                       max_tokens_per_doc=body.max_tokens_per_doc)
        metrics.documents.labels("/v1/rerank").inc(len(texts))
        response.headers["X-Rerank-Model"] = scorer.info.name
        results = []
        for i in _top(scores, body.top_n):
            item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
            if body.return_documents:
                doc = body.documents[i]
                item["document"] = {"text": doc} if isinstance(doc, str) else doc
            results.append(item)
        return {"id": str(uuid.uuid4()), "model": scorer.info.name, "results": results,
                "usage": {"total_tokens": sum(len(t.split()) for t in texts) + len(body.query.split())},
                "meta": {"api_version": {"version": "1"}, "billed_units": {"search_units": 1}}}

    @api.post("/rerank", dependencies=guards, response_model=list[TeiResult], response_model_exclude_none=True,
              tags=["rerank"])
    def tei(body: TeiRequest, response: Response) -> list[dict]:
        """Hugging Face Text Embeddings Inference rerank: a bare list, best first."""
        left = body.truncation_direction.lower() == "left"
        scorer, scores = service.score(None, body.query, body.texts, raw=body.raw_scores,
                                       long_documents="truncate" if body.truncate else "chunk", truncate_left=left)
        metrics.documents.labels("/rerank").inc(len(body.texts))
        response.headers["X-Rerank-Model"] = scorer.info.name
        out = []
        for i in _top(scores, None):
            item: dict[str, Any] = {"index": i, "score": float(scores[i])}
            if body.return_text:
                item["text"] = body.texts[i]
            out.append(item)
        return out

    @api.get("/health", tags=["service"])
    def health() -> dict:
        """Liveness: open without a key."""
        return {"status": "ok"}

    @api.get("/info", tags=["service"])
    def info() -> dict:
        """The default model, its scoring mode, every configured model name, the limits and the version."""
        default = models.default.info
        return {"version": VERSION, "model_id": default.name, "model": default.as_dict(), "models": models.names,
                "scoring": default.mode_description, "long_documents": "best window of overlapping chunks",
                "gradio_fusion": fusion_description or core.DEFAULT_POLICY.describe(default.mode),
                "backend": models.default.backend.as_dict(), "workers": models.default.workers,
                "max_input_length": default.max_length, "max_client_batch_size": max_documents,
                "limits": {"max_documents": max_documents, "max_body_bytes": max_body_bytes, "max_queue": max_queue},
                "auth": bool(api_key)}

    @api.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        """Prometheus text: requests, documents scored, latency histogram, errors, by route."""
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return api
