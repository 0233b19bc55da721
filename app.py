"""The Gradio face of rag-augment: the UI and its wiring, nothing else.

``python app.py`` serves the browser demo, the ``/rerank`` API (gradio_client), the MCP tools and the
HTTP rerank APIs on ``GRADIO_SERVER_NAME``:``GRADIO_SERVER_PORT``. Every event goes through the one
:class:`service.Service` (the key, admission, limits and the ranking), as the HTTP routes do.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import gradio as gr
import pandas as pd

import rerank as core
import retrieval_client as rc
import views
from config import Settings
from hybrid import DEFAULT_MODE, MODES
from service import Service, ServiceError, from_settings

log = logging.getLogger("rag_augment.app")

EXAMPLE_QUERY = "What is the future of AI?"
EXAMPLE_DOCUMENTS = pd.DataFrame({
    "url": ["https://example.org/ai-decade", "https://example.org/bread", "https://example.org/robots",
            "https://example.org/ai-decade-copy", "https://example.org/football"],
    "text": [
        "The last decade was a big one for artificial intelligence, and researchers expect AI to "
        "reshape medicine, science and work in the years ahead.",
        "Knead the dough for ten minutes, then let the bread rise in a warm place for an hour.",
        "Experts debate whether robots and machine learning systems will replace or assist human jobs.",
        "The last decade was a big one for artificial intelligence, and researchers expect AI to "
        "reshape medicine, science and work in the years ahead.",
        "The football match ended in a goalless draw after extra time.",
    ],
})
EXAMPLES = [
    [EXAMPLE_QUERY, EXAMPLE_DOCUMENTS],
    ["How do I bake bread?", pd.DataFrame({"text": [
        "Preheat the oven, shape the loaf and bake it for 35 minutes until golden.",
        "Stock markets fell sharply on Monday.",
        "Knead the dough for ten minutes, then let it rise in a warm place.",
    ]})],
]


def documents_from_payload(payload: object, *, max_documents: int) -> pd.DataFrame:
    """The Dataframe wire shape ``{headers, data, metadata}`` as a table, checked with clear messages.

    Gradio's own preprocessing is bypassed for ``/rerank`` so that a malformed table is named
    precisely, and never echoed back in the error.
    """
    if isinstance(payload, pd.DataFrame):
        return payload
    if not isinstance(payload, dict) or "data" not in payload:
        raise core.RerankError("documents must be a table: {\"headers\": [column names], \"data\": [rows]}, "
                               f"got {type(payload).__name__}")
    headers, rows = payload.get("headers"), payload["data"]
    if not isinstance(headers, list) or not all(isinstance(h, (str, int, float)) for h in headers):
        raise core.RerankError("documents.headers must be a list of column names")
    if not isinstance(rows, list) or not all(isinstance(r, (list, tuple)) for r in rows):
        raise core.RerankError("documents.data must be a list of rows, each a list of cells")
    if len(rows) > max_documents:
        from scoring.errors import LimitExceeded

        raise LimitExceeded(f"documents has {len(rows)} rows; the limit is {max_documents} (RERANK_MAX_DOCUMENTS)")
    ragged = [i for i, r in enumerate(rows) if len(r) != len(headers)]
    if ragged and rows != [[]]:
        shown = ", ".join(str(i) for i in ragged[:10]) + (" …" if len(ragged) > 10 else "")
        raise core.RerankError(f"documents.data rows {shown} do not have {len(headers)} cells, one per header")
    return pd.DataFrame([] if rows == [[]] else rows, columns=[str(h) for h in headers])


def build_service(settings: Settings, scorer: core.Scorer, retriever: rc.Retriever | None = None,
                  extra_scorers: list[core.Scorer] | None = None, *, embedder: core.Scorer | None = None) -> Service:
    """The one service every face of this server calls."""
    return from_settings(settings, scorer, retriever, extra_scorers or [], embedder=embedder)


def face_of(request: gr.Request | None) -> str:
    """Which face an event came from: an MCP tool call, or the browser / gradio_client."""
    if request is None:
        return "gradio"
    path = str(getattr(request, "url", "") or "")
    return "mcp" if request.headers.get("x-gradio-user") == "mcp" or "/mcp" in path else "gradio"


def client_of(request: gr.Request | None) -> str | None:
    """Whose turn an event takes (the per-client share): the browser session, else the peer address."""
    if request is None:
        return None
    session = getattr(request, "session_hash", None)
    if session:
        return f"session:{session}"
    host = getattr(getattr(request, "client", None), "host", None)
    return f"peer:{host}" if host else None


def _table_payload(frame: pd.DataFrame, ranking=None) -> dict:
    """A table in the Dataframe component's wire shape for API endpoints, with the dropped duplicates (rows from 0)."""
    clean = frame.astype(object).where(frame.notna(), None)
    payload = {"headers": [str(c) for c in frame.columns], "data": clean.values.tolist(), "metadata": None}
    if ranking is not None:
        payload["dropped_duplicates"] = [{"row": d.index, "same_as": d.same_as} for d in ranking.duplicates]
        payload["instruction"] = ranking.instruction.as_dict() if ranking.instruction else None
    return payload


def _top_n(value) -> int | None:
    """The UI's top_n box: empty or 0 keeps every row."""
    return int(value) if value not in (None, "", 0) else None


class Handlers:
    """The Gradio events and API endpoints, each a thin adapter on the service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def _run(self, method, *args, **kwargs):
        try:
            return await self.service.run(method, *args, **kwargs)
        except ServiceError as exc:
            raise gr.Error(exc.message, print_exception=False) from None  # the service logged one line

    async def _rank_table(self, query, documents, top_n, face: str, route: str, instruction: str | None = None,
                          request: gr.Request | None = None):
        parse = lambda payload: documents_from_payload(payload, max_documents=self.service.limits.max_documents)  # noqa: E731
        return await self._run(self.service.rank_table, query, documents, top_n, face=face, route=route, parse=parse,
                               instruction=instruction, client=client_of(request))

    async def rerank(self, query: str, documents: dict, top_n: int | None = None, instruction: str = "",
                     request: gr.Request = None) -> dict:
        """Rerank documents by relevance to the query: the seed's table in, the same table reranked out.

        Duplicate texts are dropped (listed in `dropped_duplicates`, rows numbered from 0); a `rank`
        column (the relevance score, higher is better) is added and the rows are sorted by it; every
        other column comes back unchanged.

        Args:
            query: the question to rank the documents against.
            documents: a table with a `text` column, other columns kept: {"headers": ["url", "text"], "data": [[...], ...]}.
            top_n: keep only the best N rows (empty: all).
            instruction: a task instruction for instruction-following rerankers (Qwen3-Reranker style); empty: the
                server's default (RERANK_INSTRUCTION). Models that take none ignore it and say so.
        Returns:
            {"headers": [...input columns, "rank"], "data": rows best first, "dropped_duplicates": [{"row", "same_as"}],
            "instruction": {"text", "applied", "note"} or null}.
        """
        result = await self._rank_table(query, documents, top_n, face_of(request), "/rerank", instruction, request)
        return _table_payload(result.table, result.ranking)

    async def rerank_ui(self, query: str, documents, top_n, instruction: str = "", request: gr.Request = None):
        result = await self._rank_table(query, documents, _top_n(top_n), "gradio", "rerank_ui", instruction, request)
        return views.ranked_view(result), views.summary(result, len(documents))

    async def rerank_example(self, query: str, documents):
        result = await self._rank_table(query, documents, None, "gradio", "example")
        return views.ranked_view(result), views.summary(result, len(documents))

    async def similarity_search(self, query: str, k: int = 5, mode: str = "", request: gr.Request = None) -> dict:
        """The k passages closest to the query (the seed retrieval Space's table).

        Args:
            query: the question to search for.
            k: how many passages to return (1 to 1000).
            mode: the local index's retrieval: "hybrid" (BM25 and embeddings fused; the default when empty), "dense"
                or "lexical". Leave empty when a remote retrieval Space (RETRIEVAL_URL) answers.
        Returns:
            {"headers": ["url", "text", "distance"], "data": rows closest first}; distance: lower is closer (dense:
            cosine distance; lexical: 1 / (1 + BM25); hybrid: 1 - fused score).
        """
        frame = await self._run(self.service.search, query, k, mode=mode, face=face_of(request),
                                route="/similarity_search", client=client_of(request))
        return _table_payload(frame)

    async def retrieve_and_rerank(self, query: str, k: int = 50, top_n: int = 5, mode: str = "",
                                  request: gr.Request = None) -> dict:
        """Retrieve the k closest passages, rerank them and return the best top_n.

        Args:
            query: the question.
            k: how many passages to retrieve first (1 to 1000).
            top_n: how many reranked passages to keep.
            mode: the first stage on the local index: "hybrid" (the default when empty), "dense" or "lexical".
        Returns:
            {"headers": ["retrieved_position", "url", "text", "distance", "rank", "move"], "data": rows best first,
            "dropped_duplicates": [...]}; `move` is "12 -> 1" (retrieved position -> reranked position).
        """
        result = await self._run(self.service.retrieve_and_rank, query, k, top_n, mode=mode,
                                 face=face_of(request), route="/retrieve_and_rerank", client=client_of(request))
        return _table_payload(result.reranked, result.rerank.ranking)

    async def search_ui(self, query: str, k: int, mode: str | None, private, request: gr.Request):
        frame = await self._run(self.service.search, query, int(k), mode=mode, retriever=private, face="gradio",
                                route="search_ui", client=client_of(request))
        return frame, f"{len(frame)} passages retrieved (first stage only, not reranked)."

    async def pipeline_ui(self, query: str, k: int, top_n: int, mode: str | None, private, request: gr.Request = None,
                          progress=gr.Progress()):
        backend = private or self.service.retriever
        while isinstance(backend, rc.BackgroundRetriever) and not backend.finished(timeout=0):
            progress((backend.done, backend.total or None), desc="Building the index", unit="passages")
            await asyncio.sleep(0.5)  # awaited: the loop serves every other route meanwhile
        progress(0.3, desc=f"Retrieving {int(k)} passages and reranking them")
        result = await self._run(self.service.retrieve_and_rank, query, int(k), int(top_n), mode=mode,
                                 retriever=private, face="gradio", route="retrieve_and_rerank_ui",
                                 client=client_of(request))
        relevance = [r.model_score for r in result.rerank.ranking]  # the model's own score, before any fusion
        return views.moves_view(result.reranked), views.pictures(result.reranked, relevance), result.summary

    async def pipeline_example(self, query: str):
        return await self.pipeline_ui(query, 50, 5, None, None)

    async def index_upload(self, file: str | None, private, request: gr.Request, progress=gr.Progress()):
        if not file:
            raise gr.Error("choose a JSONL, CSV, Parquet, .txt or .md file to index", print_exception=False)

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Embedding passages", unit="passages")

        corpus = await self._run(self.service.index_upload, file, progress=report, client=client_of(request))
        if private is not None:
            private.close()
        Path(file).unlink(missing_ok=True)  # the index holds what it needs; the upload is not kept
        return corpus, index_status(self.service, corpus)[0]

    def forget_upload(self, private):
        if private is not None:
            private.close()
        return None, index_status(self.service, None)[0]


def index_status(service: Service, private=None) -> tuple[str, bool]:
    """The line saying which index answers this session's searches, and whether it is still being built."""
    if private is not None:
        return f"**Index:** ready: {private.description}", False
    retriever = service.retriever
    if isinstance(retriever, rc.BackgroundRetriever) and not retriever.finished(timeout=0):
        total = f"{retriever.total:,}" if retriever.total else "?"
        return f"**Index:** building: {retriever.done:,} of {total} passages embedded …", True
    return f"**Index:** ready: {retriever.description}", False


def header_line(service: Service, scorer: core.Scorer) -> str:
    """What ranks, in one plain line: the model, how it scores, where it runs."""
    info, backend = scorer.info, scorer.backend
    kind = "cross-encoder" if info.mode == "cross-encoder" else "embedding similarity"
    fell_back = " · fallback model (see details)" if info.fallback_reason else ""
    return (f"**Model:** `{info.name}` ({kind}) · **Runs on:** {backend.backend} on {backend.device}, "
            f"{backend.precision}{fell_back}")


def details_text(service: Service, scorer: core.Scorer) -> str:
    """The details a user may want after the header: the scoring rule, the backend choice, any fallback."""
    info, backend = scorer.info, scorer.backend
    lines = [f"- **Scoring:** {info.mode_description}; final score: {service.policy.describe(info.mode)}.",
             f"- **Detected:** {info.detected or info.kind}"
             + (f"; {info.window_note}" if info.window_note else f"; window {info.max_length:,} tokens")
             + ("; takes a task instruction" if info.takes_instruction else "; takes no instruction") + ".",
             f"- **Inference backend:** {backend.describe()}, {scorer.workers} worker thread(s); {scorer.engine}."]
    measured = [m for m in backend.measurements if m.seconds is not None]
    if measured:
        lines.append("- **Measured on this machine** (probe seconds, Spearman vs fp32): "
                     + ", ".join(f"{m.backend} {m.seconds:.2f} s / {m.spearman:.3f}" for m in measured) + ".")
    if info.fallback_reason:
        lines.append(f"- **Fallback:** `{info.requested}` could not be loaded ({info.fallback_reason}); serving the "
                     "packaged all-MiniLM-L6-v2 instead.")
    return "\n".join(lines)


def _close_corpus(private) -> None:
    if private is not None:
        private.close()


RERANK_WIDTHS = ["40px", "66px", "46px", "60%"]  # #, score, row: fixed and narrow, so the text gets the width (phones too)
MOVES_WIDTHS = ["40px", "46px", "58px", "66px", "60%"]  # #, was, move, score


def build_demo(settings: Settings, scorer: core.Scorer, retriever: rc.Retriever | None = None, *,
               service: Service | None = None) -> gr.Blocks:
    """The Blocks app: a one-line header, the rerank form, the retrieve-and-rerank tab, the API endpoints."""
    service = service or build_service(settings, scorer, retriever)
    handlers = Handlers(service)
    with gr.Blocks(title="rag-augment: rerank retrieved documents") as demo:
        private = gr.State(None, time_to_live=service.limits.upload_ttl_seconds, delete_callback=_close_corpus)
        gr.Markdown("# RAG - Augment\nReranks retrieved documents by relevance to a question, so the LLM sees "
                    "the best ones first.")
        header = gr.Markdown(header_line(service, scorer), elem_id="header")
        with gr.Accordion("Details: scoring rule, inference backend", open=False):
            details = gr.Markdown(details_text(service, scorer), elem_id="inference")
        with gr.Tab("Rerank"):
            query = gr.Textbox(label="Query", placeholder="Enter your question here...", lines=2, elem_id="query")
            documents = gr.Dataframe(label="Documents (a text column; other columns are kept)", value=EXAMPLE_DOCUMENTS,
                                     headers=list(EXAMPLE_DOCUMENTS.columns), wrap=True, interactive=True,
                                     type="pandas", elem_id="documents")
            instruction = gr.Textbox(label="Instruction (instruction-following rerankers only)", elem_id="instruction",
                                     placeholder=service.instruction or "e.g. Given a web search query, retrieve "
                                                 "relevant passages that answer the query",
                                     info=None if scorer.info.takes_instruction else
                                     f"{scorer.info.name} takes no instruction: it would be ignored")
            with gr.Row():
                top_n = gr.Number(label="Keep the best N (0: all)", precision=0, minimum=0, value=0, scale=1,
                                  elem_id="top-n")
                submit = gr.Button("Rerank", variant="primary", elem_id="submit", scale=3)
            status = gr.Markdown(elem_id="status")
            reranked = gr.Dataframe(label="Reranked: best first (# = new position, row = input row)", wrap=True,
                                    interactive=False, elem_id="reranked", column_widths=RERANK_WIDTHS,
                                    headers=["#", "score", "row", "text"])
            gr.Examples(examples=EXAMPLES, inputs=[query, documents], outputs=[reranked, status],
                        fn=handlers.rerank_example, run_on_click=True, cache_examples=True, cache_mode="lazy",
                        label="Examples (click to run)", elem_id="rerank-examples")
        with gr.Tab("Retrieve & rerank"):
            backend = gr.Markdown(index_status(service)[0], elem_id="backend")
            with gr.Row():
                p_query = gr.Textbox(label="Question", placeholder="e.g. How do I parse JSON from a string?",
                                     scale=3, elem_id="pipeline-query")
                p_k = gr.Slider(1, 200, value=50, step=1, label="Retrieve k")
                p_top = gr.Slider(1, 50, value=5, step=1, label="Keep top_n")
                remote = isinstance(service.retriever, rc.RemoteRetriever)  # a Space retrieves its own way
                p_mode = gr.Radio(list(MODES), value=None if remote else DEFAULT_MODE, label="First stage",
                                  elem_id="pipeline-mode", visible=not remote,
                                  info="hybrid: words (BM25) and embeddings fused")
            with gr.Row():
                run = gr.Button("Retrieve & rerank", variant="primary", elem_id="pipeline-run")
                search = gr.Button("Search only", elem_id="search-only")
            p_status = gr.Markdown(elem_id="pipeline-status")
            moves = gr.Dataframe(label="Reranked passages and how they moved (was = retrieved position)", wrap=True,
                                 interactive=False, elem_id="pipeline-reranked", column_widths=MOVES_WIDTHS,
                                 headers=["#", "was", "move", "score", "text", "url"])
            picture = gr.Plot(label="Relevance scores and rank shift", elem_id="pictures")
            gr.Examples(examples=[["How do I parse JSON from a string?"],
                                  ["How can I run a function in a background thread?"],
                                  ["create a temporary directory that is removed automatically"]],
                        inputs=[p_query], outputs=[moves, picture, p_status], fn=handlers.pipeline_example,
                        run_on_click=True, cache_examples=False, label="Examples (click to run)")
            with gr.Accordion("Index your own documents (private to this browser session)", open=False):
                upload = gr.File(label=f"JSONL, CSV or Parquet with a text column, or .txt / .md (at most "
                                       f"{service.limits.max_upload_bytes // 1024:,} KiB, "
                                       f"{service.limits.max_upload_passages:,} passages)",
                                 file_types=[".jsonl", ".json", ".csv", ".parquet", ".txt", ".md"], elem_id="upload")
                with gr.Row():
                    index_btn = gr.Button("Index this file", elem_id="index-upload")
                    forget_btn = gr.Button("Back to the shared index", elem_id="forget-upload")
        refresh = gr.Timer(2.0, active=index_status(service)[1])

        def status_tick(state):
            line, building = index_status(service, state)
            return line, gr.Timer(active=building)

        refresh.tick(status_tick, inputs=[private], outputs=[backend, refresh], api_visibility="private")
        ranked = submit.click(handlers.rerank_ui, inputs=[query, documents, top_n, instruction], outputs=[reranked, status],
                              api_visibility="private", concurrency_limit=None)
        ranked.failure(lambda: "Not ranked: see the error message.", outputs=[status], api_visibility="private")
        demo.load(lambda state: (header_line(service, scorer), details_text(service, scorer), *status_tick(state)),
                  inputs=[private], outputs=[header, details, backend, refresh], api_visibility="private")
        search.click(handlers.search_ui, inputs=[p_query, p_k, p_mode, private], outputs=[moves, p_status],
                     api_visibility="private", concurrency_limit=None)
        run.click(handlers.pipeline_ui, inputs=[p_query, p_k, p_top, p_mode, private], outputs=[moves, picture, p_status],
                  api_visibility="private", concurrency_limit=None)
        index_btn.click(handlers.index_upload, inputs=[upload, private], outputs=[private, backend],
                        api_visibility="private")
        forget_btn.click(handlers.forget_upload, inputs=[private], outputs=[private, backend], api_visibility="private")
        for fn, name in ((handlers.rerank, "rerank"), (handlers.similarity_search, "similarity_search"),
                         (handlers.retrieve_and_rerank, "retrieve_and_rerank")):
            _documented_api(demo, fn, name)
    return demo


def _documented_api(demo: gr.Blocks, fn, api_name: str) -> None:
    """``gr.api`` with the docstring's ``Args:`` and ``Returns:`` on every parameter and return of the API page
    (and of the MCP tool), and the return type resolved (``from __future__`` leaves it a string, shown as Any)."""
    import typing

    from gradio.utils import get_function_description

    fn.__func__.__annotations__["return"] = typing.get_type_hints(fn)["return"]
    dependency = gr.api(fn, api_name=api_name, concurrency_limit=None)
    _, parameters, returns = get_function_description(fn)
    block_fn = demo.fns[dependency["id"]]
    for component, name in zip(block_fn.inputs, [n for n in parameters], strict=False):
        component._api_info = {**component._api_info, "additional_description": parameters[name]}
    for component in block_fn.outputs:
        component._api_info = {**component._api_info, "description": " ".join(returns)}


def start_retriever(settings: Settings, embedder: core.Scorer) -> rc.Retriever:
    """The configured retrieval backend: the remote Space, or the local index built in the background."""
    if settings.retrieval_url:
        return rc.RemoteRetriever(settings.retrieval_url, timeout=settings.retrieval_timeout)

    def build(progress) -> rc.Retriever:
        with rc.terminal_progress(also=progress) as report:
            return rc.LocalRetriever.build(corpus_path=settings.corpus_path, cache_dir=settings.cache_dir,
                                           embedder=embedder, progress=report)

    name = "local index of " + (settings.corpus_path or "the Python standard library docs")
    return rc.BackgroundRetriever(build, name=name)


def build_server(settings: Settings, scorer: core.Scorer, retriever: rc.Retriever | None = None,
                 extra_scorers: list[core.Scorer] | None = None, *, mcp_server: bool = True,
                 embedder: core.Scorer | None = None, service: Service | None = None):
    """The FastAPI app with the rerank HTTP APIs and the Gradio app mounted at /, behind one service and one key."""
    from api import create_api

    service = service or build_service(settings, scorer, retriever, extra_scorers, embedder=embedder)
    api = create_api(service)
    demo = build_demo(settings, scorer, retriever, service=service)
    server = gr.mount_gradio_app(api, demo, path="/", mcp_server=mcp_server, max_file_size=settings.max_upload_bytes)
    if mcp_server and settings.api_key:
        _mcp_loopback_with_key(demo, settings.api_key)
    warm_up(server, settings.api_key)
    return server


WARM_PATHS = ("/health", "/info", "/config", "/gradio_api/info")


def warm_up(server, api_key: str | None = None) -> None:
    """Do before the port opens what would otherwise stall every route later: FastAPI builds its routes' schemas when
    a path is first matched and Gradio imports pyplot at its first event, both on the event loop; and a full garbage
    collection walks every object the models and apps hold (~0.45 s with two models loaded), so what start-up built
    is frozen out of the collector's scans (``gc.freeze``)."""
    import gc

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


def _mcp_loopback_with_key(demo: gr.Blocks, api_key: str) -> None:
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
            from gradio import route_utils
            from gradio_client import Client

            request = mcp.mcp_server.request_context.request
            root = route_utils.get_root_url(request=request, route_path=mcp.get_route_path(request),
                                            root_path=mcp.root_path)
            mcp._client_instance = Client(mcp.local_url or root, download_files=False, verbose=False,
                                          analytics_enabled=False, ssl_verify=False, _skip_components=False,
                                          headers={"x-gradio-user": "mcp", "Authorization": f"Bearer {api_key}"})
        return mcp._client_instance

    mcp._get_or_create_client = create_client


def main() -> None:
    """Load the configured models once and serve the UI, the Gradio API, MCP and the HTTP APIs on one port."""
    import uvicorn

    from local_index import remove_stale_builds
    from scoring.engines.onnx_engines import remove_stale_exports

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    remove_stale_builds(settings.cache_dir)
    remove_stale_exports(settings.cache_dir)
    load = {"trust_remote_code": settings.trust_remote_code, "backend": settings.backend,
            "cache_dir": str(settings.cache_dir), "device": settings.device, "max_tokens": settings.max_tokens}
    scorer = core.get_scorer(settings.model, **load)
    extra = [core.get_scorer(m, **load) for m in settings.extra_models]
    embedder = core.packaged_scorer(backend=settings.backend, cache_dir=settings.cache_dir, device=settings.device)
    for model in {id(m.pool): m for m in (scorer, *extra, embedder)}.values():
        if model.needs_tuning:  # once per machine, before the port opens: measuring never competes with requests
            log.info("measuring the inference backends for %s (at most %.0f s; remembered for later starts)",
                     model.info.name, settings.measure_budget)
            model.tune(budget_s=settings.measure_budget)
    log.info("serving with %s", scorer.describe())
    server = build_server(settings, scorer, start_retriever(settings, embedder), extra, embedder=embedder)
    log.info("UI on http://%s:%d/, HTTP API docs on /docs", settings.server_name, settings.server_port)
    uvicorn.run(server, host=settings.server_name, port=settings.server_port, log_level="warning")


if __name__ == "__main__":
    main()
