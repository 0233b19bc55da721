"""Choosing a fine-tuning recipe on validation queries: every candidate is trained and measured, the best one is kept,
and a recipe worse on validation is never the one the held-out queries judge."""

from __future__ import annotations

import pytest

from evaluation.recipes import Recipe, Tried, beats_base, candidates, choose


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


def test_a_recipe_no_better_than_the_base_on_validation_finds_no_gain():
    best = Tried(Recipe(2e-5), {"ndcg@10": 0.7425, "mrr@10": 0.9}, 10.0)
    assert not beats_base(best, {"ndcg@10": 0.7561, "mrr@10": 0.8})  # dense judgments: every recipe below the base
    assert not beats_base(best, {"ndcg@10": 0.7425, "mrr@10": 0.8})  # a tie is no gain
    assert beats_base(best, {"ndcg@10": 0.7400, "mrr@10": 0.95})  # judged by nDCG@10, not the MRR it loses on


def test_the_model_is_written_only_where_validation_and_the_held_out_queries_both_find_a_gain(capsys):
    from evaluation.fine_tune import print_fine_tune, writes

    lost = {"chosen": "lr 2e-05, 1 epoch(s), in-batch negatives only", "beats_base": False, "base": {"ndcg@10": 0.7561},
            "candidates": [{"recipe": "lr 2e-05, 1 epoch(s), in-batch negatives only", "validation": {"ndcg@10": 0.7425},
                            "seconds": 174.0}]}
    assert not writes(0.0004, lost) and writes(0.0004, lost, keep_worse=True)
    assert writes(0.0065, {**lost, "beats_base": True}) and not writes(-0.001, {**lost, "beats_base": True})
    assert writes(0.002, None) and not writes(0.0, None)  # one recipe, no validation: the held-out queries alone
    pair = {"base": {"ndcg@10": 0.6805}, "fine_tuned": {"ndcg@10": 0.6809}}
    print_fine_tune({"dataset": "trec", "base": "m", "mode": "embedding", "training_rows": 793, "epochs": 1,
                     "seconds_per_epoch": 1422.0, "queries": {"train": 16, "validation": 5, "held_out": 22},
                     "recipes": lost, "reranking": pair, "written": None, "gain": 0.0004,
                     "judged_on": "end-to-end hybrid + rerank nDCG@10"})
    out = capsys.readouterr().out
    assert "no recipe beat the base on the 5 validation queries (best 0.7425, base 0.7561)" in out and "+0.0004" in out
