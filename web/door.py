"""The door in front of every path of the server (the mounted Gradio app and its MCP endpoint included): the key,
the per-client share, the body cap as the body streams in, MCP arguments that are not valid Unicode, and the pause
before a refusal a client earned. A pure ASGI middleware, so streaming responses behind it pass untouched."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from scoring.inputs import unicode_problem
from service import InvalidInput, Service, ServiceError, TooLarge, Unauthorized
from service.auth import COOKIE

RERANK_ROUTES = ("/v2/rerank", "/v1/rerank", "/rerank")
OPEN_PATHS = ("/health", "/login", "/logout", "/favicon.ico", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
OPEN_PREFIXES = ("/static-offline-docs/",)  # the docs page's own script and styles


def error_response(error: ServiceError) -> JSONResponse:
    """The error body every route uses: Cohere reads ``message``, TEI reads ``error``/``error_type``."""
    return JSONResponse({"message": error.message, "error": error.message, "error_type": error.kind},
                        status_code=error.status, headers=error.headers or None)


class Guard:
    """The door of the whole server: the key (bearer header or browser session cookie) and the body-size cap.

    A pure ASGI middleware, so the streaming responses behind it (Gradio's event stream, MCP) pass untouched.
    """

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service
        self.pause = Pause()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.service.metrics.loop_lag.start()  # on the loop that serves this port
        request = Request(scope)
        path = request.url.path
        if path in RERANK_ROUTES:
            send = self.pause.wrap(send)
        refusal = self._refusal(request, path)
        streamed = "content-length" not in request.headers and not path.endswith("/upload")
        if refusal is None and request.method == "POST" and ("/mcp" in path or streamed):
            try:  # a body without a Content-Length is read here, refused once past the limit, never held whole
                body = await _read_body(receive, self.service.limits.max_body_bytes)
            except TooLarge as exc:
                refusal = error_response(self.service.refuse("mcp" if "/mcp" in path else "http", path, exc))
            else:
                refusal = self._mcp_refusal(path, body) if "/mcp" in path else None
                receive = _replay(body, receive)
        if refusal is None:
            return await self.app(scope, receive, send)
        await refusal(scope, receive, send)

    def _mcp_refusal(self, path: str, body: bytes) -> Response | None:
        """MCP tool arguments are checked for text that is not valid Unicode before Gradio's MCP layer sees them
        (it would fail re-encoding them with a codec message that names no field)."""
        try:
            message = json.loads(body) if body else None
        except ValueError:
            return None  # the MCP server answers malformed JSON-RPC itself
        found = _bad_text(message, "")
        if found is None:
            return None
        where, problem = found
        return error_response(self.service.refuse("mcp", path, InvalidInput(f"{where.lstrip('.')} {problem}")))

    def _refusal(self, request: Request, path: str) -> Response | None:
        keys, limits = self.service.keys, self.service.limits
        face = "mcp" if "/mcp" in path else "http" if path in RERANK_ROUTES or path in ("/info", "/metrics") else "gradio"
        is_open = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if not is_open and not keys.allows(request.headers.get("authorization"), request.cookies.get(COOKIE)):
            if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                return RedirectResponse("/login", status_code=303)
            return error_response(self.service.refuse(face, path, Unauthorized()))
        if request.method == "POST" and path in RERANK_ROUTES:
            busy = self.service.full(client_of(request))
            if busy is not None:
                return error_response(self.service.refuse(face, path, busy))
        length = request.headers.get("content-length")
        if request.method == "POST" and length is not None and not path.endswith("/upload") and (
                not length.isdigit() or int(length) > limits.max_body_bytes):
            return error_response(self.service.refuse(face, path, TooLarge(
                f"request body of {length} bytes is over the limit of {limits.max_body_bytes} bytes "
                "(RERANK_MAX_BODY_BYTES)")))
        return None


class Pause:
    """Refusals a client earns by its own behaviour (429: over its share in flight; 413: over a size or cost limit) are
    answered after a short pause, so a client that ignores them waits instead of turning refusals into load on the
    cores everyone shares (two clients re-sending 8.5 MB over-budget bodies cost the others 5x their latency without
    it). At most ``limit`` answers wait at once; past that, refusals go out at once."""

    def __init__(self, seconds: dict[int, float] | None = None, limit: int = 256) -> None:
        self.seconds = seconds or {413: 0.25, 429: 1.0}
        self.limit = limit
        self.waiting = 0

    def wrap(self, send):
        """``send`` that holds a refusal's first message for its pause."""
        async def paused(message: dict) -> None:
            pause = self.seconds.get(message.get("status", 0)) if message["type"] == "http.response.start" else None
            if pause and self.waiting < self.limit:
                self.waiting += 1
                try:
                    await asyncio.sleep(pause)
                finally:
                    self.waiting -= 1
            await send(message)

        return paused


async def _read_body(receive, limit: int) -> bytes:
    """The whole request body, or :class:`TooLarge` as soon as more than ``limit`` bytes have arrived."""
    chunks, more, read = [], True, 0
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        read += len(chunks[-1])
        if read > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes (RERANK_MAX_BODY_BYTES); refused after "
                           f"{read} bytes, before the rest was read")
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A ``receive`` that hands the already-read body on once, then the connection's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _bad_text(value: object, where: str) -> tuple[str, str] | None:
    """The first string in a JSON value that is not valid Unicode, with its path."""
    if isinstance(value, str):
        problem = unicode_problem(value)
        return (where or "body", problem) if problem else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _bad_text(item, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]")
        if found:
            return found
    return None



def client_of(request: Request) -> str:
    """Whose share a request takes: its peer address (the one API key is shared by every client, so it names none)."""
    return f"peer:{request.client.host if request.client else '-'}"


