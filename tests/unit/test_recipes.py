"""Choosing a fine-tuning recipe on validation queries: every candidate is trained and measured, the best one is kept,
and a recipe worse on validation is never the one the held-out queries judge."""

from __future__ import annotations

import pytest

from evaluation.recipes import Recipe, candidates, choose


def test_the_candidates_vary_the_step_and_the_negatives_without_repeats():
    embedding = candidates(2e-5, 1, 4, embedding=True)
    assert embedding == (Recipe(2e-5, 1, 4), Recipe(5e-5, 1, 4), Recipe(2e-5, 1, 0))
    assert embedding[2].name == "lr 2e-05, 1 epoch(s), in-batch negatives only"
    assert candidates(2e-5, 2, 4, embedding=False)[2] == Recipe(2e-5, 2, 2)  # a cross-encoder needs negatives
    assert candidates(2e-5, 1, 1, embedding=False) == (Recipe(2e-5, 1, 1), Recipe(5e-5, 1, 1))  # half of 1 is 1


def test_the_best_on_validation_is_chosen_and_a_worse_one_never_is():
    trained: list[tuple[int, Recipe]] = []
    figures = {1e-5: 0.41, 3e-5: 0.47, 9e-5: 0.30}

    def train(position: int, recipe: Recipe) -> str:
        trained.append((position, recipe))
        return f"model-{position}"

    def validate(model: str) -> dict[str, float]:
        recipe = trained[int(model.split("-")[1])][1]
        return {"ndcg@10": figures[recipe.learning_rate], "mrr@10": 1.0 - figures[recipe.learning_rate]}

    recipes = [Recipe(lr) for lr in figures]
    best, tried, made = choose(recipes, train, validate)
    assert [p for p, _ in trained] == [0, 1, 2] and made == ["model-0", "model-1", "model-2"]
    assert best == 1 and tried[best].recipe == Recipe(3e-5)  # chosen by nDCG@10, not by the MRR it loses on
    assert [t.validation["ndcg@10"] for t in tried] == [0.41, 0.47, 0.30]
    assert tried[0].as_dict()["recipe"] == "lr 1e-05, 1 epoch(s), 4 mined negatives" and tried[0].seconds >= 0


def test_equal_figures_keep_the_first_recipe_and_no_recipe_is_refused():
    best, _, _ = choose([Recipe(1e-5), Recipe(2e-5)], lambda p, r: p, lambda p: {"ndcg@10": 0.5})
    assert best == 0
    with pytest.raises(ValueError, match="no recipe to choose from"):
        choose([], lambda p, r: p, lambda p: {"ndcg@10": 0.5})
