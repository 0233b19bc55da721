"""The seed's way, as a server: one Gradio ``/rerank`` calling ``CrossEncoder.predict`` (batch 32, max_length 512).

``RERANK_MODEL=<folder> GRADIO_SERVER_PORT=<port> python bench/seed_app.py``: the baseline that
``bench/latency.py`` measures the app against over HTTP (same weights, same client, Gradio's
default queue of one request at a time). Not part of the service.
"""

from __future__ import annotations

import os

import gradio as gr
import pandas as pd
from sentence_transformers import CrossEncoder

model = CrossEncoder(os.environ["RERANK_MODEL"], device="cpu", max_length=512)


def rerank(query: str, documents: pd.DataFrame) -> pd.DataFrame:
    """Drop duplicate texts, score every pair, sort by the score."""
    documents = documents.drop_duplicates(subset="text").copy()
    documents["rank"] = model.predict([(query, t) for t in documents["text"]], batch_size=32, show_progress_bar=False)
    return documents.sort_values("rank", ascending=False)


with gr.Blocks() as demo:
    query = gr.Textbox()
    table = gr.Dataframe(type="pandas")
    out = gr.Dataframe(type="pandas")
    gr.Button().click(rerank, inputs=[query, table], outputs=[out], api_name="rerank")

if __name__ == "__main__":
    demo.launch(server_name="127.0.0.1", server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
