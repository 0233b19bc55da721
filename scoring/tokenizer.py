"""The checkpoint's own fast tokenizer (the ``tokenizers`` library, the Rust code transformers calls)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scoring.checkpoint import read_json
from scoring.errors import BackendError

_WORD = re.compile(r"(?:^|[ \t\n\r])[^ \t\n\r\w]*\w")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def word_count(text: str) -> int:
    """Runs of non-blank characters holding a word character: a lower bound on a subword tokenizer's tokens (none
    merges across blanks, and a word character is never dropped). Printable ASCII, where every run is at least a
    token, is counted by ``str.split`` (4x faster than the regular expression the rest needs)."""
    if text.isascii() and _CONTROL.search(text) is None:
        return len(text.split())
    return len(_WORD.findall(text))


class Tokens:
    """A text's token ids as the token cache holds them: its length and ids, which is all a plan reads of a text that
    is not cut into windows (one that is cut is tokenized again, for its spans and overflow)."""

    __slots__ = ("ids",)

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        """What its ids take (the token cache charges it)."""
        return int(self.ids.nbytes)


class TextTokenizer:
    """The checkpoint's fast tokenizer, producing model inputs as numpy arrays.

    Not safe to share between threads (truncation and padding are settings of the object): each
    engine and each request-side counter holds its own :meth:`copy`.
    """

    def __init__(self, tokenizer, pad_token: str | None, *, pair_overhead: int | None = None,
                 fingerprint: str | None = None) -> None:
        self._tok = tokenizer
        self._fingerprint = fingerprint
        self._pair_overhead = pair_overhead
        self._words_hold: bool | None = None
        self._tok.no_truncation()
        self._tok.no_padding()
        pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
        self._pad = (pad_id if pad_id is not None else 0, pad_token or "[PAD]")

    @classmethod
    def from_dir(cls, model_dir: Path) -> TextTokenizer:
        """Read ``tokenizer.json`` (or convert a slow tokenizer once through transformers)."""
        from tokenizers import Tokenizer  # lazy: tokenizers loads only on this path

        config = read_json(model_dir / "tokenizer_config.json")
        special = read_json(model_dir / "special_tokens_map.json")
        pad = config.get("pad_token") or special.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if (model_dir / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(model_dir / "tokenizer.json")), pad)
        from transformers import AutoTokenizer  # lazy: transformers loads only on this path

        hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if not getattr(hf, "is_fast", False):
            raise BackendError(f"{model_dir} has no fast tokenizer (tokenizer.json)")
        return cls(Tokenizer.from_str(hf.backend_tokenizer.to_str()), hf.pad_token)

    def copy(self) -> TextTokenizer:
        """An independent tokenizer with the same vocabulary and rules."""
        from tokenizers import Tokenizer  # lazy: tokenizers loads only on this path

        return TextTokenizer(Tokenizer.from_str(self._tok.to_str()), self._pad[1], pair_overhead=self._pair_overhead,
                             fingerprint=self.fingerprint)

    @property
    def fingerprint(self) -> str:
        """A digest of the vocabulary and rules: what names this tokenizer's output in a cache."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.blake2b(self._tok.to_str().encode(), digest_size=16).hexdigest()
        return self._fingerprint

    def templated(self) -> bool:
        """Whether pairs are built by filling the checkpoint's template around a document's ids (then a document's
        ids are all a pair needs of it; else every pair goes through the tokenizer's post-processor)."""
        return self._pair_template(self._tok.encode("probe query", add_special_tokens=False)) is not None

    def encode_plain(self, texts: Sequence[str], *, spans: bool = True) -> list:
        """Each text's tokens (no special tokens, no truncation): one pass over a request, from which its lengths,
        windows and model inputs all come. ``spans=False`` leaves out the character spans (``offsets``), which only a
        text cut into windows needs: a fifth less work on 1,000 abstracts."""
        fast = getattr(self._tok, "encode_batch_fast", None)
        if spans or fast is None:
            return self._tok.encode_batch(list(texts), add_special_tokens=False)
        return fast(list(texts), add_special_tokens=False)

    def words_are_tokens(self) -> bool:
        """Whether every text here tokenizes into at least as many tokens as it has words (runs of word characters
        between blanks): true of WordPiece, byte-level BPE and SentencePiece, checked once on samples that try it."""
        if self._words_hold is None:
            samples = ["a b c", "don't stop, 42!", "naïve café déjà", "数据 科学 研究", "x\ty\nz\r w", "a\u200bb c",
                       "\u0301\u0301 é e\u0301", "___ __init__ a_b", "-- ... | ; ( ) ?! ~", "https://example.org/a?b=c d",
                       "🙂 🙂x x🙂"]
            self._words_hold = all(len(e) >= word_count(t) for t, e in zip(
                samples, self._tok.encode_batch(samples, add_special_tokens=False), strict=True))
        return self._words_hold

    def special_tokens(self, pair: bool) -> int:
        """How many tokens the checkpoint's template adds to one text or a pair (a chat template's, where it has one)."""
        if pair and self._pair_overhead is not None:
            return self._pair_overhead
        return self._tok.num_special_tokens_to_add(pair)

    def pair_batch(self, query, documents: Sequence, *, pad_to_multiple_of: int | None = None) -> dict[str, np.ndarray]:
        """Model inputs for (query, document) pairs from already tokenized parts: the checkpoint's own template,
        filled in bulk (nothing is tokenized again)."""
        return self.mixed_pair_batch([(query, d) for d in documents], pad_to_multiple_of=pad_to_multiple_of)

    def _templates(self, pairs: Sequence[tuple]) -> dict[int, tuple] | None:
        """Each distinct query's pair template (keyed by the query encoding's id), or None where one has none."""
        templates: dict[int, tuple | None] = {}
        for query, _ in pairs:
            if id(query) not in templates:
                templates[id(query)] = self._pair_template(query)
        return None if any(t is None for t in templates.values()) else templates

    def mixed_pair_batch(self, pairs: Sequence[tuple], *, pad_to_multiple_of: int | None = None) -> dict[str, np.ndarray]:
        """Model inputs for (query, document) pairs whose queries may differ (concurrent requests sharing a batch)."""
        templates = self._templates(pairs)
        if templates is None:
            return self._pair_batch_one_by_one(pairs, pad_to_multiple_of)
        rows = [(templates[id(q)], d.ids) for q, d in pairs]
        width = max(len(t[0]) + len(r) + len(t[3]) for t, r in rows)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((len(rows), width), self._pad[0], dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for r, ((head, head_types, doc_type, tail, tail_types), row) in enumerate(rows):
            h, n, t = len(head), len(row), len(tail)
            ids[r, :h], types[r, :h] = head, head_types
            ids[r, h:h + n], types[r, h:h + n] = row, doc_type
            ids[r, h + n:h + n + t], types[r, h + n:h + n + t] = tail, tail_types
            mask[r, :h + n + t] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def packed_pairs(self, pairs: Sequence[tuple]) -> dict[str, np.ndarray]:
        """Already tokenized (query, document) pairs as one packed batch: every pair's tokens end to end, no padding
        (see :func:`pack_flat`)."""
        templates = self._templates(pairs)
        if templates is None:
            merged = [self._tok.post_process(q, d, add_special_tokens=True) for q, d in pairs]
            return pack_rows([m.ids for m in merged], [m.type_ids for m in merged])
        parts = {key: tuple(np.asarray(part, dtype=np.int64) for part in template)
                 for key, template in templates.items()}  # each query's head and tail, as arrays once
        lengths = [len(parts[id(q)][0]) + len(d) + len(parts[id(q)][3]) for q, d in pairs]
        ids = np.empty(sum(lengths), dtype=np.int64)
        types = np.empty(sum(lengths), dtype=np.int64)
        at = 0
        for query, document in pairs:
            head, head_types, doc_type, tail, tail_types = parts[id(query)]
            middle, end = at + len(head), at + len(head) + len(document)
            ids[at:middle], types[at:middle] = head, head_types
            ids[middle:end], types[middle:end] = document.ids, doc_type
            ids[end:end + len(tail)], types[end:end + len(tail)] = tail, tail_types
            at = end + len(tail)
        return pack_flat(ids, types, lengths)

    def packed_texts(self, pairs: Sequence[tuple[str, str]], max_length: int) -> dict[str, np.ndarray]:
        """(query, document) texts as one packed batch, each pair truncated longest first to ``max_length``."""
        encodings = self._encode_cut(pairs, max_length)
        return pack_rows([e.ids for e in encodings], [e.type_ids for e in encodings])

    def _pair_template(self, query) -> tuple | None:
        """The checkpoint's pair template around a document (``head + document + tail``), read off two probes;
        None where the template is not of that shape (then every pair goes through the tokenizer's post-processor)."""
        one, two = (self._tok.encode(text, add_special_tokens=False) for text in ("probe", "probe probe"))
        a, b = (self._tok.post_process(query, d, add_special_tokens=True) for d in (one, two))
        for h in range(len(a.ids) - len(one.ids), -1, -1):
            if a.ids[h:h + len(one.ids)] == one.ids and a.ids[:h] == b.ids[:h]:
                break
        else:
            return None
        head, tail = a.ids[:h], a.ids[h + len(one.ids):]
        types = set(a.type_ids[h:h + len(one.ids)])
        if len(types) != 1 or b.ids != head + two.ids + tail or any(m != 1 for m in a.attention_mask):
            return None
        return head, a.type_ids[:h], types.pop(), tail, a.type_ids[h + len(one.ids):]

    def _pair_batch_one_by_one(self, pairs: Sequence[tuple], pad_to_multiple_of: int | None) -> dict[str, np.ndarray]:
        merged = [self._tok.post_process(q, d, add_special_tokens=True) for q, d in pairs]
        width = max(len(m.ids) for m in merged)
        if pad_to_multiple_of:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
        ids = np.full((len(merged), width), self._pad[0], dtype=np.int64)
        mask = np.zeros((len(merged), width), dtype=np.int64)
        types = np.zeros((len(merged), width), dtype=np.int64)
        for row, m in enumerate(merged):
            n = len(m.ids)
            ids[row, :n], mask[row, :n], types[row, :n] = m.ids, m.attention_mask, m.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def _encode_cut(self, inputs: Sequence, max_length: int, *, pad: bool = False,
                    pad_to_multiple_of: int | None = None) -> list:
        """Texts or pairs with the template's special tokens, truncated longest first (and padded, with ``pad``); the
        settings hold for this call only."""
        self._tok.enable_truncation(max_length, strategy="longest_first")
        if pad:
            self._tok.enable_padding(pad_id=self._pad[0], pad_token=self._pad[1], pad_to_multiple_of=pad_to_multiple_of)
        try:
            return self._tok.encode_batch(list(inputs))
        finally:
            self._tok.no_truncation()
            self._tok.no_padding()

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text, without special tokens and without truncation."""
        return [len(e) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def batch(self, inputs: Sequence[str] | Sequence[tuple[str, str]], max_length: int, *,
              pad_to_multiple_of: int | None = None) -> dict[str, np.ndarray]:
        """Model inputs for texts or (query, document) pairs: longest-first truncation, padded to the longest
        (``pad_to_multiple_of``: rounded up, so a GPU sees fewer distinct shapes and aligned sizes)."""
        encodings = self._encode_cut(inputs, max_length, pad=True, pad_to_multiple_of=pad_to_multiple_of)
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


def pack_rows(rows: Sequence[Sequence[int]], types: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Token rows laid end to end (see :func:`pack_flat`)."""
    return pack_flat([i for r in rows for i in r], [t for r in types for t in r], [len(r) for r in rows])


def pack_flat(ids: Sequence[int], types: Sequence[int], lengths: Sequence[int]) -> dict[str, np.ndarray]:
    """A packed batch: token ids, token types and positions (each counted from its pair's start) of every pair end
    to end, where each pair starts (int32, the batch's end last, as variable-length attention takes them) and the
    longest pair."""
    sizes = np.asarray(lengths, dtype=np.int64)
    starts = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=starts[1:])
    positions = np.arange(int(starts[-1]), dtype=np.int64) - np.repeat(starts[:-1].astype(np.int64), sizes)
    return {"input_ids": np.asarray(ids, dtype=np.int64), "token_type_ids": np.asarray(types, dtype=np.int64),
            "position_ids": positions, "starts": starts, "longest": np.int64(sizes.max() if len(sizes) else 0)}


def merge_packed(batches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Packed batches laid end to end as one (each batch's pairs in order): how batches filled on request threads
    share one pass without their pairs being filled again."""
    if len(batches) == 1:
        return batches[0]
    merged = {k: np.concatenate([b[k] for b in batches]) for k in ("input_ids", "token_type_ids", "position_ids")}
    ends = np.cumsum([0] + [int(b["starts"][-1]) for b in batches[:-1]])
    merged["starts"] = np.concatenate([batches[0]["starts"][:1]] + [b["starts"][1:] + end for b, end in
                                                                     zip(batches, ends, strict=True)]).astype(np.int32)
    merged["longest"] = np.int64(max(int(b["longest"]) for b in batches))
    return merged
