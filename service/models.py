"""The configured models by name: a request's ``model`` picks among them, never loads anything new."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scoring.scorer import Scorer


class Models:
    """The configured scorers by name; a request's unknown model name gets the default (clients send their own)."""

    def __init__(self, default: Scorer, others: Sequence[Scorer] = ()) -> None:
        self.default = default
        self.all = [default, *others]
        self.by_name: dict[str, Scorer] = {}
        for scorer in self.all:
            for name in {scorer.info.requested, scorer.info.name, Path(scorer.info.requested.rstrip("/")).name}:
                self.by_name.setdefault(name, scorer)

    def pick(self, requested: str | None) -> Scorer:
        """The scorer configured under that name, else the default."""
        return self.by_name.get(requested or "", self.default)

    @property
    def names(self) -> list[str]:
        """The names a request may use, as clients see them (no filesystem paths)."""
        return sorted(n for n in self.by_name if "/" not in n or not Path(n).is_absolute())
