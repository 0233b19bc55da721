"""Planning a request: every text tokenized once, cut into windows, its cost known, all before any forward pass.

A request over its cost budget is refused as soon as that is certain: words bound tokens from below before anything
is tokenized, then texts are tokenized in slices until the bound says it is over. A large request's slices are tasks
in the worker pool, so its tokenizing takes turns with other requests' forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np

from scoring.checkpoint import ModelInfo
from scoring.errors import LimitExceeded, RerankError
from scoring.media import PIXELS_PER_TOKEN, ImageDocument, identity
from scoring.pool import Ticket, WorkerPool
from scoring.tokenizer import Tokens, word_count

LongDocuments = Literal["truncate", "chunk"]


@dataclass(frozen=True)
class Plan:
    """What scoring a request computes: the pieces of text (windows), which document each belongs to, their tokens."""

    query: str
    units: Sequence  # each window's text (or an image document, where the model reads images)
    owners: np.ndarray
    lengths: list[int]
    documents: int
    query_encoding: object | None = None  # cross-encoders: the query's tokens ...
    encodings: list | None = None  # ... and each unit's, from which the pair inputs are built without tokenizing again
    instruction: str | None = None  # a task instruction the model takes (causal-LM rerankers)
    names: list[str] | None = None  # what identifies each window's tokens (its cache key), where not its text

    def name(self, i: int) -> str:
        """What identifies window ``i``'s tokens: its text, or the text and how it was cut."""
        return self.names[i] if self.names is not None else self.units[i]

    @property
    def cost(self) -> int:
        """Tokens the model reads for this request (every window, special tokens and query included)."""
        return int(sum(self.lengths))

    @property
    def windows(self) -> int:
        """Forward-pass inputs: one per document, more for documents scored by several windows."""
        return len(self.units)


class Planner:
    """Plans requests for one model: its tokenizers (through the pool) and its window."""

    def __init__(self, pool: WorkerPool, info: ModelInfo) -> None:
        self._pool, self.info = pool, info

    def plan(self, query: str, texts: Sequence[str], *, long_documents: LongDocuments = "chunk",
             max_tokens_per_doc: int | None = None, truncate_left: bool = False, instruction: str | None = None,
             budget: int | None = None, ticket: Ticket | None = None) -> Plan:
        """The windows to score for each text and their token lengths (``max_tokens_per_doc`` cuts each text first).

        Every text is tokenized once, here: its length, its windows and (for a cross-encoder) the model
        inputs of each (query, window) pair all come from that one pass. A request that costs more than
        ``budget`` tokens is refused as soon as that is certain (see :meth:`_encode_within`); with a
        ``ticket``, a large request tokenizes in slices that take turns with other requests' batches.
        """
        if long_documents not in ("truncate", "chunk"):
            raise RerankError(f"long_documents must be 'truncate' or 'chunk', got {long_documents!r}")
        if max_tokens_per_doc is not None and (isinstance(max_tokens_per_doc, bool) or
                                               not isinstance(max_tokens_per_doc, int) or max_tokens_per_doc < 1):
            raise RerankError(f"max_tokens_per_doc must be a positive integer, got {max_tokens_per_doc!r}")
        texts = list(texts)
        cross = self.info.mode == "cross-encoder"
        specials = self._pool.tokenizer.special_tokens(pair=cross)
        told = [instruction] if instruction and cross else []  # read with every pair: window room and cost, as the query
        head = self._pool.encode([*told, query], spans=False) if cross else []
        instruction_tokens = len(head.pop(0)) if told else 0
        query_encoding = head.pop(0) if cross else None
        query_tokens = len(query_encoding) + instruction_tokens if cross else 0
        window = max(32 if cross else 8, self.info.max_length - min(query_tokens, self.info.max_length // 2) - specials)
        fits = cross and query_tokens + window + specials <= self.info.max_length  # else: the tokenizer truncates
        cutting = {"window": window, "chunk": long_documents == "chunk", "max_tokens": max_tokens_per_doc,
                   "from_end": truncate_left}
        floor = partial(self._cost_floor, cutting=cutting, room=query_tokens + specials)
        encoded = self._encode_within(texts, floor, budget, ticket)
        # a text cut into windows is tokenized again: for its spans (windows scored from their text), or because the
        # token cache holds only its ids
        limit = min(window, max_tokens_per_doc or window)
        cut = [i for i, e in enumerate(encoded) if len(e) > limit and (not fits or isinstance(e, Tokens))]
        for start, stop, again in self._encode_slices([texts[i] for i in cut], ticket, spans=not fits):
            for i, encoding in zip(cut[start:stop], again, strict=True):
                encoded[i] = encoding
        owners: list[int] = []
        pieces: list = []
        places: list[tuple[int, int | None]] = []  # (text, window number where the window is a cut of it)
        for i, encoding in enumerate(encoded):
            whole = len(encoding)
            for n, piece in enumerate(_windows(encoding, **cutting)):
                owners.append(i)
                pieces.append(piece)
                places.append((i, n if len(piece) not in (0, whole) else None))
        lengths = [min(self.info.max_length, query_tokens + len(p) + specials) for p in pieces]  # len(): no id list built
        if not fits:
            units = [texts[i] if n is None else _spelled(texts[i], p) for (i, n), p in zip(places, pieces, strict=True)]
            return Plan(query, units, np.asarray(owners, dtype=np.int64), lengths, len(texts), instruction=instruction)
        label = " ".join(f"{k}={v}" for k, v in cutting.items())
        names = [texts[i] if n is None else f"{texts[i]}\x00{label} {n}" for i, n in places]
        return Plan(query, Windows(texts, places, lambda i: self._window_texts(texts[i], cutting)),
                    np.asarray(owners, dtype=np.int64), lengths, len(texts), query_encoding, pieces, instruction, names)

    def plan_media(self, query: str, documents: Sequence[str | ImageDocument], *, instruction: str | None = None,
                   budget: int | None = None) -> Plan:
        """A request with image documents: each document one unit, read whole by the model's processor (a text up to
        the model's length, an image as its patches), its cost an image's pixels counted as tokens
        (:attr:`ImageDocument.cost`) plus the query's; over ``budget`` it is refused before any text is tokenized."""
        documents = list(documents)
        told = [instruction] if instruction else []
        head = self._pool.encode([*told, query], spans=False)
        room = sum(len(e) for e in head) + self._pool.tokenizer.special_tokens(pair=True)
        images = sum(room + d.cost for d in documents if isinstance(d, ImageDocument))
        if budget is not None and images > budget:
            raise LimitExceeded(f"the request needs at least {images:,} tokens for its images (a token for every "
                                f"{PIXELS_PER_TOKEN} pixels, with the query); the limit is {budget:,} "
                                "(RERANK_MAX_REQUEST_TOKENS)")
        texts = [d for d in documents if isinstance(d, str)]
        read = iter(len(e) for e in (self._pool.encode(texts, spans=False) if texts else []))
        lengths = [room + d.cost if isinstance(d, ImageDocument) else min(self.info.max_length, room + next(read))
                   for d in documents]
        names = [identity(d) for d in documents]
        return Plan(query, documents, np.arange(len(documents), dtype=np.int64), lengths, len(documents),
                    instruction=instruction, names=names)

    def _cost_floor(self, tokens: int, *, cutting: dict, room: int) -> int:
        """The fewest tokens the model reads for a text of ``tokens`` tokens, cut as ``cutting`` says (``room``: the
        query's and the template's tokens, read with every window)."""
        if cutting["max_tokens"]:
            tokens = min(tokens, cutting["max_tokens"])
        window, longest = cutting["window"], self.info.max_length
        one = min(longest, room + min(tokens, window))
        if not cutting["chunk"] or tokens <= window:
            return one
        return max(one, tokens if longest >= window else -(-tokens // window) * longest)  # the windows cover every token

    def _encode_within(self, texts: list[str], floor: Callable[[int], int], budget: int | None,
                       ticket: Ticket | None) -> list:
        """Every text's tokens, or :class:`LimitExceeded` as soon as the request is certainly over ``budget``.

        Cheap bounds first: a text's words (runs of word characters between whitespace) are tokens no tokenizer
        here merges, so refusing a body far over the budget reads its characters once and tokenizes nothing.
        Then texts are tokenized in slices, each slice's exact cost added to the rest's bound, stopping once over.
        With a ``ticket``, each slice of a large request is a task in the worker pool: a request's tokenizing
        then takes turns with other requests' forward passes instead of holding the cores.
        """
        floors = self._word_floors(texts, floor, budget) if budget is not None else None
        encoded: list = []
        known, rest = 0, sum(floors) if floors else 0
        for start, stop, part in self._encode_slices(texts, ticket, spans=False, cached=True):
            encoded.extend(part)
            if floors is not None:
                known += sum(floor(len(e)) for e in encoded[start:stop])
                rest -= sum(floors[start:stop])
                if known + rest > budget:
                    raise LimitExceeded(f"the request needs at least {known + rest:,} tokens ({stop:,} of {len(texts):,} "
                                        f"documents tokenized, the rest counted by their words); the limit is "
                                        f"{budget:,} (RERANK_MAX_REQUEST_TOKENS)")
        return encoded

    def _encode_slices(self, texts: list[str], ticket: Ticket | None, *, spans: bool,
                       cached: bool = False) -> Iterator[tuple[int, int, list]]:
        """Texts tokenized a slice at a time, as (start, stop, encodings); with a ``ticket`` and more than one slice,
        each slice is a pool task under it, so a large request's tokenizing takes turns with other requests
        (``cached``: through the token cache)."""
        slices = _slices(texts, SLICE_CHARS)
        pooled = ticket is not None and len(slices) > 1
        for start, stop in slices:
            part = texts[start:stop]
            if not pooled:
                yield start, stop, self._pool.encode(part, spans=spans, cached=cached)
                continue
            cost = sum(len(t) for t in part) // 4  # about a token per four characters, for fair turns
            task = lambda _replica, p=part: self._pool.encode(p, spans=spans, cached=cached)  # noqa: E731
            yield start, stop, self._pool.run(ticket, [(cost, task)])[0]

    def _word_floors(self, texts: list[str], floor: Callable[[int], int], budget: int) -> list[int]:
        """Each text's least cost from its word count; :class:`LimitExceeded` once their sum is over ``budget``."""
        counts = word_count if self._pool.tokenizer.words_are_tokens() else (lambda _text: 0)
        floors, total = [], 0
        for n, text in enumerate(texts, 1):
            floors.append(floor(counts(text)))
            total += floors[-1]
            if total > budget:
                raise LimitExceeded(f"the request needs at least {total:,} tokens (counted from the words of its first "
                                    f"{n:,} of {len(texts):,} documents); the limit is {budget:,} "
                                    "(RERANK_MAX_REQUEST_TOKENS)")
        return floors

    def _window_texts(self, text: str, cutting: dict) -> list[str]:
        """The texts of the windows a text is cut into (tokenized again, with character spans)."""
        encoding = self._pool.encode([text])[0]
        return [_spelled(text, p) if len(p) else text for p in _windows(encoding, **cutting)]


class Windows(Sequence[str]):
    """A plan's window texts, made when first read: a window scored from its tokens is named by its text and how
    it was cut, so serving never tokenizes a long text a second time just to spell out its windows."""

    def __init__(self, texts: list[str], places: list[tuple[int, int | None]], cut: Callable[[int], list[str]]) -> None:
        self._texts, self._places, self._cut, self._made = texts, places, cut, {}

    def __len__(self) -> int:
        return len(self._places)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        text, n = self._places[index]
        if n is None:
            return self._texts[text]
        if text not in self._made:
            self._made[text] = self._cut(text)
        return self._made[text][n]


SLICE_CHARS = 65_536  # a slice of a request tokenizes in ~10-30 ms on one core: the longest another request waits

def _slices(texts: Sequence[str], chars: int) -> list[tuple[int, int]]:
    """Consecutive ranges of texts of about ``chars`` characters each (a longer text is a slice of its own)."""
    out, start, size = [], 0, 0
    for i, text in enumerate(texts):
        if size and size + len(text) > chars:
            out.append((start, i))
            start, size = i, 0
        size += len(text)
    if start < len(texts) or not out:
        out.append((start, len(texts)))
    return out


def _spelled(text: str, piece) -> str:
    """A window's text, from the character spans of its tokens."""
    return text[piece.offsets[0][0]:piece.offsets[-1][1]]


def _windows(encoding, window: int, *, chunk: bool, max_tokens: int | None, from_end: bool) -> list:
    """A text's tokens cut for scoring: whole where they fit the window; else one window (its start, or its end)
    or overlapping windows every 3/4 of a window (the best one scores the text)."""
    if max_tokens and len(encoding) > max_tokens:
        encoding.truncate(max_tokens)
    if len(encoding) <= window:
        return [encoding]
    if not chunk:
        encoding.truncate(window, direction="left" if from_end else "right")
        return [encoding]
    encoding.truncate(window, stride=window - max(1, window * 3 // 4))
    return [encoding, *encoding.overflowing]
