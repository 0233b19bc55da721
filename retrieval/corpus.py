"""What the local index searches: passages from the built-in corpus or from the user's files.

A passage is ``{"url", "text", "metadata"}``. The built-in corpus is the documentation every
Python installation carries (module, class and function docstrings of the standard library, read
with ``ast`` so nothing is imported: :mod:`scoring.texts`), so the app has something real to search
with no download.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scoring.texts import docstrings, stdlib_sources

MAX_PASSAGE_CHARS = 1000
MIN_DOCSTRING_CHARS = 80
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
TABLE_SUFFIXES = {".jsonl", ".json", ".ndjson", ".csv", ".parquet"}


class CorpusError(ValueError):
    """A corpus that cannot be read: missing, empty, unreadable or without a text column."""


@dataclass(frozen=True)
class Passage:
    """One searchable unit of text with where it came from."""

    url: str
    text: str
    metadata: dict = field(default_factory=dict)


def split_passages(text: str, *, max_chars: int = MAX_PASSAGE_CHARS) -> list[str]:
    """Split text into passages of at most ``max_chars`` on paragraph, then sentence boundaries.

    Consecutive passages of one paragraph overlap by one sentence so no statement is cut off from
    its context. A sentence longer than ``max_chars`` is cut into pieces.
    """
    passages: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        if not paragraph:
            continue
        if len(paragraph) <= max_chars:
            passages.append(paragraph)
            continue
        sentences: list[str] = []
        for sentence in _SENTENCE_END.split(paragraph):
            sentences.extend(sentence[i:i + max_chars] for i in range(0, len(sentence), max_chars))
        current: list[str] = []
        for sentence in sentences:
            if current and len(" ".join(current + [sentence])) > max_chars:
                passages.append(" ".join(current))
                current = [current[-1]] if len(current[-1]) + len(sentence) + 1 <= max_chars else []
            current.append(sentence)
        if current:
            passages.append(" ".join(current))
    # merge tiny neighbouring paragraphs so passages carry enough context
    merged: list[str] = []
    for p in passages:
        if merged and len(merged[-1]) + len(p) + 1 <= max_chars // 2:
            merged[-1] = merged[-1] + "\n" + p
        else:
            merged.append(p)
    return merged


# --- the built-in corpus ---------------------------------------------------------------------------

def builtin_passages(*, stdlib_dir: Path | None = None, modules: set[str] | None = None) -> list[Passage]:
    """Passages from the standard library's docstrings, each with its docs.python.org address.

    ``modules`` restricts to those top-level modules (tests use a few).
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    passages: list[Passage] = []
    for module, path in stdlib_sources(stdlib_dir):
        if modules is not None and module.split(".")[0] not in modules:
            continue
        try:
            source = path.read_text(encoding="utf-8")
            items = list(docstrings(module, source))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        page = module.split(".")[0]
        for name, doc in items:
            if len(doc) < MIN_DOCSTRING_CHARS:
                continue
            url = f"https://docs.python.org/{version}/library/{page}.html#{name}"
            for text in split_passages(f"{name}: {doc}"):
                passages.append(Passage(url=url, text=text, metadata={"source": "python-stdlib", "name": name}))
    return passages


# --- the user's corpus -----------------------------------------------------------------------------

def _read_table(path: Path, text_column: str) -> list[Passage]:
    """Rows of a JSONL, CSV or Parquet file (read by DuckDB); other columns become metadata."""
    import duckdb  # lazy: duckdb loads only on this path

    suffix = path.suffix.lower()
    reader = {".csv": "read_csv_auto", ".parquet": "read_parquet"}.get(suffix, "read_json_auto")
    try:
        with duckdb.connect() as con:
            cursor = con.execute(f"SELECT * FROM {reader}(?)", [str(path)])
            columns = [d[0] for d in cursor.description]
            records = [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]
    except Exception as exc:
        raise CorpusError(f"corpus file {path.name} is unreadable as {suffix[1:]}: {str(exc).splitlines()[0]}") from exc
    if text_column not in columns:
        raise CorpusError(f"corpus file {path.name} has no '{text_column}' column; columns: {columns}")
    passages: list[Passage] = []
    for row_number, row in enumerate(records):
        text = row.pop(text_column)
        if not isinstance(text, str) or not text.strip():
            continue
        base = str(row.get("url") or f"{path.name}#row={row_number}")
        meta = {k: v for k, v in row.items() if k != "url"}
        meta = json.loads(json.dumps(meta, default=str))
        pieces = split_passages(text)
        for i, piece in enumerate(pieces):
            url = base if len(pieces) == 1 else f"{base}#part={i + 1}"
            passages.append(Passage(url=url, text=piece, metadata=meta))
    return passages


def _read_text_file(path: Path, root: Path) -> list[Passage]:
    """A .txt/.md file split into passages, addressed by its path under the corpus folder."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CorpusError(f"corpus file {path} is unreadable: {exc}") from exc
    rel = path.relative_to(root).as_posix() if path != root else path.name
    pieces = split_passages(text)
    return [Passage(url=f"{rel}#part={i + 1}" if len(pieces) > 1 else rel, text=p, metadata={"file": rel})
            for i, p in enumerate(pieces)]


def load_corpus(path: str | Path, *, text_column: str = "text") -> list[Passage]:
    """Passages from a JSONL/CSV/Parquet file or a folder of .txt/.md files.

    Raises :class:`CorpusError` naming the file and the problem when nothing usable is there.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(f"corpus path {str(path)!r} does not exist (CORPUS_PATH)")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise CorpusError(f"corpus folder {root} has no .txt or .md files")
        passages = [p for f in files for p in _read_text_file(f, root)]
    elif root.stat().st_size == 0:
        raise CorpusError(f"corpus file {root.name} is empty")
    elif root.suffix.lower() in TABLE_SUFFIXES:
        passages = _read_table(root, text_column)
    elif root.suffix.lower() in TEXT_SUFFIXES:
        passages = _read_text_file(root, root)
    else:
        raise CorpusError(f"corpus file {root.name} is not JSONL, CSV, Parquet, .txt or .md")
    if not passages:
        raise CorpusError(f"corpus {root.name} holds no text")
    return passages
