"""The token cache: documents' ids by (tokenizer, text), bounded by tokens; a repeated document set plans as a fresh
one does, and requests planned side by side each get their own scores."""

from __future__ import annotations

import threading

import numpy as np

from scoring.cache import ENTRY_BYTES, TokenCache
from scoring.tokenizer import TextTokenizer, Tokens

ABSTRACTS = [f"Passage {n} about sloops, ketches and catboats: a single mast, {n} sails and a keel." for n in range(40)]
LONG = " ".join(["the sloop sails past the ketch while the catboat waits"] * 80)  # cut into windows


class Counting:
    """A tokenizer's encode that counts the texts it is handed."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer, self.texts = tokenizer, 0

    def __call__(self, texts: list[str]) -> list:
        self.texts += len(texts)
        return self.tokenizer.encode_plain(texts, spans=False)


def test_texts_seen_before_are_not_tokenized_again(tiny_scorer):
    tokenizer = tiny_scorer.pool.tokenizer.copy()
    encode, cache = Counting(tokenizer), TokenCache(100_000)
    first = cache.encode(tokenizer.fingerprint, ABSTRACTS[:10], encode)
    again = cache.encode(tokenizer.fingerprint, ABSTRACTS[5:15], encode)
    assert encode.texts == 15 and (cache.hits, cache.misses) == (5, 15)
    assert all(isinstance(t, Tokens) for t in again[:5])
    for a, b in zip(first[5:], again[:5], strict=True):
        np.testing.assert_array_equal(np.asarray(a.ids), b.ids)


def test_entries_are_keyed_by_tokenizer_and_text(tiny_scorer):
    tokenizer = tiny_scorer.pool.tokenizer.copy()
    encode, cache = Counting(tokenizer), TokenCache(100_000)
    cache.encode(tokenizer.fingerprint, ABSTRACTS[:3], encode)
    cache.encode("another vocabulary", ABSTRACTS[:3], encode)  # another tokenizer: its own entries
    cache.encode(tokenizer.fingerprint, [t + " " for t in ABSTRACTS[:3]], encode)  # other text: its own entries
    assert encode.texts == 9 and cache.hits == 0 and len(cache) == 9
    assert tokenizer.fingerprint == tokenizer.copy().fingerprint
    from tokenizers import Tokenizer

    from scoring.synthetic import word_tokenizer

    words = TextTokenizer(Tokenizer.from_str(word_tokenizer().backend_tokenizer.to_str()), "<|endoftext|>")
    assert words.fingerprint != tokenizer.fingerprint


def test_the_cache_holds_at_most_its_bytes_least_recently_used_first(tiny_scorer):
    tokenizer = tiny_scorer.pool.tokenizer.copy()
    size = 4 * len(tokenizer.encode_plain([ABSTRACTS[0]], spans=False)[0]) + ENTRY_BYTES  # an entry's ids and its cost
    cache = TokenCache(size * 3)
    encode = Counting(tokenizer)
    cache.encode(tokenizer.fingerprint, ABSTRACTS[:3], encode)
    cache.encode(tokenizer.fingerprint, ABSTRACTS[:1], encode)  # refreshes the first
    cache.encode(tokenizer.fingerprint, ABSTRACTS[3:4], encode)  # evicts the second, the least recently used
    assert cache.held() <= size * 3 and len(cache) == 3
    encode.texts = 0
    cache.encode(tokenizer.fingerprint, ABSTRACTS[:4], encode)
    assert encode.texts == 1  # only the evicted one again
    off = TokenCache(0)
    off.encode(tokenizer.fingerprint, ABSTRACTS[:2], encode)
    assert len(off) == 0 and off.held() == 0
    huge = TokenCache(ENTRY_BYTES + 5)
    huge.encode(tokenizer.fingerprint, ABSTRACTS[:1], encode)
    assert len(huge) == 0  # a text longer than the whole cache is not kept


def _plan_view(plan) -> tuple:
    return (list(plan.lengths), plan.owners.tolist(), [plan.name(i) for i in range(plan.windows)],
            [np.asarray(e.ids).tolist() for e in plan.encodings])


def test_a_repeated_document_set_plans_as_a_fresh_one(tiny_scorer):
    documents = ABSTRACTS[:20] + [LONG]
    pool = tiny_scorer.pool
    fresh = tiny_scorer.plan("which boat has one mast", documents)
    before = pool.tokens.hits
    again = tiny_scorer.plan("a new question about keels", documents)
    assert pool.tokens.hits - before == len(documents)
    reference = tiny_scorer.plan("a new question about keels", [d + "" for d in documents])
    assert _plan_view(again) == _plan_view(reference)
    assert again.windows > len(documents) == fresh.documents  # the long text is still cut into its windows


def test_requests_planned_side_by_side_each_get_their_own_scores(tiny_scorer):
    documents = ABSTRACTS[:30]
    queries = [f"question {n} about {w}" for n, w in enumerate(["masts", "keels", "sails", "hulls", "oars", "ropes"])]
    expected = {q: tiny_scorer.score(q, documents) for q in queries}
    tiny_scorer.cache.clear()  # scores computed again, from cached tokens, concurrently
    got: dict[str, np.ndarray] = {}

    def one(query: str) -> None:
        got[query] = tiny_scorer.score(query, list(reversed(documents)))[::-1]

    threads = [threading.Thread(target=one, args=(q,)) for q in queries * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for q in queries:
        np.testing.assert_allclose(got[q], expected[q], atol=1e-6)
