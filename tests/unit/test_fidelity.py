"""The fidelity gate's measures: nDCG@10 with fp32's scores as gains, top-10 agreement, and the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from scoring import fidelity, probe


def test_the_same_order_scores_one_and_a_reversed_top_scores_less():
    reference = np.linspace(10.0, 0.0, 20)
    assert fidelity.ndcg_against(reference * 3 + 1, reference) == pytest.approx(1.0)  # any monotone map keeps the order
    assert fidelity.top_agreement(reference * 3 + 1, reference) == 1.0
    swapped_tail = reference.copy()
    swapped_tail[[15, 16]] = swapped_tail[[16, 15]]
    assert fidelity.ndcg_against(swapped_tail, reference) == pytest.approx(1.0)  # below the top 10: unseen
    reversed_top = reference.copy()
    reversed_top[:10] = reversed_top[:10][::-1]
    assert fidelity.ndcg_against(reversed_top, reference) < 0.95
    assert fidelity.top_agreement(reversed_top, reference) == 1.0  # the same ten, in another order
    lost_best = reference.copy()
    lost_best[0] = -1.0
    assert fidelity.top_agreement(lost_best, reference) == 0.9 and fidelity.ndcg_against(lost_best, reference) < 0.95


def test_near_ties_cost_little_and_degenerate_lists_are_kept():
    reference = np.array([5.0, 4.999, 1.0, 0.0])
    assert fidelity.ndcg_against(np.array([4.999, 5.0, 1.0, 0.0]), reference) > 0.999  # swapping near-equal passages
    assert fidelity.ndcg_against(np.ones(4), np.ones(4)) == 1.0
    assert fidelity.top_agreement(np.zeros(0), np.zeros(0)) == 1.0


def test_the_gate_admits_a_faithful_engine_and_rejects_noise_that_reorders_the_top():
    rng = np.random.default_rng(0)
    reference = [rng.normal(size=20) * 3 for _ in range(9)]
    faithful = fidelity.compare([r + rng.normal(scale=1e-3, size=20) for r in reference], reference)
    assert faithful.admitted and faithful.ndcg > 0.999 and faithful.top10 == 1.0
    assert "keeps fp32's ranking" in faithful.verdict()
    noisy = fidelity.compare([r + rng.normal(scale=3.0, size=20) for r in reference], reference)
    assert not noisy.admitted and "reorders the top" in noisy.verdict() and "needs >= " in noisy.verdict()
    assert noisy.spearman < faithful.spearman and noisy.max_diff_of_range > faithful.max_diff_of_range


def test_spearman_is_zero_where_undefined():
    assert fidelity.spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert fidelity.spearman(np.ones(3), np.array([1.0, 2.0, 3.0])) == 0.0


def test_the_probe_is_several_questions_of_real_passages_on_and_off_topic():
    questions = probe.fidelity_probe()
    assert len(questions) == len(probe.FIDELITY_QUERIES) + 1
    assert all(len(q.documents) == probe.PER_QUERY and len(set(q.documents)) == probe.PER_QUERY for q in questions)
    words = [len(d.split()) for q in questions for d in q.documents]
    assert min(words) >= probe.MIN_WORDS and max(words) <= probe.MAX_WORDS + 40  # ~120 to ~450 tokens
    json_question = questions[0]
    assert sum("json" in d.lower() for d in json_question.documents[::2]) >= 5  # the best half by shared words ...
    assert sum(not d.startswith("json") for d in json_question.documents[1::2]) >= 8  # ... and unrelated passages
    assert probe.fidelity_probe() == questions  # fixed: every start judges the same probe
    calibration = {q for q, _ in probe.calibration_pairs()}
    assert not calibration & {q.query for q in questions[:-1]}  # never judged on what it was calibrated on
