"""The Gradio face of rag-augment: the UI and its wiring, nothing else.

``python app.py`` serves the browser demo, the ``/rerank`` API (gradio_client), the MCP tools and the
HTTP rerank APIs on ``GRADIO_SERVER_NAME``:``GRADIO_SERVER_PORT``. Every event goes through the one
:class:`service.Service` (the key, admission, limits and the ranking), as the HTTP routes do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import pandas as pd

import pipeline
import rerank as core
import retrieval_client as rc
from config import Settings
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


def describe_run(documents: pd.DataFrame, reranked: pd.DataFrame) -> str:
    """Status line under the results: rows in, rows out, duplicates dropped."""
    if not isinstance(documents, pd.DataFrame) or core.TEXT_COLUMN not in documents.columns:
        return ""
    texts = documents[core.TEXT_COLUMN].tolist()
    dropped = core.duplicate_positions(texts)
    rows = ", ".join(str(i + 1) for i in dropped[:20])
    dup = f"{len(dropped)} duplicate text(s) dropped (input rows {rows})" if dropped else "no duplicates"
    return f"{len(texts)} documents in, {len(reranked)} ranked; {dup}."


def _table_payload(frame: pd.DataFrame) -> dict:
    """A table in the Dataframe component's wire shape, for API-only endpoints."""
    clean = frame.astype(object).where(frame.notna(), None)
    return {"headers": [str(c) for c in frame.columns], "data": clean.values.tolist(), "metadata": None}


class Handlers:
    """The Gradio events and API endpoints, each a thin adapter on the service."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def _run(self, method, *args, **kwargs):
        try:
            return await self.service.run(method, *args, **kwargs)
        except ServiceError as exc:
            raise gr.Error(exc.message, print_exception=False) from None  # the service logged one line

    async def rerank(self, query: str, documents: dict, request: gr.Request) -> pd.DataFrame:
        """Rerank documents (a table with a `text` column) by relevance to the query.

        Duplicate texts are dropped; a `rank` column (higher is more relevant) is added and the
        rows are sorted by it; every other column is returned unchanged.

        Args:
            query: the question to rank the documents against.
            documents: a table with a `text` column (other columns are kept): {"headers": ["url", "text"], "data": [...]}.
        """
        parse = lambda payload: documents_from_payload(payload, max_documents=self.service.limits.max_documents)  # noqa: E731
        result = await self._run(self.service.rank_table, query, documents, face=face_of(request), route="/rerank",
                                 parse=parse)
        return result.table

    async def similarity_search(self, query: str, k: int = 5, request: gr.Request = None) -> dict:
        """The k passages closest to the query (the seed retrieval Space's table).

        Args:
            query: the question to search for.
            k: how many passages to return (1 to 1000).
        Returns:
            a table with columns url, text, distance (cosine; lower is closer), closest first.
        """
        frame = await self._run(self.service.search, query, k, face=face_of(request), route="/similarity_search")
        return _table_payload(frame)

    async def retrieve_and_rerank(self, query: str, k: int = 50, top_n: int = 5, request: gr.Request = None) -> dict:
        """Retrieve the k closest passages, rerank them and return the best top_n as a table.

        Args:
            query: the question.
            k: how many passages to retrieve first (1 to 1000).
            top_n: how many reranked passages to keep.
        Returns:
            a table with columns retrieved_position, url, text, distance, rank, move ("12 -> 1").
        """
        result = await self._run(self.service.retrieve_and_rank, query, k, top_n, face=face_of(request),
                                 route="/retrieve_and_rerank")
        return _table_payload(result.reranked)

    async def search_ui(self, query: str, k: int, private, request: gr.Request):
        return await self._run(self.service.search, query, int(k), retriever=private, face="gradio", route="search_ui")

    async def pipeline_ui(self, query: str, k: int, top_n: int, private, request: gr.Request, progress=gr.Progress()):
        backend = private or self.service.retriever
        while isinstance(backend, rc.BackgroundRetriever) and not backend.finished(timeout=0.5):
            progress((backend.done, backend.total or None), desc="Building the index", unit="passages")
        result = await self._run(self.service.retrieve_and_rank, query, int(k), int(top_n), retriever=private,
                                 face="gradio", route="retrieve_and_rerank_ui")
        return result.retrieved, result.reranked, pipeline.score_chart(result.reranked), result.summary

    async def index_upload(self, file: str | None, private, request: gr.Request, progress=gr.Progress()):
        if not file:
            raise gr.Error("choose a JSONL, CSV, Parquet, .txt or .md file to index", print_exception=False)

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Embedding passages", unit="passages")

        corpus = await self._run(self.service.index_upload, file, progress=report)
        if private is not None:
            private.close()
        Path(file).unlink(missing_ok=True)  # the index holds what it needs; the upload is not kept
        return corpus, backend_line(self.service, corpus)

    def forget_upload(self, private):
        if private is not None:
            private.close()
        return None, backend_line(self.service, None)


def backend_line(service: Service, private=None) -> str:
    """Which retrieval backend answers this session's searches, for the Retrieve tab."""
    if private is not None:
        return f"**Retrieval backend:** {private.description}"
    return f"**Retrieval backend:** {service.retriever.description}"


def inference_line(scorer: core.Scorer) -> str:
    """Which inference backend runs the model and how it was chosen (it may change once measured)."""
    return f"**Inference backend:** {scorer.backend.describe()}, {scorer.workers} worker thread(s)"


def _close_corpus(private) -> None:
    if private is not None:
        private.close()


def build_demo(settings: Settings, scorer: core.Scorer, retriever: rc.Retriever | None = None, *,
               service: Service | None = None) -> gr.Blocks:
    """The Blocks app: title naming the model and scoring mode, the rerank form, the pipeline tab."""
    service = service or build_service(settings, scorer, retriever)
    handlers = Handlers(service)
    info = scorer.info
    fallback = (f"\n\n> **Fallback:** `{info.requested}` could not be loaded ({info.fallback_reason}); "
                f"serving the packaged all-MiniLM-L6-v2 instead." if info.fallback_reason else "")
    with gr.Blocks(title="rag-augment: rerank retrieved documents") as demo:
        private = gr.State(None, time_to_live=service.limits.upload_ttl_seconds, delete_callback=_close_corpus)
        gr.Markdown(
            "# RAG - Augment\n\nReranks retrieved documents by relevance to a question, so the LLM sees "
            f"the best ones first.\n\n**Model:** `{info.name}`, scoring by **{info.mode_description}**; "
            f"final score: {service.policy.describe(info.mode)}."
            f"{fallback}"
        )
        inference = gr.Markdown(inference_line(scorer), elem_id="inference")
        with gr.Tab("Rerank"):
            query = gr.Textbox(label="Query", placeholder="Enter your question here...", lines=2)
            documents = gr.Dataframe(label="Documents", value=EXAMPLE_DOCUMENTS,
                                     headers=list(EXAMPLE_DOCUMENTS.columns), wrap=True, interactive=True,
                                     type="pandas", elem_id="documents")
            submit = gr.Button("Submit", variant="primary", elem_id="submit")
            reranked = gr.Dataframe(label="Reranked documents", wrap=True, interactive=False, type="pandas",
                                    headers=[*EXAMPLE_DOCUMENTS.columns, core.SCORE_COLUMN], elem_id="reranked")
            status = gr.Markdown(elem_id="status")
            gr.Examples(examples=EXAMPLES, inputs=[query, documents])
        with gr.Tab("Retrieve & rerank"):
            backend = gr.Markdown(backend_line(service), elem_id="backend")
            with gr.Row():
                p_query = gr.Textbox(label="Question", placeholder="e.g. How do I parse JSON from a string?",
                                     scale=3, elem_id="pipeline-query")
                p_k = gr.Slider(1, 200, value=50, step=1, label="Retrieve k")
                p_top = gr.Slider(1, 50, value=5, step=1, label="Keep top_n")
            with gr.Row():
                run = gr.Button("Retrieve & rerank", variant="primary", elem_id="pipeline-run")
                search = gr.Button("Search only", elem_id="search-only")
            p_status = gr.Markdown(elem_id="pipeline-status")
            with gr.Row():
                retrieved_out = gr.Dataframe(label="Retrieved (first stage)", wrap=True, interactive=False,
                                             headers=["retrieved_position", "url", "text", "distance"],
                                             elem_id="retrieved")
                reranked_out = gr.Dataframe(label="Reranked (best top_n)", wrap=True, interactive=False,
                                            headers=["retrieved_position", "url", "text", "distance", "rank", "move"],
                                            elem_id="pipeline-reranked")
            chart = gr.BarPlot(x="document", y="score", title="Rerank scores", sort="-y", x_label_angle=-30,
                               label="Rerank scores")
            gr.Examples(examples=[["How do I parse JSON from a string?"],
                                  ["How can I run a function in a background thread?"],
                                  ["create a temporary directory that is removed automatically"]],
                        inputs=[p_query])
            with gr.Accordion("Index your own documents (private to this browser session)", open=False):
                upload = gr.File(label=f"JSONL, CSV or Parquet with a text column, or .txt / .md (at most "
                                       f"{service.limits.max_upload_bytes // 1024:,} KiB, "
                                       f"{service.limits.max_upload_passages:,} passages)",
                                 file_types=[".jsonl", ".json", ".csv", ".parquet", ".txt", ".md"], elem_id="upload")
                with gr.Row():
                    index_btn = gr.Button("Index this file", elem_id="index-upload")
                    forget_btn = gr.Button("Back to the shared index", elem_id="forget-upload")
        ranked = submit.click(handlers.rerank, inputs=[query, documents], outputs=[reranked], api_name="rerank",
                              preprocess=False, concurrency_limit=None)  # the service's queue interleaves requests
        ranked.success(describe_run, inputs=[documents, reranked], outputs=[status], api_visibility="private")
        ranked.then(lambda: inference_line(scorer), outputs=[inference], api_visibility="private")
        demo.load(lambda: inference_line(scorer), outputs=[inference], api_visibility="private")
        ranked.failure(lambda: "Not ranked: see the error message.", outputs=[status], api_visibility="private")
        search.click(handlers.search_ui, inputs=[p_query, p_k, private], outputs=[retrieved_out],
                     api_visibility="private", concurrency_limit=None)
        run.click(handlers.pipeline_ui, inputs=[p_query, p_k, p_top, private],
                  outputs=[retrieved_out, reranked_out, chart, p_status], api_visibility="private",
                  concurrency_limit=None).then(lambda p: backend_line(service, p), inputs=[private], outputs=[backend],
                                               api_visibility="private")
        index_btn.click(handlers.index_upload, inputs=[upload, private], outputs=[private, backend],
                        api_visibility="private")
        forget_btn.click(handlers.forget_upload, inputs=[private], outputs=[private, backend], api_visibility="private")
        gr.api(handlers.similarity_search, api_name="similarity_search", concurrency_limit=None)
        gr.api(handlers.retrieve_and_rerank, api_name="retrieve_and_rerank", concurrency_limit=None)
    return demo


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
    return server


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
            "cache_dir": str(settings.cache_dir), "device": settings.device}
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
