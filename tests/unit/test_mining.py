"""The margin a mined negative must keep below the relevant passage, and the rows' false-negative share."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.mining import false_negatives, far_enough

pytestmark = pytest.mark.unit


def test_a_candidate_scored_near_the_positive_is_not_a_negative():
    kept = far_enough(0.8, np.array([0.9, 0.8, 0.77, 0.76, 0.2]), 0.05)  # below 0.8 x 0.95 = 0.76 only
    assert kept.tolist() == [False, False, False, True, True]
    assert far_enough(0.8, np.array([0.8, 0.9]), 0.0).tolist() == [True, False]  # no margin: below or equal


def test_false_negatives_counts_mined_passages_the_full_judgments_call_relevant():
    rows = [{"qid": "a", "negative_ids": ["x", "y"]}, {"qid": "b", "negative_ids": ["x", "z"]}]
    qrels = {"a": {"x": 1, "z": 1}, "b": {"z": 2}}
    assert false_negatives(rows, qrels) == 0.5 and false_negatives(rows, qrels, level=2) == 0.25
    assert false_negatives([], qrels) == 0.0
