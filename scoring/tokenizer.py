"""The checkpoint's own fast tokenizer (the ``tokenizers`` library, the Rust code transformers calls)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scoring.checkpoint import read_json
from scoring.errors import BackendError


class TextTokenizer:
    """The checkpoint's fast tokenizer, producing model inputs as numpy arrays.

    Not safe to share between threads (truncation and padding are settings of the object): each
    engine and each request-side counter holds its own :meth:`copy`.
    """

    def __init__(self, tokenizer, pad_token: str | None) -> None:
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
        self._pad = (pad_id if pad_id is not None else 0, pad_token or "[PAD]")

    @classmethod
    def from_dir(cls, model_dir: Path) -> TextTokenizer:
        """Read ``tokenizer.json`` (or convert a slow tokenizer once through transformers)."""
        from tokenizers import Tokenizer

        config = read_json(model_dir / "tokenizer_config.json")
        special = read_json(model_dir / "special_tokens_map.json")
        pad = config.get("pad_token") or special.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if (model_dir / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(model_dir / "tokenizer.json")), pad)
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if not getattr(hf, "is_fast", False):
            raise BackendError(f"{model_dir} has no fast tokenizer (tokenizer.json)")
        return cls(Tokenizer.from_str(hf.backend_tokenizer.to_str()), hf.pad_token)

    def copy(self) -> TextTokenizer:
        """An independent tokenizer with the same vocabulary and rules."""
        from tokenizers import Tokenizer

        return TextTokenizer(Tokenizer.from_str(self._tok.to_str()), self._pad[1])

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text, without special tokens and without truncation."""
        return [len(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character span of every token of each text (no special tokens, no truncation)."""
        return [e.offsets for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def batch(self, inputs: Sequence[str] | Sequence[tuple[str, str]], max_length: int) -> dict[str, np.ndarray]:
        """Model inputs for texts or (query, document) pairs: longest-first truncation, padded to the longest."""
        self._tok.enable_truncation(max_length, strategy="longest_first")
        self._tok.enable_padding(pad_id=self._pad[0], pad_token=self._pad[1])
        try:
            encodings = self._tok.encode_batch(list(inputs))
        finally:
            self._tok.no_truncation()
            self._tok.no_padding()
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
