"""The Gradio face of rag-augment: the UI and its wiring, nothing else.

``python app.py`` serves the browser demo, the ``/rerank`` API (gradio_client), the MCP tools and the
HTTP rerank APIs on ``GRADIO_SERVER_NAME``:``GRADIO_SERVER_PORT``. Every event goes through the one
:class:`service.Service` (the key, admission, limits and the ranking), as the HTTP routes do.
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

import retrieval_client as rc
from retrieval.hybrid import DEFAULT_MODE, MODES
from retrieval.index import remove_stale_builds
from scoring.calibration import CalibrationError
from scoring.engines.onnx_engines import remove_stale_exports
from scoring.scorer import Scorer
from service import Service, assembly, memory
from service.memory import AllocatorPolicy
from service.settings import Settings
from web import views
from web.gradio_io import documented_api
from web.handlers import Handlers
from web.http import create_api
from web.server import mcp_loopback_with_key, serve, warm_up

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


def _close_corpus(private) -> None:
    if private is not None:
        private.close()


RERANK_WIDTHS = ["40px", "66px", "46px", "60%"]  # #, score, row: fixed and narrow, so the text gets the width (phones too)
MOVES_WIDTHS = ["40px", "46px", "58px", "66px", "60%"]  # #, was, move, score


def build_demo(settings: Settings, scorer: Scorer, retriever: rc.Retriever | None = None, *,
               service: Service | None = None) -> gr.Blocks:
    """The Blocks app: a one-line header, the rerank form, the retrieve-and-rerank tab, the API endpoints."""
    service = service or assembly.build(settings, scorer=scorer, retriever=retriever)
    handlers = Handlers(service)
    with gr.Blocks(title="rag-augment: rerank retrieved documents") as demo:
        private = gr.State(None, time_to_live=service.limits.upload_ttl_seconds, delete_callback=_close_corpus)
        gr.Markdown("# RAG - Augment\nReranks retrieved documents by relevance to a question, so the LLM sees "
                    "the best ones first.")
        header = gr.Markdown(views.header_line(service, scorer), elem_id="header")
        with gr.Accordion("Details: scoring rule, inference backend", open=False):
            details = gr.Markdown(views.details_text(service, scorer), elem_id="inference")
        with gr.Tab("Rerank"):
            _rerank_tab(service, scorer, handlers)
        with gr.Tab("Retrieve & rerank"):
            backend = _pipeline_tab(service, handlers, private)
        refresh = gr.Timer(2.0, active=views.index_status(service)[1])

        def status_tick(state):
            line, building = views.index_status(service, state)
            return line, gr.Timer(active=building)

        refresh.tick(status_tick, inputs=[private], outputs=[backend, refresh], api_visibility="private")
        demo.load(lambda state: (views.header_line(service, scorer), views.details_text(service, scorer), *status_tick(state)),
                  inputs=[private], outputs=[header, details, backend, refresh], api_visibility="private")
        for fn, name in ((handlers.rerank, "rerank"), (handlers.similarity_search, "similarity_search"),
                         (handlers.retrieve_and_rerank, "retrieve_and_rerank")):
            documented_api(demo, fn, name)
    return demo


def _rerank_tab(service: Service, scorer: Scorer, handlers: Handlers) -> None:
    """The query, the documents table, the instruction and top N; the reranked table; examples that run on click."""
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
        top_n = gr.Number(label="Keep the best N (0: all)", precision=0, minimum=0, value=0, scale=1, elem_id="top-n")
        min_score = gr.Number(label="Drop scores below (0: none)", value=0, minimum=0, maximum=1, step=0.05, scale=1,
                              elem_id="min-score")
        submit = gr.Button("Rerank", variant="primary", elem_id="submit", scale=2)
    images, uploaded, ranked_images = _image_documents(service, scorer, handlers)
    status = gr.Markdown(elem_id="status")
    reranked = gr.Dataframe(label="Reranked: best first (# = new position, row = input row)", wrap=True,
                            interactive=False, elem_id="reranked", column_widths=RERANK_WIDTHS,
                            headers=["#", "score", "row", "text"])
    ranked_images.render()
    gr.Examples(examples=EXAMPLES, inputs=[query, documents], outputs=[reranked, status],
                fn=handlers.rerank_example, run_on_click=True, cache_examples=True, cache_mode="lazy",
                label="Examples (click to run)", elem_id="rerank-examples")
    ranked = submit.click(handlers.rerank_ui, inputs=[query, documents, top_n, instruction, min_score, images],
                          outputs=[reranked, status, ranked_images],
                          api_visibility="private", concurrency_limit=None)
    ranked.failure(lambda: "Not ranked: see the error message.", outputs=[status], api_visibility="private")


def _image_documents(service: Service, scorer: Scorer, handlers: Handlers) -> tuple[gr.State, gr.Gallery, gr.Gallery]:
    """Where the model reads images: an upload that adds image documents to the table's (kept for the session), their
    thumbnails, and the ranked thumbnails (rendered under the reranked table)."""
    images = gr.State([])
    with gr.Row(visible=scorer.info.images):
        upload = gr.UploadButton("Add image documents", file_types=["image"], file_count="multiple",
                                 elem_id="image-upload", scale=1)
        clear = gr.Button("Remove the images", elem_id="image-clear", scale=1)
    uploaded = gr.Gallery(label="Image documents (ranked with the table's rows)", visible=scorer.info.images,
                          columns=8, height=170, object_fit="contain", elem_id="image-documents", allow_preview=False)
    ranked = gr.Gallery(label="Ranked images: best first (# = new position, row = input row)", columns=8, height=210,
                        object_fit="contain", visible=scorer.info.images, elem_id="ranked-images", render=False)
    upload.upload(handlers.add_images, inputs=[upload, images], outputs=[images, uploaded], api_visibility="private")
    clear.click(lambda: ([], []), outputs=[images, uploaded], api_visibility="private")
    return images, uploaded, ranked


def _pipeline_tab(service: Service, handlers: Handlers, private: gr.State) -> gr.Markdown:
    """Retrieve, rerank and show the moves and pictures; search only; a private upload. Returns the index status line."""
    backend = gr.Markdown(views.index_status(service)[0], elem_id="backend")
    with gr.Row():
        query = gr.Textbox(label="Question", placeholder="e.g. How do I parse JSON from a string?", scale=3,
                           elem_id="pipeline-query")
        k = gr.Slider(1, 200, value=50, step=1, label="Retrieve k")
        top = gr.Slider(1, 50, value=5, step=1, label="Keep top_n")
        remote = isinstance(service.retriever, rc.RemoteRetriever)  # a Space retrieves its own way
        mode = gr.Radio(list(MODES), value=None if remote else DEFAULT_MODE, label="First stage", elem_id="pipeline-mode",
                        visible=not remote, info="hybrid: words (BM25) and embeddings fused")
    with gr.Row():
        run = gr.Button("Retrieve & rerank", variant="primary", elem_id="pipeline-run")
        search = gr.Button("Search only", elem_id="search-only")
    status = gr.Markdown(elem_id="pipeline-status")
    moves = gr.Dataframe(label="Reranked passages and how they moved (was = retrieved position)", wrap=True,
                         interactive=False, elem_id="pipeline-reranked", column_widths=MOVES_WIDTHS,
                         headers=["#", "was", "move", "score", "text", "url"])
    picture = gr.Plot(label="Relevance scores and rank shift", elem_id="pictures")
    gr.Examples(examples=[["How do I parse JSON from a string?"], ["How can I run a function in a background thread?"],
                          ["create a temporary directory that is removed automatically"]],
                inputs=[query], outputs=[moves, picture, status], fn=handlers.pipeline_example,
                run_on_click=True, cache_examples=False, label="Examples (click to run)")
    with gr.Accordion("Index your own documents (private to this browser session)", open=False):
        upload = gr.File(label=f"JSONL, CSV or Parquet with a text column, or .txt / .md (at most "
                               f"{service.limits.max_upload_bytes // 1024:,} KiB, "
                               f"{service.limits.max_upload_passages:,} passages)",
                         file_types=[".jsonl", ".json", ".csv", ".parquet", ".txt", ".md"], elem_id="upload")
        with gr.Row():
            index_btn = gr.Button("Index this file", elem_id="index-upload")
            forget_btn = gr.Button("Back to the shared index", elem_id="forget-upload")
    search.click(handlers.search_ui, inputs=[query, k, mode, private], outputs=[moves, status],
                 api_visibility="private", concurrency_limit=None)
    run.click(handlers.pipeline_ui, inputs=[query, k, top, mode, private], outputs=[moves, picture, status],
              api_visibility="private", concurrency_limit=None)
    index_btn.click(handlers.index_upload, inputs=[upload, private], outputs=[private, backend], api_visibility="private")
    forget_btn.click(handlers.forget_upload, inputs=[private], outputs=[private, backend], api_visibility="private")
    return backend


def build_server(settings: Settings, scorer: Scorer, retriever: rc.Retriever | None = None,
                 extra_scorers: list[Scorer] | None = None, *, mcp_server: bool = True,
                 embedder: Scorer | None = None, service: Service | None = None):
    """The FastAPI app with the rerank HTTP APIs and the Gradio app mounted at /, behind one service and one key."""
    service = service or assembly.build(settings, scorer=scorer, extra=extra_scorers or (), embedder=embedder,
                                        retriever=retriever)
    api = create_api(service)
    demo = build_demo(settings, scorer, retriever, service=service)
    server = gr.mount_gradio_app(api, demo, path="/", mcp_server=mcp_server, max_file_size=settings.max_upload_bytes)
    if mcp_server and settings.api_key:
        mcp_loopback_with_key(demo, settings.api_key)
    warm_up(server, settings.api_key)
    return server


SHUTDOWN_GRACE_S = 25  # under the 30 s an orchestrator (Kubernetes, a Space) waits before it kills


def main() -> None:
    """Load the configured models once and serve the UI, the Gradio API, MCP and the HTTP APIs on one port."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    memory.keep_flat(AllocatorPolicy(interval=settings.memory_release_s))  # before the models load
    remove_stale_builds(settings.cache_dir)
    remove_stale_exports(settings.cache_dir)
    try:
        service = assembly.build(settings)
    except CalibrationError as exc:
        raise SystemExit(f"app.py: {exc}") from None
    scorer = service.models.default
    log.info("serving with %s", scorer.describe())
    server = build_server(settings, scorer, service=service)
    log.info("UI on http://%s:%d/, HTTP API docs on /docs", settings.server_name, settings.server_port)
    # on SIGTERM (a Space restarting, a container stopped): requests in flight finish (SHUTDOWN_GRACE_S at most)
    serve(server, host=settings.server_name, port=settings.server_port, in_flight=lambda: service.in_flight,
          grace_s=SHUTDOWN_GRACE_S)


if __name__ == "__main__":
    main()
