"""Retrievers: a remote retrieval Space, the local embedded index, one built in the background, or none.

Both backends answer ``search(query, k)`` with the seed Space's table: columns ``url``, ``text``,
``distance`` (lower is closer), closest first. The local index also takes a ``mode``: ``hybrid``
(BM25 and embeddings fused, the default), ``dense`` or ``lexical``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from retrieval import corpus, hybrid
from retrieval.index import LocalIndex
from scoring.loading import packaged_scorer

RESULT_COLUMNS = ["url", "text", "distance"]
MAX_K = 1000


class RetrievalError(RuntimeError):
    """The retrieval backend cannot answer: unreachable, too slow, misconfigured or wrong shape."""


class Retriever:
    """Anything that finds the k passages closest to a query: subclass it (``first_stage`` is unknown by default)."""

    description: str = "a retriever"

    def search(self, query: str, k: int = 5, mode: str | None = None) -> pd.DataFrame:
        """The k closest passages as a url/text/distance table, closest first (``mode``: None is the backend's own)."""
        raise NotImplementedError

    def first_stage(self, mode: str | None = None) -> str | None:
        """Which evidence a search in ``mode`` ranks by (hybrid, dense, lexical: the reranker's fusion weighs it
        accordingly), or None where it is unknown (a remote Space retrieves its own way)."""
        return None


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


class NoRetriever(Retriever):
    """The backend of an app built without one: every search says what to configure."""

    description = "none configured (set RETRIEVAL_URL, or CORPUS_PATH for the local index)"

    def search(self, query: str, k: int = 5, mode: str | None = None) -> pd.DataFrame:
        """Always a clear :class:`RetrievalError`."""
        raise RetrievalError(f"no retrieval backend: {self.description}")


class RemoteRetriever(Retriever):
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
                from gradio_client import Client  # lazy: gradio_client loads only on this path

                try:
                    self._client = Client(self.url, verbose=False, httpx_kwargs={"timeout": self.timeout},
                                          analytics_enabled=False)
                except Exception as exc:
                    raise RetrievalError(f"retrieval Space at {self.url} is unreachable: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}") from exc
            return self._client

    def search(self, query: str, k: int = 5, mode: str | None = None) -> pd.DataFrame:
        """Ask the Space for the k closest passages; errors become :class:`RetrievalError`."""
        query, k = validate_search_args(query, k)
        if mode is not None:
            raise RetrievalError(f"mode={mode!r} is not available: the retrieval Space at {self.url} retrieves its own "
                                 "way (modes are for the local index; unset RETRIEVAL_URL to use it)")
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


def index_path(cache_dir: Path, corpus_path: str | None) -> Path:
    """Where a corpus's index file lives: one file per corpus source, under the cache folder."""
    if corpus_path is None:
        return cache_dir / "index-builtin.duckdb"
    key = hashlib.sha256(str(Path(corpus_path).expanduser().resolve()).encode()).hexdigest()[:16]
    return cache_dir / f"index-{Path(corpus_path).stem[:40]}-{key}.duckdb"


class LocalRetriever(Retriever):
    """The local embedded index (the built-in corpus, or ``CORPUS_PATH``) as a retrieval backend."""

    def __init__(self, index) -> None:
        self.index = index
        self.description = index.description

    @classmethod
    def build(cls, *, corpus_path: str | None, cache_dir: Path, embedder=None, progress=None, late=None) -> LocalRetriever:
        """Load or build the index of ``corpus_path`` (None: the built-in stdlib corpus); ``late``: a late-interaction
        ranking model whose document vectors the index stores and then hands it (:meth:`LocalIndex.token_vectors`)."""
        try:
            passages = corpus.builtin_passages() if corpus_path is None else corpus.load_corpus(corpus_path)
        except corpus.CorpusError as exc:
            raise RetrievalError(str(exc)) from exc
        embedder = embedder or packaged_scorer()
        name = "the Python standard library docs" if corpus_path is None else Path(corpus_path).name
        index = LocalIndex.open(passages, embedder, path=index_path(cache_dir, corpus_path), name=name,
                                progress=progress, late=late)
        seed = getattr(embedder, "seed_embeddings", None)
        if seed is not None:
            seed(*index.stored_vectors())  # reranking retrieved passages then needs no re-encoding (where they fit)
        if late is not None:
            late.attach_store(index)
        return cls(index)

    def first_stage(self, mode: str | None = None) -> str:
        """Which evidence a search in ``mode`` ranks by (the reranker's fusion weighs it accordingly)."""
        return hybrid.check_mode(mode)

    def search(self, query: str, k: int = 5, mode: str | None = None) -> pd.DataFrame:
        """The k best passages from the local index (``mode``: hybrid, dense or lexical; None is hybrid)."""
        query, k = validate_search_args(query, k)
        try:
            return self.index.search(query, k, mode)
        except hybrid.ModeError as exc:
            raise RetrievalError(str(exc)) from None


def make_retriever(*, retrieval_url: str | None, timeout: float, corpus_path: str | None, cache_dir: Path,
                   embedder=None, progress=None) -> Retriever:
    """``retrieval_url`` set: the remote Space; unset: the local index."""
    if retrieval_url:
        return RemoteRetriever(retrieval_url, timeout=timeout)
    return LocalRetriever.build(corpus_path=corpus_path, cache_dir=cache_dir, embedder=embedder, progress=progress)


class BackgroundRetriever(Retriever):
    """Builds a retriever in a thread so the app serves at once; searches wait until it is ready."""

    def __init__(self, factory, *, name: str = "index") -> None:
        self.name = name
        self.done, self.total = 0, 0
        self._retriever: Retriever | None = None
        self._error: Exception | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._run, args=(factory,), name=f"build-{name}", daemon=True).start()

    def _run(self, factory) -> None:
        """Build, recording progress and any failure for the waiting searches."""
        try:
            self._retriever = factory(self._progress)
        except Exception as exc:  # reported to every search, the app keeps serving
            self._error = exc
        finally:
            self._ready.set()

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    @property
    def description(self) -> str:
        """What answers searches, or how far the build has got."""
        if self._error is not None:
            return f"{self.name} failed: {self._error}"
        if self._retriever is not None:
            return self._retriever.description
        return f"{self.name}: building ({self.done}/{self.total or '?'} passages embedded)"

    def finished(self, timeout: float | None = None) -> bool:
        """Whether the build has ended (successfully or not), waiting up to ``timeout`` seconds."""
        return self._ready.wait(timeout)

    def wait(self, timeout: float | None = None) -> Retriever:
        """The built retriever; a :class:`RetrievalError` if the build failed or is still running."""
        if not self._ready.wait(timeout):
            raise RetrievalError(f"{self.name} is still being built ({self.done}/{self.total or '?'} passages); "
                                 "try again shortly")
        if self._error is not None:
            raise RetrievalError(f"{self.name} could not be built: {self._error}") from self._error
        return self._retriever

    def first_stage(self, mode: str | None = None) -> str | None:
        """What the built retriever ranks by in ``mode`` (waiting for the build, as a search does; None if it failed)."""
        self.finished()
        return self._retriever.first_stage(mode) if self._retriever is not None else None

    def search(self, query: str, k: int = 5, mode: str | None = None) -> pd.DataFrame:
        """Search once the build has finished (waiting for it)."""
        return self.wait().search(query, k, mode)


@contextmanager
def terminal_progress(also=None):
    """A tqdm bar as an index-build progress callback; ``also(done, total)`` is told too."""
    from tqdm import tqdm  # lazy: tqdm loads only on this path

    with tqdm(unit="passages", desc="Indexing") as bar:
        def report(done: int, total: int) -> None:
            if also is not None:
                also(done, total)
            bar.total = total
            bar.update(done - bar.n)

        yield report


