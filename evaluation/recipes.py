"""Choosing how to fine-tune from data: candidate recipes, each trained on part of the training queries and measured
on the rest (the validation queries), so that the held-out queries judge one model, once.

The base model, untrained, is measured on the same queries: where no recipe beats it there, fine-tuning has found no
gain to write, whatever one look at the held-out queries says.

A recipe is a learning rate, a number of epochs and how many mined negatives each relevant passage is trained
against (0: an embedding model learns from in-batch negatives only). The candidates are the options' own recipe, a
step 2.5 times larger, and fewer negatives: in-batch only for an embedding model, half as many for a cross-encoder
(which learns nothing without negatives).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

Trained = TypeVar("Trained")
CHOSEN_BY = "ndcg@10"


@dataclass(frozen=True)
class Recipe:
    """One way to train: its learning rate, epochs, and mined negatives per relevant passage."""

    learning_rate: float
    epochs: int = 1
    negatives: int = 4

    @property
    def name(self) -> str:
        negatives = f"{self.negatives} mined negatives" if self.negatives else "in-batch negatives only"
        return f"lr {self.learning_rate:g}, {self.epochs} epoch(s), {negatives}"


@dataclass(frozen=True)
class Tried:
    """A recipe trained and measured on the validation queries."""

    recipe: Recipe
    validation: dict[str, float]
    seconds: float

    def as_dict(self) -> dict:
        return {"recipe": self.recipe.name, "learning_rate": self.recipe.learning_rate, "epochs": self.recipe.epochs,
                "negatives": self.recipe.negatives, "validation": self.validation, "seconds": self.seconds}


def candidates(learning_rate: float, epochs: int, negatives: int, *, embedding: bool) -> tuple[Recipe, ...]:
    """The recipes compared (see the module docstring), without repeats."""
    own = Recipe(learning_rate, epochs, negatives)
    fewer = Recipe(learning_rate, epochs, 0 if embedding else max(1, negatives // 2))
    return tuple(dict.fromkeys((own, Recipe(learning_rate * 2.5, epochs, negatives), fewer)))


def choose(recipes: Sequence[Recipe], train: Callable[[int, Recipe], Trained],
           validate: Callable[[Trained], dict[str, float]]) -> tuple[int, list[Tried], list[Trained]]:
    """Train every recipe (``train(position, recipe)``) and measure it (``validate``); the position of the best by
    validation nDCG@10 (the first of equals), every recipe's figures, and what each training made."""
    if not recipes:
        raise ValueError("no recipe to choose from")
    tried, made = [], []
    for position, recipe in enumerate(recipes):
        started = time.perf_counter()
        made.append(train(position, recipe))
        tried.append(Tried(recipe, validate(made[-1]), time.perf_counter() - started))
    best = max(range(len(tried)), key=lambda k: (tried[k].validation[CHOSEN_BY], -k))
    return best, tried, made


def beats_base(best: Tried, base: dict[str, float]) -> bool:
    """Whether the chosen recipe's model is better than the base on the validation queries (strictly, by nDCG@10)."""
    return best.validation[CHOSEN_BY] > base[CHOSEN_BY]
