"""Score caches: keys never collide across parts (NUL included) and never across engines."""

from __future__ import annotations

import numpy as np

from scoring.cache import ScoreCache, cache_key


def test_keys_are_unambiguous_whatever_the_text_holds():
    assert cache_key("torch", "q\x00a", "b") != cache_key("torch", "q", "a\x00b")  # the old f"{q}\x00{t}" collided
    assert cache_key("torch", "ab", "c") != cache_key("torch", "a", "bc")
    assert cache_key("torch", "q", "t") != cache_key("onnxruntime", "q", "t")  # engines never share entries
    assert cache_key("torch", "\ud800") != cache_key("torch", "\udfff")  # even unencodable text has a key
    assert len(cache_key("x" * 100_000)) == 16


def test_bounded_lru_with_counters():
    cache = ScoreCache(2)
    cache.put_many({b"a": np.float32(1), b"b": np.float32(2)})
    assert cache.get_many([b"a"]) == {b"a": np.float32(1)}  # refreshes a
    cache.put_many({b"c": np.float32(3)})  # evicts b, the least recently used
    assert set(cache.get_many([b"a", b"b", b"c"])) == {b"a", b"c"}
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    off = ScoreCache(0)
    off.put_many({b"a": np.float32(1)})
    assert off.get_many([b"a"]) == {} and len(off) == 0


def test_a_swapped_engine_does_not_reuse_the_old_engines_scores(tiny_scorer):
    texts = ["engine keyed one", "engine keyed two"]
    tiny_scorer.score("which engine?", texts)
    hits = tiny_scorer.cache.hits
    tiny_scorer.score("which engine?", texts)
    assert tiny_scorer.cache.hits == hits + 2
    real = tiny_scorer.pool.choice
    try:
        tiny_scorer.pool.choice = type(real)("onnxruntime", "pretend a swap happened")
        misses = tiny_scorer.cache.misses
        tiny_scorer.score("which engine?", texts)
        assert tiny_scorer.cache.misses == misses + 2  # computed afresh under the new engine's name
    finally:
        tiny_scorer.pool.choice = real
