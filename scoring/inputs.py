"""What a ranking request may hold, checked before any work: the query, the instruction, the documents, ``top_n`` and
``min_score``, each refused with a message naming the field and the limit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scoring.checkpoint import ModelInfo
from scoring.errors import LimitExceeded, RerankError
from scoring.media import ImageDocument, ImageLimits, from_pil, is_image, is_pil


def unicode_problem(text: str) -> str | None:
    """Why a string is not valid Unicode text (a lone surrogate cannot be encoded or tokenized), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}; send valid Unicode text"
    return None


MAX_QUERY_CHARS = 32_768  # a query is read with every document: far past any model's window, it is refused


def validate_query(query: object) -> str:
    """The query as text, or a :class:`RerankError` naming the problem."""
    if not isinstance(query, str):
        raise RerankError(f"query must be text, got {type(query).__name__}")
    if not query.strip():
        raise RerankError("query is empty: type a question to rank the documents against")
    if len(query) > MAX_QUERY_CHARS:
        raise LimitExceeded(f"query has {len(query):,} characters; the limit is {MAX_QUERY_CHARS:,}")
    problem = unicode_problem(query)
    if problem:
        raise RerankError(f"query {problem}")
    return query


MAX_INSTRUCTION_CHARS = 2000


def validate_instruction(instruction: object) -> str | None:
    """A task instruction as text (None or blank: none), or an error naming the field and the limit."""
    if instruction is None:
        return None
    if not isinstance(instruction, str):
        raise RerankError(f"instruction must be text, got {type(instruction).__name__}")
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise LimitExceeded(f"instruction has {len(instruction):,} characters; the limit is {MAX_INSTRUCTION_CHARS:,}")
    problem = unicode_problem(instruction)
    if problem:
        raise RerankError(f"instruction {problem}")
    return instruction.strip() or None


@dataclass(frozen=True)
class InstructionUse:
    """What became of a request's task instruction: given to the model, or ignored (and why)."""

    text: str
    applied: bool
    note: str

    def as_dict(self) -> dict:
        """The response metadata's form."""
        return {"text": self.text, "applied": self.applied, "note": self.note}


def instruction_use(info: ModelInfo, instruction: str | None) -> InstructionUse | None:
    """Whether ``instruction`` reaches the model ``info`` describes (None when there is none)."""
    if instruction is None:
        return None
    if info.takes_instruction:
        return InstructionUse(instruction, True, f"given to {info.name} as its task instruction")
    return InstructionUse(instruction, False, f"ignored: {info.name} ({info.kind}) takes no instruction")


def validate_texts(texts: Sequence[object], *, field: str = "documents", max_documents: int | None = None) -> list[str]:
    """The documents as a list of valid text, or a :class:`RerankError` naming the first bad ones by position."""
    texts = list(texts)
    if not texts:
        raise RerankError(f"{field} is empty: send at least one document")
    if max_documents is not None and len(texts) > max_documents:
        raise LimitExceeded(f"{field} has {len(texts)} entries; the limit is {max_documents} (RERANK_MAX_DOCUMENTS)")
    wrong = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if wrong:
        kinds = sorted({type(texts[i]).__name__ if texts[i] is not None else "None" for i in wrong})
        raise RerankError(f"{field} must be text in every entry; {_positions(field, wrong)} hold {', '.join(kinds)}")
    for i, text in enumerate(texts):
        problem = unicode_problem(text)
        if problem:
            raise RerankError(f"{field}[{i}] {problem}")
    return texts  # type: ignore[return-value]


def has_images(documents: Sequence[object]) -> bool:
    """Whether any document is an image (an :class:`ImageDocument` or a PIL image)."""
    return any(is_image(d) for d in documents)


def validate_media(documents: Sequence[object], info: ModelInfo, *, field: str = "documents",
                   max_documents: int | None = None, limits: ImageLimits = ImageLimits()) -> list[str | ImageDocument]:
    """Documents of which some are images, checked: the model must read images (else the refusal names it and the
    first image's field); PIL images are encoded and bounded by ``limits``; the texts are checked as texts."""
    documents = list(documents)
    if max_documents is not None and len(documents) > max_documents:
        raise LimitExceeded(f"{field} has {len(documents)} entries; the limit is {max_documents} (RERANK_MAX_DOCUMENTS)")
    if not info.images:
        first = next(i for i, d in enumerate(documents) if is_image(d))
        raise RerankError(f"{field}[{first}] is an image, and {info.name} ranks text only: image documents need a model "
                          "that reads images (a multimodal reranker)")
    out: list[str | ImageDocument] = []
    for i, document in enumerate(documents):
        if is_pil(document):
            document = from_pil(document, field=f"{field}[{i}]", limits=limits)
        if not isinstance(document, ImageDocument):
            validate_texts([document], field=f"{field}[{i}]")
        out.append(document)
    return out


def _positions(field: str, positions: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(f"{field}[{p}]" for p in positions[:limit])
    return shown + (f" and {len(positions) - limit} more" if len(positions) > limit else "")


def validate_top_n(top_n: object) -> int | None:
    """``top_n`` as a positive int, or None."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 1):
        raise RerankError(f"top_n must be a positive integer or None, got {top_n!r}")
    return None if top_n is None else int(top_n)


def validate_min_score(min_score: object) -> float | None:
    """``min_score`` as a finite number, or None (no threshold)."""
    if min_score is None:
        return None
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float, np.integer, np.floating)) \
            or not np.isfinite(min_score):
        raise RerankError(f"min_score must be a finite number or None, got {min_score!r}")
    return float(min_score)


@dataclass(frozen=True)
class Threshold:
    """What a request's ``min_score`` dropped: documents whose score fell below it (duplicates counted as the rows they
    are), before ``top_n`` kept the best of the rest."""

    min_score: float
    dropped: int

    def as_dict(self) -> dict:
        """The response metadata's form."""
        return {"min_score": self.min_score, "dropped": self.dropped}


def duplicate_positions(texts: Sequence[str]) -> list[int]:
    """Positions of texts that repeat an earlier text exactly (the first occurrence is kept)."""
    seen: set[str] = set()
    dropped = []
    for i, text in enumerate(texts):
        if text in seen:
            dropped.append(i)
        else:
            seen.add(text)
    return dropped
