"""The Gradio face of rag-augment: the UI and its wiring, nothing else.

``python app.py`` serves the browser demo and the ``/rerank`` API (gradio_client) on
``GRADIO_SERVER_NAME``:``GRADIO_SERVER_PORT``.
"""

from __future__ import annotations

import logging

import gradio as gr
import pandas as pd

import rerank as core
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


def make_rerank_handler(scorer: core.Scorer, max_documents: int):
    """The ``/rerank`` endpoint: the seed's call, a table in, the reranked table out."""

    def rerank(query: str, documents: pd.DataFrame) -> pd.DataFrame:
        """Rerank documents (a table with a `text` column) by relevance to the query.

        Duplicate texts are dropped; a `rank` column (higher is more relevant) is added and the
        rows are sorted by it; every other column is returned unchanged.
        """
        try:
            return core.rerank_table(query, documents, scorer=scorer, max_documents=max_documents).table
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


def build_demo(settings: Settings, scorer: core.Scorer) -> gr.Blocks:
    """The Blocks app: title naming the model and scoring mode, the rerank form, examples."""
    info = scorer.info
    fallback = (f"\n\n> **Fallback:** `{info.requested}` could not be loaded ({info.fallback_reason}); "
                f"serving the packaged all-MiniLM-L6-v2 instead." if info.fallback_reason else "")
    with gr.Blocks(title="rag-augment: rerank retrieved documents") as demo:
        gr.Markdown(
            "# RAG - Augment\n\nReranks retrieved documents by relevance to a question, so the LLM sees "
            f"the best ones first.\n\n**Model:** `{info.name}`, scoring by **{info.mode_description}**."
            f"{fallback}"
        )
        with gr.Tab("Rerank"):
            query = gr.Textbox(label="Query", placeholder="Enter your question here...", lines=2)
            documents = gr.Dataframe(label="Documents", value=EXAMPLE_DOCUMENTS,
                                     headers=list(EXAMPLE_DOCUMENTS.columns), wrap=True, interactive=True,
                                     type="pandas", elem_id="documents")
            submit = gr.Button("Submit", variant="primary")
            reranked = gr.Dataframe(label="Reranked documents", wrap=True, interactive=False,
                                    type="pandas", elem_id="reranked")
            status = gr.Markdown(elem_id="status")
            gr.Examples(examples=EXAMPLES, inputs=[query, documents])
        submit.click(make_rerank_handler(scorer, settings.max_documents), inputs=[query, documents],
                     outputs=[reranked], api_name="rerank").success(
            describe_run, inputs=[documents, reranked], outputs=[status], api_visibility="private")
    return demo


def main() -> None:
    """Load the configured model once and serve the app."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    scorer = core.get_scorer(settings.model, trust_remote_code=settings.trust_remote_code)
    log.info("serving with %s", scorer.info.describe())
    demo = build_demo(settings, scorer)
    demo.launch(server_name=settings.server_name, server_port=settings.server_port)


if __name__ == "__main__":
    main()
