"""The HTTP face: the rerank APIs RAG frameworks already call, thin adapters on the service.

Routes: ``POST /v2/rerank`` (Cohere v2), ``POST /v1/rerank`` (Cohere v1 and Jina), ``POST /rerank``
(Hugging Face TEI), ``GET /health`` (open), ``GET /info`` and ``GET /metrics`` (behind the key like
everything else), ``/login`` for browsers, docs at ``/docs``. The routes parse, call
:class:`service.Service` and render its typed ranking; the service owns the key, the limits, the
queue and the ranking. The door in front of every path is :class:`web.door.Guard`.
"""

from __future__ import annotations

import html
import logging
import uuid
from typing import Any, Literal
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from scoring.errors import LimitExceeded, RerankError
from scoring.media import ImageDocument, ImageLimits, from_data_uri
from service import InvalidInput, Service, ServiceError, TooLarge, Unauthorized
from service.auth import COOKIE
from service.settings import VERSION
from web.door import Guard, client_of, error_response

log = logging.getLogger("rag_augment.api")
LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>rag-augment: sign in</title><style>body{{font-family:system-ui,sans-serif;max-width:26rem;margin:12vh auto;padding:0 1rem}}
input,button{{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box;margin:.3rem 0}}
.error{{color:#b00020}}</style></head><body><h1>rag-augment</h1>
<p>This reranking service is closed with an API key. Enter it to use the demo; programs send
<code>Authorization: Bearer &lt;key&gt;</code> instead.</p>{error}
<form method="post" action="/login"><label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Sign in</button></form></body></html>"""


# --- request schemas -------------------------------------------------------------------------------

class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    min_score: float | None = Field(
        None, strict=True, allow_inf_nan=False,
        description="drop results scoring below this (the score this route returns), before top_n; how many were "
                    "dropped is in meta.min_score (X-Rerank-Below-Min-Score on the TEI route)")
    instruction: str | None = Field(
        None, validation_alias=AliasChoices("instruction", "instruct"),
        description="a task instruction for instruction-following rerankers (Qwen3-Reranker style; `instruct` as "
                    "SGLang names it); default RERANK_INSTRUCTION; reported as ignored for models that take none")


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


def _v1_document(document: str | dict[str, Any], position: int, rank_fields: list[str] | None, info,
                 limits: ImageLimits) -> str | ImageDocument:
    """What a v1/Jina document is ranked on: the string, its ``text``, or its ``rank_fields``; an image document
    (Jina's ``{"image": "data:image/...;base64,..."}``) where the model reads images, else refused naming the model.
    A URL is never fetched."""
    if isinstance(document, str):
        return document
    fields = rank_fields or ["text"]
    if "image" in document and not any(f in document for f in fields):
        if not info.images:
            raise InvalidInput(f"documents.{position} is an image, and {info.name} ranks text only: image documents need "
                               "a model that reads images (a URL is never fetched; send text, or serve such a model)")
        try:
            return from_data_uri(document["image"], field=f"documents.{position}.image", limits=limits)
        except LimitExceeded as exc:
            raise TooLarge(str(exc)) from None
        except RerankError as exc:
            raise InvalidInput(str(exc)) from None
    missing = [f for f in fields if f not in document]
    if missing:
        raise InvalidInput(f"documents.{position} has no field {missing[0]!r} (rank_fields: {fields})")
    values = [document[f] if isinstance(document[f], str) else str(document[f]) for f in fields]
    return values[0] if len(fields) == 1 else "\n".join(f"{f}: {v}" for f, v in zip(fields, values, strict=True))


def _duplicates(ranking) -> list[dict]:
    """Which documents repeated an earlier one's text (scored once, given its score): indices from 0."""
    return [{"index": d.index, "same_as": d.same_as} for d in ranking.duplicates]


def _meta(ranking, version: str) -> dict:
    """Cohere's ``meta`` with what this service adds: dropped duplicates, the instruction's fate, the threshold's cut."""
    meta = {"api_version": {"version": version}, "billed_units": {"search_units": 1}, "duplicates": _duplicates(ranking)}
    if ranking.instruction is not None:
        meta["instruction"] = ranking.instruction.as_dict()
    if ranking.threshold is not None:
        meta["min_score"] = ranking.threshold.as_dict()
    return meta


def _headers(response: Response, ranking) -> None:
    """The model that ranked, and (for the TEI shape, a bare list) whether the instruction was applied."""
    response.headers["X-Rerank-Model"] = ranking.model.name
    if ranking.instruction is not None:
        use = ranking.instruction
        response.headers["X-Rerank-Instruction"] = "applied" if use.applied else use.note.encode("ascii", "replace").decode()
    if ranking.threshold is not None:
        response.headers["X-Rerank-Below-Min-Score"] = str(ranking.threshold.dropped)


def create_api(service: Service) -> FastAPI:
    """The FastAPI app with the rerank routes behind the :class:`Guard`; ``app.py`` mounts Gradio beside them."""
    from fastapi_offline import FastAPIOffline  # lazy: fastapi-offline loads only on this path

    # the docs page's Swagger UI is served from the fastapi-offline package: /docs works without internet
    api = FastAPIOffline(title="rag-augment rerank API", version=VERSION,
                         description="Cohere-, Jina- and TEI-compatible rerank endpoints over one service.")
    api.add_middleware(Guard, service=service)
    api.state.service = service
    _error_handlers(api, service)
    _rerank_routes(api, service)
    _service_routes(api, service)
    return api


def _error_handlers(api: FastAPI, service: Service) -> None:
    @api.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(service.refuse("http", request.url.path, exc))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ServiceError(str(exc.detail), headers=getattr(exc, "headers", None))
        error.status, error.kind = exc.status_code, "Validation" if exc.status_code in (400, 413, 415, 422) else "HTTP"
        return error_response(error)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{loc}: {err.get('msg', 'invalid')}")
        error = InvalidInput("; ".join(problems[:5]) or "invalid request body")
        return error_response(service.refuse("http", request.url.path, error))


def _rerank_routes(api: FastAPI, service: Service) -> None:
    @api.post("/v2/rerank", response_model=CohereV2Response, tags=["rerank"])
    async def cohere_v2(body: CohereV2Request, request: Request, response: Response) -> dict:
        """Cohere v2 rerank: relevance of each document, best first."""
        ranking = await service.rank_async(body.query, body.documents, face="http", route="/v2/rerank",
                                           model=body.model, max_tokens_per_doc=body.max_tokens_per_doc,
                                           instruction=body.instruction, disconnected=request.is_disconnected,
                                           client=client_of(request), min_score=body.min_score)
        _headers(response, ranking)
        return {"id": str(uuid.uuid4()), "model": ranking.model.name,
                "results": [{"index": r.index, "relevance_score": r.score} for r in ranking.with_duplicates()[: body.top_n]],
                "meta": _meta(ranking, "2")}

    @api.post("/v1/rerank", tags=["rerank"])
    async def cohere_v1(body: CohereV1Request, request: Request, response: Response) -> dict:
        """Cohere v1 / Jina rerank: strings or objects, ``document`` returned only when asked."""
        info = service.models.pick(body.model).info
        texts = [_v1_document(d, i, body.rank_fields, info, service.limits.images) for i, d in enumerate(body.documents)]
        ranking = await service.rank_async(body.query, texts, face="http", route="/v1/rerank", model=body.model,
                                           max_tokens_per_doc=body.max_tokens_per_doc, instruction=body.instruction,
                                           disconnected=request.is_disconnected, client=client_of(request),
                                           min_score=body.min_score)
        _headers(response, ranking)
        results = []
        for r in ranking.with_duplicates()[: body.top_n]:
            item: dict[str, Any] = {"index": r.index, "relevance_score": r.score}
            if body.return_documents:
                doc = body.documents[r.index]
                item["document"] = {"text": doc} if isinstance(doc, str) else doc
            results.append(item)
        return {"id": str(uuid.uuid4()), "model": ranking.model.name, "results": results,
                "usage": {"total_tokens": ranking.cost}, "meta": _meta(ranking, "1")}

    @api.post("/rerank", response_model=list[TeiResult], response_model_exclude_none=True,
              tags=["rerank"])
    async def tei(body: TeiRequest, request: Request, response: Response) -> list[dict]:
        """Hugging Face Text Embeddings Inference rerank: a bare list, best first."""
        ranking = await service.rank_async(body.query, body.texts, face="http", route="/rerank", raw=body.raw_scores,
                                           long_documents="truncate" if body.truncate else "chunk",
                                           truncate_left=body.truncation_direction.lower() == "left",
                                           instruction=body.instruction, disconnected=request.is_disconnected,
                                           client=client_of(request), min_score=body.min_score)
        _headers(response, ranking)
        return [{"index": r.index, "score": r.score, **({"text": body.texts[r.index]} if body.return_text else {})}
                for r in ranking.with_duplicates()]


def _service_routes(api: FastAPI, service: Service) -> None:
    @api.get("/health", tags=["service"])
    def health() -> dict:
        """Liveness and readiness: open without a key."""
        return service.health()

    @api.get("/info", tags=["service"])
    def info() -> dict:
        """The default model, its scoring mode and backend, every configured model name, the limits and the version."""
        return {"version": VERSION, **service.info()}

    @api.get("/metrics", tags=["service"], response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        """Prometheus text: requests, documents, latency, errors and cost by face and route; caches and pools by model."""
        return PlainTextResponse(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/login", include_in_schema=False)
    def login_page() -> HTMLResponse:
        return HTMLResponse(LOGIN_PAGE.format(error=""))

    @api.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Check the key typed on the page; a session cookie (a keyed digest, not the key) lets the browser in."""
        key = parse_qs((await request.body()).decode("utf-8", "replace")).get("key", [""])[0]
        if not service.keys.key_ok(key):
            service.refuse("gradio", "/login", Unauthorized("wrong API key"))
            return HTMLResponse(LOGIN_PAGE.format(error=f'<p class="error">{html.escape("That key is wrong.")}</p>'),
                                status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, service.keys.session_value(), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @api.get("/logout", include_in_schema=False)
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response
