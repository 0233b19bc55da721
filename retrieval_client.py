"""Fetch retrieval candidates: from a remote retrieval Space, or from the local embedded index.

Both backends answer ``search(query, k)`` with the seed Space's table: columns ``url``, ``text``,
``distance`` (cosine distance, lower is closer), closest first.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Protocol

import pandas as pd

RESULT_COLUMNS = ["url", "text", "distance"]
MAX_K = 1000


class RetrievalError(RuntimeError):
    """The retrieval backend cannot answer: unreachable, too slow, misconfigured or wrong shape."""


class Retriever(Protocol):
    """Anything that finds the k passages closest to a query."""

    description: str

    def search(self, query: str, k: int = 5) -> pd.DataFrame:
        """The k closest passages as a url/text/distance table, closest first."""
        ...


def validate_search_args(query: object, k: object) -> tuple[str, int]:
    """Check the query and k before any backend is asked."""
    if not isinstance(query, str) or not query.strip():
        raise RetrievalError("query is empty: type a question to search for")
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise RetrievalError(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    return query, k


def table_from_payload(payload: object, *, source: str) -> pd.DataFrame:
    """Turn a Space's Dataframe answer ({headers, data}) into the url/text/distance table."""
    if isinstance(payload, pd.DataFrame):
        frame = payload
    elif isinstance(payload, dict) and isinstance(payload.get("headers"), list) and isinstance(payload.get("data"), list):
        headers, rows = payload["headers"], payload["data"]
        if any(not isinstance(r, list) or len(r) != len(headers) for r in rows):
            raise RetrievalError(f"{source} answered a table whose rows do not match its {len(headers)} headers")
        frame = pd.DataFrame(rows, columns=headers)
    else:
        raise RetrievalError(f"{source} answered {type(payload).__name__}, not a table with headers and data")
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise RetrievalError(f"{source} answered a table without column(s) {missing}; "
                             f"columns received: {[str(c) for c in frame.columns]}")
    try:
        frame = frame.assign(distance=pd.to_numeric(frame["distance"]))
    except (TypeError, ValueError):
        raise RetrievalError(f"{source} answered non-numeric distances") from None
    if not all(isinstance(t, str) for t in frame["text"]):
        raise RetrievalError(f"{source} answered rows whose text is not a string")
    return frame.reset_index(drop=True)


class RemoteRetriever:
    """A retrieval Space (the seed's ``/similarity_search`` protocol) called through gradio_client."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        if not url:
            raise RetrievalError("no retrieval URL is set (RETRIEVAL_URL)")
        self.url = url
        self.timeout = timeout
        self.description = f"remote retrieval Space at {url}"
        self._client = None
        self._lock = threading.Lock()

    def _connect(self):
        """Open the gradio_client connection once, with the timeout on every HTTP call."""
        with self._lock:
            if self._client is None:
                from gradio_client import Client

                try:
                    self._client = Client(self.url, verbose=False, httpx_kwargs={"timeout": self.timeout},
                                          analytics_enabled=False)
                except Exception as exc:
                    raise RetrievalError(f"retrieval Space at {self.url} is unreachable: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}") from exc
            return self._client

    def search(self, query: str, k: int = 5) -> pd.DataFrame:
        """Ask the Space for the k closest passages; errors become :class:`RetrievalError`."""
        query, k = validate_search_args(query, k)
        client = self._connect()
        try:
            job = client.submit(query=query, k=k, api_name="/similarity_search")
            payload = job.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise RetrievalError(f"retrieval Space at {self.url} did not answer within {self.timeout:g} s "
                                 "(RETRIEVAL_TIMEOUT)") from None
        except Exception as exc:
            raise RetrievalError(f"retrieval Space at {self.url} failed: {type(exc).__name__}: "
                                 f"{str(exc)[:200]}") from exc
        return table_from_payload(payload, source=f"retrieval Space at {self.url}")


def similarity_search(query: str, k: int = 5, *, url: str | None = None, timeout: float | None = None) -> pd.DataFrame:
    """The seed's helper: the k passages closest to ``query`` (url, text, distance; closest first).

    ``url`` defaults to ``RETRIEVAL_URL``.
    """
    from config import Settings

    settings = Settings.from_env()
    retriever = RemoteRetriever(url or settings.retrieval_url or "", timeout=timeout or settings.retrieval_timeout)
    return retriever.search(query, k)
