"""Score caches: keys never collide across parts (NUL included) and never across engines."""

from __future__ import annotations

import tracemalloc

import numpy as np

from scoring.cache import ENTRY_BYTES, ScoreCache, TokenCache, cache_key
from scoring.tokenizer import Tokens


def test_keys_are_unambiguous_whatever_the_text_holds():
    assert cache_key("torch", "q\x00a", "b") != cache_key("torch", "q", "a\x00b")  # the old f"{q}\x00{t}" collided
    assert cache_key("torch", "ab", "c") != cache_key("torch", "a", "bc")
    assert cache_key("torch", "q", "t") != cache_key("onnxruntime", "q", "t")  # engines never share entries
    assert cache_key("torch", "\ud800") != cache_key("torch", "\udfff")  # even unencodable text has a key
    assert len(cache_key("x" * 100_000)) == 16


def test_bounded_lru_with_counters():
    cache = ScoreCache(2 * (4 + ENTRY_BYTES))  # two scalar scores
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


def _traced_bytes_per_entry(fill) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        n = fill()
        return (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()


def test_a_cache_bound_in_bytes_bounds_what_it_really_holds():
    rng = np.random.default_rng(0)
    vectors = ScoreCache(64 * 1024 * 1024)
    scores = ScoreCache(64 * 1024 * 1024)
    vector = lambda: rng.standard_normal(384).astype(np.float32)  # noqa: E731

    def fill(cache, make) -> int:
        cache.put_many({cache_key("engine", f"text {i}"): make() for i in range(5000)})
        return 5000

    per_vector = _traced_bytes_per_entry(lambda: fill(vectors, vector))
    per_score = _traced_bytes_per_entry(lambda: fill(scores, lambda: np.float32(rng.random())))
    assert 384 * 4 < per_vector <= 384 * 4 + ENTRY_BYTES and 4 < per_score <= 4 + ENTRY_BYTES
    assert vectors.held() == 5000 * (384 * 4 + ENTRY_BYTES)  # what it charges is at least what it holds
    tokens = TokenCache(64 * 1024 * 1024)
    ids = {f"passage {i}": Tokens(list(range(60))) for i in range(5000)}  # as a tokenizer gives them: a list
    per_text = _traced_bytes_per_entry(lambda: len(tokens.encode("tok", list(ids), lambda rest: [ids[t] for t in rest])))
    assert 60 * 4 < per_text <= 60 * 4 + ENTRY_BYTES
    small = ScoreCache(100 * (384 * 4 + ENTRY_BYTES))
    fill(small, vector)
    assert len(small) == 100 and small.held() <= small.capacity  # the bound holds whatever is put in
