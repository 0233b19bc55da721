"""BM25 through bm25s: stemmed words, stop words, unknown words, and a faithful round trip through bytes."""

from __future__ import annotations

import numpy as np

from retrieval.lexical import LexicalIndex, tokenize

TEXTS = ["The sloop is a sailing boat with a single mast.",
         "Tomatoes need full sun and regular watering.",
         "Ketches are boats with two masts; the mizzen mast is shorter.",
         "Error code XK-47b means the pump has overheated."]


def test_terms_are_lowercased_stemmed_without_stop_words():
    assert tokenize(["The Boats are Sailing"]) == [["boat", "sail"]]


def test_scores_rank_by_words():
    index = LexicalIndex.build(TEXTS)
    scores = index.scores("masts of sailing boats")
    assert scores.shape == (4,) and scores.dtype == np.float32
    assert set(np.argsort(-scores)[:2].tolist()) == {0, 2} and scores[1] == 0
    assert int(np.argmax(index.scores("what does xk 47b mean"))) == 3  # a rare code words alone find


def test_a_query_of_unknown_or_stop_words_scores_zero():
    index = LexicalIndex.build(TEXTS)
    assert not index.scores("zeppelin quasar").any()
    assert not index.scores("the and of").any()


def test_round_trip_through_files_keeps_every_score():
    index = LexicalIndex.build(TEXTS)
    files = index.to_files()
    assert files and all(isinstance(v, bytes) for v in files.values())
    again = LexicalIndex.from_files(files, len(TEXTS))
    for query in ("boat mast", "watering tomatoes", "pump overheated"):
        np.testing.assert_array_equal(again.scores(query), index.scores(query))
    assert again.memory_bytes > 0
