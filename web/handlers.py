"""The Gradio events and API endpoints: thin adapters on the one service, documented by their docstrings (the API
page and the MCP tools describe themselves from them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import gradio as gr

from retrieval.retrievers import BackgroundRetriever
from scoring.errors import RerankError
from scoring.media import read_image
from service import Service, ServiceError
from web import views
from web.gradio_io import (
    client_of,
    documents_from_payload,
    face_of,
    min_score_of,
    table_payload,
    thumbnails,
    top_n_of,
    with_images,
)


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
                          request: gr.Request | None = None, min_score: float | None = None):
        parse = lambda payload: documents_from_payload(payload, max_documents=self.service.limits.max_documents)  # noqa: E731
        return await self._run(self.service.rank_table, query, documents, top_n, face=face, route=route, parse=parse,
                               instruction=instruction, client=client_of(request), min_score=min_score)

    async def rerank(self, query: str, documents: dict, top_n: int | None = None, instruction: str = "",
                     min_score: float | None = None, request: gr.Request = None) -> dict:
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
            min_score: drop rows whose `rank` is below this (empty: keep all), before top_n; counted in the answer.
        Returns:
            {"headers": [...input columns, "rank"], "data": rows best first, "dropped_duplicates": [{"row", "same_as"}],
            "instruction": {"text", "applied", "note"} or null, "below_min_score": {"min_score", "dropped"} or null}.
        """
        result = await self._rank_table(query, documents, top_n, face_of(request), "/rerank", instruction, request,
                                        min_score)
        return table_payload(result.table, result.ranking)

    async def rerank_ui(self, query: str, documents, top_n, instruction: str = "", min_score: float | None = None,
                        images: list[str] | None = None, request: gr.Request = None):
        table = with_images(documents, images or [])
        result = await self._rank_table(query, table, top_n_of(top_n), "gradio", "rerank_ui", instruction, request,
                                        min_score_of(min_score))
        return views.ranked_view(result), views.summary(result, len(table)), views.ranked_images(result)

    def add_images(self, files: list[str] | None, images: list[str] | None):
        """Uploaded image files as image documents: checked against the image limits, kept as data URIs for this
        session (the files themselves are not kept)."""
        images = list(images or [])
        for file in files or []:
            path = Path(file)
            try:
                document = read_image(path.read_bytes(), field=f"image {path.name!r}", limits=self.service.limits.images)
            except RerankError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            finally:
                path.unlink(missing_ok=True)
            images.append(document.data_uri())
        return images, thumbnails(images, self.service.limits.images)

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
        return table_payload(frame)

    async def retrieve_and_rerank(self, query: str, k: int = 50, top_n: int = 5, mode: str = "",
                                  min_score: float | None = None, request: gr.Request = None) -> dict:
        """Retrieve the k closest passages, rerank them and return the best top_n.

        Args:
            query: the question.
            k: how many passages to retrieve first (1 to 1000).
            top_n: how many reranked passages to keep.
            mode: the first stage on the local index: "hybrid" (the default when empty), "dense" or "lexical".
            min_score: drop passages whose `rank` is below this (empty: keep all), before top_n; counted in the answer.
        Returns:
            {"headers": ["retrieved_position", "url", "text", "distance", "rank", "move"], "data": rows best first,
            "dropped_duplicates": [...], "below_min_score": {"min_score", "dropped"} or null}; `move` is "12 -> 1"
            (retrieved position -> reranked position).
        """
        result = await self._run(self.service.retrieve_and_rank, query, k, top_n, mode=mode, min_score=min_score,
                                 face=face_of(request), route="/retrieve_and_rerank", client=client_of(request))
        return table_payload(result.reranked, result.rerank.ranking)

    async def search_ui(self, query: str, k: int, mode: str | None, private, request: gr.Request):
        frame = await self._run(self.service.search, query, int(k), mode=mode, retriever=private, face="gradio",
                                route="search_ui", client=client_of(request))
        return frame, f"{len(frame)} passages retrieved (first stage only, not reranked)."

    async def pipeline_ui(self, query: str, k: int, top_n: int, mode: str | None, private, request: gr.Request = None,
                          progress=gr.Progress()):
        backend = private or self.service.retriever
        while isinstance(backend, BackgroundRetriever) and not backend.finished(timeout=0):
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
        return corpus, views.index_status(self.service, corpus)[0]

    def forget_upload(self, private):
        if private is not None:
            private.close()
        return None, views.index_status(self.service, None)[0]


