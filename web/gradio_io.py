"""What crosses the Gradio face: the Dataframe wire shape in and out, who an event comes from, and API endpoints
documented from their functions' docstrings."""

from __future__ import annotations

import typing

import gradio as gr
import pandas as pd
from gradio.utils import get_function_description

from scoring.errors import LimitExceeded, RerankError
from scoring.media import ImageLimits, from_data_uri
from scoring.table import IMAGE_COLUMN, TEXT_COLUMN


def documents_from_payload(payload: object, *, max_documents: int) -> pd.DataFrame:
    """The Dataframe wire shape ``{headers, data, metadata}`` as a table, checked with clear messages.

    Gradio's own preprocessing is bypassed for ``/rerank`` so that a malformed table is named
    precisely, and never echoed back in the error.
    """
    if isinstance(payload, pd.DataFrame):
        return payload
    if not isinstance(payload, dict) or "data" not in payload:
        raise RerankError("documents must be a table: {\"headers\": [column names], \"data\": [rows]}, "
                               f"got {type(payload).__name__}")
    headers, rows = payload.get("headers"), payload["data"]
    if not isinstance(headers, list) or not all(isinstance(h, (str, int, float)) for h in headers):
        raise RerankError("documents.headers must be a list of column names")
    if not isinstance(rows, list) or not all(isinstance(r, (list, tuple)) for r in rows):
        raise RerankError("documents.data must be a list of rows, each a list of cells")
    if len(rows) > max_documents:
        raise LimitExceeded(f"documents has {len(rows)} rows; the limit is {max_documents} (RERANK_MAX_DOCUMENTS)")
    ragged = [i for i, r in enumerate(rows) if len(r) != len(headers)]
    if ragged and rows != [[]]:
        shown = ", ".join(str(i) for i in ragged[:10]) + (" …" if len(ragged) > 10 else "")
        raise RerankError(f"documents.data rows {shown} do not have {len(headers)} cells, one per header")
    # object cells: what arrives is kept as sent (a string dtype would fail on text that is not valid Unicode before
    # the ranking can name the cell)
    return pd.DataFrame([] if rows == [[]] else rows, columns=[str(h) for h in headers], dtype=object)


def with_images(table: pd.DataFrame, images: list[str]) -> pd.DataFrame:
    """The page's documents table with the session's uploaded images (data URIs) appended as image rows: empty
    text, the image in an ``image`` column, other columns empty."""
    if not images:
        return table
    rows = pd.DataFrame({TEXT_COLUMN: [""] * len(images), IMAGE_COLUMN: images}, dtype=object)
    return pd.concat([table.astype(object), rows], ignore_index=True)


def thumbnails(images: list[str], limits: ImageLimits) -> list:
    """The session's uploaded images (checked against ``limits`` when they came) as the gallery shows them."""
    return [from_data_uri(uri, field="image", limits=limits).image() for uri in images]


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


def table_payload(frame: pd.DataFrame, ranking=None) -> dict:
    """A table in the Dataframe component's wire shape for API endpoints, with the dropped duplicates (rows from 0)."""
    clean = frame.astype(object).where(frame.notna(), None)
    payload = {"headers": [str(c) for c in frame.columns], "data": clean.values.tolist(), "metadata": None}
    if ranking is not None:
        payload["dropped_duplicates"] = [{"row": d.index, "same_as": d.same_as} for d in ranking.duplicates]
        payload["instruction"] = ranking.instruction.as_dict() if ranking.instruction else None
        payload["below_min_score"] = ranking.threshold.as_dict() if ranking.threshold else None
    return payload


def min_score_of(value) -> float | None:
    """The UI's minimum-score box: empty or 0 drops nothing (the page's scores are in [0, 1])."""
    return None if value in (None, "", 0) else value


def top_n_of(value) -> int | None:
    """The UI's top_n box: empty or 0 keeps every row."""
    return int(value) if value not in (None, "", 0) else None


def documented_api(demo: gr.Blocks, fn, api_name: str) -> None:
    """``gr.api`` with the docstring's ``Args:`` and ``Returns:`` on every parameter and return of the API page
    (and of the MCP tool), and the return type resolved (``from __future__`` leaves it a string, shown as Any)."""
    fn.__func__.__annotations__["return"] = typing.get_type_hints(fn)["return"]
    dependency = gr.api(fn, api_name=api_name, concurrency_limit=None)
    _, parameters, returns = get_function_description(fn)
    block_fn = demo.fns[dependency["id"]]
    for component, name in zip(block_fn.inputs, [n for n in parameters], strict=False):
        component._api_info = {**component._api_info, "additional_description": parameters[name]}
    for component in block_fn.outputs:
        component._api_info = {**component._api_info, "description": " ".join(returns)}


