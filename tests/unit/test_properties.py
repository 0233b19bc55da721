"""Property-based tests of the core rerank: every input is a clear error or a lossless, sorted answer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import rerank
from scoring.inputs import duplicate_positions

POOL = ["alpha beta", "gamma", "", "   ", "naïve café ☕", "مرحبا بالعالم", "a\x00b", "\u202edir", "🎉" * 30, "\x00",
        "lone \ud800 surrogate", "\udfff"]
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
TEXTS = st.one_of(st.sampled_from(POOL), st.text(max_size=60), st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
                  st.text(alphabet=st.one_of(st.sampled_from("\x00ab "), SURROGATE), max_size=12))
CELLS = st.one_of(TEXTS, TEXTS, TEXTS, st.none(), st.floats(allow_nan=True), st.integers(), st.binary(max_size=5),
                  st.booleans())
EXTRA = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10), st.none(),
                  st.booleans(), st.binary(max_size=3))


@st.composite
def tables(draw):
    n = draw(st.integers(0, 25))
    texts = draw(st.lists(CELLS, min_size=n, max_size=n))
    columns = {"text": texts}
    names = draw(st.lists(st.sampled_from(["url", "distance", "meta", "rank", "0", "text2"]), max_size=3))
    frame = pd.DataFrame(columns, dtype=object)  # object cells hold what a string dtype could not (lone surrogates)
    for position, name in enumerate(names):
        frame.insert(draw(st.integers(0, len(frame.columns))), name,
                     pd.array(draw(st.lists(EXTRA, min_size=n, max_size=n)), dtype=object), allow_duplicates=True)
        del position
    return frame


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if a is None or b is None:
        return a is b or (pd.isna(a) and pd.isna(b))
    return bool(a == b) if not isinstance(a, (list, np.ndarray)) else np.array_equal(a, b)


def check_answer(frame: pd.DataFrame, query: str, result: rerank.RerankResult, top_n: int | None = None) -> None:
    """Rows = input minus reported duplicates, columns unchanged, sorted by score with ties in input order."""
    texts = frame["text"].tolist()
    expected_dups = duplicate_positions(texts)
    assert result.duplicates == [frame.index[i] for i in expected_dups]
    kept = [label for i, label in enumerate(frame.index) if i not in set(expected_dups)]
    table = result.table
    if top_n is None:
        assert sorted(table.index.tolist()) == kept
    else:
        assert len(table) == min(top_n, len(kept)) and set(table.index) <= set(kept)
    other = [i for i, c in enumerate(frame.columns) if c != "rank"]
    out_cols = [c for c in table.columns]
    assert out_cols[-1] == "rank" and out_cols[:-1] == [frame.columns[i] for i in other]
    for label in table.index:
        src = frame.loc[label]
        dst = table.loc[label]
        for j, i in enumerate(other):
            assert _same(src.iloc[i], dst.iloc[j]), (label, frame.columns[i])
    scores = table["rank"].to_numpy()
    assert np.all(np.isfinite(scores)) and np.all(scores[:-1] >= scores[1:])
    labels = table.index.tolist()
    for a in range(len(labels) - 1):
        if scores[a] == scores[a + 1]:
            assert labels[a] < labels[a + 1]  # ties keep input order


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frame=tables(), query=st.one_of(TEXTS, st.none(), st.integers()), top_n=st.one_of(st.none(), st.integers(1, 5)))
@example(frame=pd.DataFrame({"text": ["same"] * 5 + ["other"] * 3}), query="q", top_n=None)
@example(frame=pd.DataFrame({"text": [], "url": []}), query="q", top_n=None)
def test_rerank_is_lossless_or_a_clear_error(packaged_scorer, frame, query, top_n):
    try:
        result = rerank.rerank_table(query, frame, top_n, scorer=packaged_scorer, max_documents=20)
    except rerank.RerankError as exc:
        message = str(exc)
        assert message and len(message) < 600  # clear, and never echoes whole documents
        return
    assert not _has_surrogate(query) and not any(_has_surrogate(t) for t in frame["text"])  # never scored
    check_answer(frame, query, result, top_n)


def _has_surrogate(value: object) -> bool:
    return isinstance(value, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in value)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=TEXTS, texts=st.lists(TEXTS, min_size=1, max_size=8))
@example(query="q\ud800", texts=["abc"])
@example(query="a\x00b", texts=["x\x00y", "x\x00z"])
def test_the_service_answers_or_names_the_field(packaged_scorer, query, texts):
    """The front door every face uses: any text is ranked, or refused with the field named (never a 500)."""
    from service import InvalidInput, assembly
    from service.settings import Settings

    service = _SERVICES.setdefault("s", assembly.build(Settings(), scorer=packaged_scorer))
    try:
        ranking = service.rank(query, texts)
    except InvalidInput as exc:
        assert str(exc).startswith(("query", "documents")) and len(str(exc)) < 300
        bad_query = _has_surrogate(query) or not query.strip()
        assert bad_query or any(_has_surrogate(t) for t in texts)
        return
    assert not _has_surrogate(query) and not any(_has_surrogate(t) for t in texts)
    every = ranking.with_duplicates()
    assert sorted(r.index for r in every) == list(range(len(texts)))  # each input exactly once


_SERVICES: dict = {}


def test_ten_thousand_rows_of_duplicates(packaged_scorer):
    texts = [f"document number {i % 37}" for i in range(10_000)]
    frame = pd.DataFrame({"text": texts, "n": range(10_000)})
    result = rerank.rerank_table("document number 5", frame, scorer=packaged_scorer, max_documents=10_000)
    assert len(result.table) == 37 and len(result.duplicates) == 10_000 - 37
    check_answer(frame, "document number 5", result)
    assert result.table.index[0] == 5


def test_one_megabyte_strings(packaged_scorer):
    big = ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000]
    frame = pd.DataFrame({"text": [big, big + "x", "what is a lorem ipsum text?"], "k": [1, 2, 3]})
    for mode in ("truncate", "chunk"):
        result = rerank.rerank_table("lorem ipsum", frame, scorer=packaged_scorer, max_documents=10, long_documents=mode)
        check_answer(frame, "lorem ipsum", result)


@pytest.mark.parametrize("value", [None, float("nan"), 3, b"bytes", ["list"]])
def test_non_text_cells_name_their_rows(packaged_scorer, value):
    frame = pd.DataFrame({"text": ["fine", value, "also fine"]}, index=["a", "b", "c"])
    with pytest.raises(rerank.RerankError, match=r"rows 'b' hold"):
        rerank.rerank_table("q", frame, scorer=packaged_scorer, max_documents=10)
