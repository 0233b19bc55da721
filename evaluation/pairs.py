"""The second input format for users without a corpus: rows of (query, passage, label), JSONL or CSV.

Each distinct passage is a document of the corpus (hard negatives are mined among them), each distinct query a
query, and each row a judgment: the label rounded to a whole number (0: not relevant; graded labels keep their grade).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evaluation.harness import Dataset

FIELDS = ("query", "passage", "label")


def is_pairs_file(path: Path) -> bool:
    """A pairs file (``.jsonl``, ``.json`` lines or ``.csv``) rather than a BEIR-layout folder."""
    return path.is_file() and path.suffix.lower() in (".jsonl", ".csv")


def _rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        import pandas as pd  # lazy: pandas loads only on this path

        frame = pd.read_csv(path, dtype=object, keep_default_na=False)
        missing = [f for f in FIELDS if f not in frame.columns]
        if missing:
            raise ValueError(f"{path.name}: the header needs the columns {', '.join(FIELDS)}; missing {missing[0]!r}")
        return frame.to_dict("records")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path.name} line {n}: not JSON ({exc})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path.name} line {n}: expected an object with {', '.join(FIELDS)}")
            rows.append(row)
    return rows


def _label(value: object, where: str) -> int:
    """A label as a whole-number grade, or an error naming the row and the value."""
    try:
        number = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise ValueError(f"{where}: label must be a number, got {value!r}")
    return int(round(number))


def read_pairs(path: str | Path) -> Dataset:
    """A collection from a pairs file; each bad row is an error naming its line (or row) and field."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path.name}: no rows of {', '.join(FIELDS)}")
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    passage_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        where = f"{path.name} {'row' if path.suffix.lower() == '.csv' else 'line'} {n}"
        for name in FIELDS:
            if name not in row:
                raise ValueError(f"{where}: no {name!r} field")
        query, passage = row["query"], row["passage"]
        if not isinstance(query, str) or not query.strip() or not isinstance(passage, str) or not passage.strip():
            raise ValueError(f"{where}: query and passage must be non-empty text")
        qid = query_ids.setdefault(query, f"q{len(query_ids)}")
        pid = passage_ids.setdefault(passage, f"p{len(passage_ids)}")
        queries[qid], corpus[pid] = query, passage
        qrels.setdefault(qid, {})[pid] = _label(row["label"], where)
    return Dataset(path.stem, corpus, queries, qrels)
