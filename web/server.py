"""The served app's start: what would stall the event loop later is done before the port opens, and Gradio's MCP
loopback client carries the key."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import gradio as gr

log = logging.getLogger("rag_augment.server")


WARM_PATHS = ("/health", "/info", "/config", "/gradio_api/info")


def warm_up(server, api_key: str | None = None) -> None:
    """Do before the port opens what would otherwise stall every route later: FastAPI builds its routes' schemas when
    a path is first matched and Gradio imports pyplot at its first event, both on the event loop; and a full garbage
    collection walks every object the models and apps hold (~0.45 s with two models loaded), so what start-up built
    is frozen out of the collector's scans (``gc.freeze``)."""
    import matplotlib.pyplot  # noqa: F401  (Gradio's first event would import it on the loop)

    key = [(b"authorization", f"Bearer {api_key}".encode())] if api_key else []

    async def get(path: str) -> None:
        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(_message: dict) -> None:
            return None

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"127.0.0.1"), *key], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0)}
        await server(scope, receive, send)

    async def all_paths() -> None:
        for path in WARM_PATHS:
            await get(path)

    thread = threading.Thread(target=asyncio.run, args=(all_paths(),), name="warm-up")  # works inside a running loop too
    thread.start()
    thread.join()
    gc.freeze()


def mcp_loopback_with_key(demo: gr.Blocks, api_key: str) -> None:
    """Gradio's MCP server runs a queued tool through a gradio_client of its own, pointed back at this server.

    With a key set, that loopback client must carry the key too: the MCP request that caused it has already
    passed the key check at the door, and every other caller of the Gradio routes still needs the key.
    """
    mcp = getattr(demo, "mcp_server_obj", None)
    if mcp is None or not hasattr(mcp, "_get_or_create_client"):
        log.warning("this Gradio version's MCP server has no loopback client to authenticate; MCP tools will be refused")
        return

    def create_client():
        if mcp._client_instance is None:
            from gradio import route_utils  # lazy: gradio loads only on this path
            from gradio_client import Client  # lazy: gradio_client loads only on this path

            request = mcp.mcp_server.request_context.request
            root = route_utils.get_root_url(request=request, route_path=mcp.get_route_path(request),
                                            root_path=mcp.root_path)
            mcp._client_instance = Client(mcp.local_url or root, download_files=False, verbose=False,
                                          analytics_enabled=False, ssl_verify=False, _skip_components=False,
                                          headers={"x-gradio-user": "mcp", "Authorization": f"Bearer {api_key}"})
        return mcp._client_instance

    mcp._get_or_create_client = create_client




def serve(app, *, host: str, port: int, in_flight, grace_s: float = 30.0) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully: no new connections, the requests in flight
    (``in_flight()`` counts them) finish, and as soon as none is left what is still open (a browser's event stream, an
    idle client's heartbeat) is closed rather than waited for; after ``grace_s`` everything is closed regardless."""
    import time

    import uvicorn  # lazy: uvicorn loads only on this path

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=grace_s))

    def close_when_drained() -> None:
        while not server.should_exit:
            time.sleep(0.2)
        log.info("shutting down: %d request(s) in flight get up to %.0f s to finish", in_flight(), grace_s)
        while in_flight() and not server.force_exit:
            time.sleep(0.05)
        server.force_exit = True  # only streams that never end are left

    threading.Thread(target=close_when_drained, name="graceful-shutdown", daemon=True).start()
    server.run()
