"""The Gradio face of rag-augment: the UI and its wiring, nothing else.

``python app.py`` serves the browser demo and the ``/rerank`` API (gradio_client) on
``GRADIO_SERVER_NAME``:``GRADIO_SERVER_PORT``.
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
        raise core.RerankError(f"documents has {len(rows)} rows; the limit is {max_documents} (RERANK_MAX_DOCUMENTS)")
    ragged = [i for i, r in enumerate(rows) if len(r) != len(headers)]
    if ragged and rows != [[]]:
        shown = ", ".join(str(i) for i in ragged[:10]) + (" …" if len(ragged) > 10 else "")
        raise core.RerankError(f"documents.data rows {shown} do not have {len(headers)} cells, one per header")
    return pd.DataFrame([] if rows == [[]] else rows, columns=[str(h) for h in headers])


def scoring_policy(settings: Settings) -> core.ScoringPolicy:
    """The configured fusion of model and first-stage scores (RERANK_FUSION, RERANK_FUSION_WEIGHT)."""
    return core.ScoringPolicy(fusion=settings.fusion, weight=settings.fusion_weight)


def make_rerank_handler(scorer: core.Scorer, max_documents: int, policy: core.ScoringPolicy = core.DEFAULT_POLICY):
    """The ``/rerank`` endpoint: the seed's call, a table in, the reranked table out."""

    def rerank(query: str, documents: pd.DataFrame) -> pd.DataFrame:
        """Rerank documents (a table with a `text` column) by relevance to the query.

        Duplicate texts are dropped; a `rank` column (higher is more relevant) is added and the
        rows are sorted by it; every other column is returned unchanged.
        """
        try:
            table = documents_from_payload(documents, max_documents=max_documents)
            return core.rerank_table(query, table, scorer=scorer, max_documents=max_documents, policy=policy).table
        except core.RerankError as exc:
            raise gr.Error(str(exc)) from None

    return rerank


def describe_run(documents: pd.DataFrame, reranked: pd.DataFrame) -> str:
    """Status line under the results: rows in, rows out, duplicates dropped."""
    if not isinstance(documents, pd.DataFrame) or core.TEXT_COLUMN not in documents.columns:
        return ""
    texts = documents[core.TEXT_COLUMN].tolist()
    dropped = core.duplicate_positions(texts)
    rows = ", ".join(str(i + 1) for i in dropped[:20])
    dup = f"{len(dropped)} duplicate text(s) dropped (input rows {rows})" if dropped else "no duplicates"
    return f"{len(texts)} documents in, {len(reranked)} ranked; {dup}."


class Services:
    """What the UI talks to: the scorer and the current retrieval backend (an upload replaces it)."""

    def __init__(self, settings: Settings, scorer: core.Scorer, retriever: rc.Retriever) -> None:
        self.settings = settings
        self.scorer = scorer
        self.retriever = retriever


def _table_payload(frame: pd.DataFrame) -> dict:
    """A table in the Dataframe component's wire shape, for API-only endpoints."""
    clean = frame.astype(object).where(frame.notna(), None)
    return {"headers": [str(c) for c in frame.columns], "data": clean.values.tolist(), "metadata": None}


def make_retrieval_handlers(services: Services):
    """The retrieval endpoints: /similarity_search (the seed Space's shape) and the pipeline."""

    def similarity_search(query: str, k: int = 5) -> pd.DataFrame:
        """The k passages closest to the query: url, text, distance (cosine; lower is closer)."""
        try:
            return services.retriever.search(query, int(k) if k is not None else 5)
        except (rc.RetrievalError, TypeError, ValueError) as exc:
            raise gr.Error(str(exc)) from None

    def run_pipeline(query: str, k: int, top_n: int) -> pipeline.PipelineResult:
        try:
            return pipeline.retrieve_and_rerank(query, retriever=services.retriever, scorer=services.scorer,
                                                k=int(k), top_n=int(top_n),
                                                max_documents=services.settings.max_documents,
                                                policy=scoring_policy(services.settings))
        except (core.RerankError, rc.RetrievalError) as exc:
            raise gr.Error(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise gr.Error(f"k and top_n must be whole numbers: {exc}") from None

    def retrieve_and_rerank(query: str, k: int = 50, top_n: int = 5) -> dict:
        """Retrieve the k closest passages, rerank them and return the best top_n as a table.

        Columns: retrieved_position, url, text, distance, rank, move ("12 -> 1").
        """
        return _table_payload(run_pipeline(query, k, top_n).reranked)

    def pipeline_ui(query: str, k: int, top_n: int, progress=gr.Progress()):
        backend = services.retriever
        while isinstance(backend, rc.BackgroundRetriever) and not backend.finished(timeout=0.5):
            progress((backend.done, backend.total or None), desc="Building the index", unit="passages")
        result = run_pipeline(query, k, top_n)
        return result.retrieved, result.reranked, pipeline.score_chart(result.reranked), result.summary

    def index_upload(file: str | None, progress=gr.Progress()):
        if not file:
            raise gr.Error("choose a JSONL, CSV, Parquet, .txt or .md file to index")

        def report(done: int, total: int) -> None:
            progress((done, total), desc="Embedding passages", unit="passages")

        try:
            services.retriever = rc.LocalRetriever.build(corpus_path=file, cache_dir=services.settings.cache_dir,
                                                         progress=report)
        except (rc.RetrievalError, Exception) as exc:
            raise gr.Error(f"could not index {Path(file).name}: {exc}") from None
        return backend_line(services)

    return similarity_search, retrieve_and_rerank, pipeline_ui, index_upload


def backend_line(services: Services) -> str:
    """Which retrieval backend answers, for the Retrieve tab."""
    return f"**Retrieval backend:** {services.retriever.description}"


def build_demo(settings: Settings, scorer: core.Scorer, retriever: rc.Retriever | None = None) -> gr.Blocks:
    """The Blocks app: title naming the model and scoring mode, the rerank form, the pipeline tab."""
    info = scorer.info
    services = Services(settings, scorer, retriever or rc.NoRetriever())
    similarity_search, retrieve_and_rerank, pipeline_ui, index_upload = make_retrieval_handlers(services)
    fallback = (f"\n\n> **Fallback:** `{info.requested}` could not be loaded ({info.fallback_reason}); "
                f"serving the packaged all-MiniLM-L6-v2 instead." if info.fallback_reason else "")
    with gr.Blocks(title="rag-augment: rerank retrieved documents") as demo:
        gr.Markdown(
            "# RAG - Augment\n\nReranks retrieved documents by relevance to a question, so the LLM sees "
            f"the best ones first.\n\n**Model:** `{info.name}`, scoring by **{info.mode_description}**; "
            f"final score: {scoring_policy(settings).describe(info.mode)}."
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
            backend = gr.Markdown(backend_line(services), elem_id="backend")
            with gr.Row():
                p_query = gr.Textbox(label="Question", placeholder="e.g. How do I parse JSON from a string?",
                                     scale=3, elem_id="pipeline-query")
                p_k = gr.Slider(1, 200, value=50, step=1, label="Retrieve k")
                p_top = gr.Slider(1, 50, value=5, step=1, label="Keep top_n")
            with gr.Row():
                run = gr.Button("Retrieve & rerank", variant="primary", elem_id="pipeline-run")
                search = gr.Button("Search only")
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
            with gr.Accordion("Index your own documents", open=False):
                upload = gr.File(label="JSONL, CSV or Parquet with a text column, or .txt / .md",
                                 file_types=[".jsonl", ".json", ".csv", ".parquet", ".txt", ".md"])
                index_btn = gr.Button("Index this file")
        ranked = submit.click(make_rerank_handler(scorer, settings.max_documents, scoring_policy(settings)),
                              inputs=[query, documents], outputs=[reranked], api_name="rerank", preprocess=False,
                              concurrency_limit=None)  # concurrent requests share the core's worker pool
        ranked.success(describe_run, inputs=[documents, reranked], outputs=[status], api_visibility="private")
        ranked.then(lambda: inference_line(scorer), outputs=[inference], api_visibility="private")
        demo.load(lambda: inference_line(scorer), outputs=[inference], api_visibility="private")
        ranked.failure(lambda: "Not ranked: see the error message.", outputs=[status], api_visibility="private")
        search.click(similarity_search, inputs=[p_query, p_k], outputs=[retrieved_out], api_name="similarity_search")
        run.click(pipeline_ui, inputs=[p_query, p_k, p_top], outputs=[retrieved_out, reranked_out, chart, p_status],
                  api_visibility="private").then(backend_line_fn(services), outputs=[backend],
                                                 api_visibility="private")
        index_btn.click(index_upload, inputs=[upload], outputs=[backend], api_visibility="private")
        gr.api(retrieve_and_rerank, api_name="retrieve_and_rerank")
    return demo


def inference_line(scorer: core.Scorer) -> str:
    """Which inference backend runs the model and how it was chosen (it may change once measured)."""
    return f"**Inference backend:** {scorer.backend.describe()}, {scorer.workers} worker thread(s)"


def backend_line_fn(services: Services):
    """A no-argument refresher of the backend line (the index may have finished building)."""
    return lambda: backend_line(services)


def start_retriever(settings: Settings) -> rc.Retriever:
    """The configured retrieval backend: the remote Space, or the local index built in the background."""
    if settings.retrieval_url:
        return rc.RemoteRetriever(settings.retrieval_url, timeout=settings.retrieval_timeout)

    def build(progress) -> rc.Retriever:
        with rc.terminal_progress(also=progress) as report:
            embedder = core.packaged_scorer(backend=settings.backend, cache_dir=settings.cache_dir)
            return rc.LocalRetriever.build(corpus_path=settings.corpus_path, cache_dir=settings.cache_dir,
                                           embedder=embedder, progress=report)

    name = "local index of " + (settings.corpus_path or "the Python standard library docs")
    return rc.BackgroundRetriever(build, name=name)


def build_server(settings: Settings, scorer: core.Scorer, retriever: rc.Retriever | None = None,
                 extra_scorers: list[core.Scorer] | None = None, *, mcp_server: bool = True):
    """The FastAPI app with the rerank HTTP APIs, the Gradio app mounted at / beside them."""
    from api import Models, create_api

    api = create_api(Models(scorer, extra_scorers or []), max_documents=settings.max_documents,
                     max_body_bytes=settings.max_body_bytes, max_queue=settings.max_queue, api_key=settings.api_key,
                     fusion_description=scoring_policy(settings).describe(scorer.info.mode))
    demo = build_demo(settings, scorer, retriever)
    return gr.mount_gradio_app(api, demo, path="/", mcp_server=mcp_server)


def main() -> None:
    """Load the configured models once and serve the UI, the Gradio API and the HTTP APIs on one port."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    load = {"trust_remote_code": settings.trust_remote_code, "backend": settings.backend,
            "cache_dir": str(settings.cache_dir)}
    scorer = core.get_scorer(settings.model, **load)
    extra = [core.get_scorer(m, **load) for m in settings.extra_models]
    log.info("serving with %s", scorer.describe())
    server = build_server(settings, scorer, start_retriever(settings), extra)
    for model in (scorer, *extra):
        model.start_tuning(delay=15)  # measures the backends beside the running service, once per machine
    log.info("UI on http://%s:%d/, HTTP API docs on /docs", settings.server_name, settings.server_port)
    uvicorn.run(server, host=settings.server_name, port=settings.server_port, log_level="warning")


if __name__ == "__main__":
    main()
