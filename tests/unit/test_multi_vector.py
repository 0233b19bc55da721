"""MaxSim and its [0, 1] scale, on vectors made by hand."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.engines.multi_vector import MultiVectorEngine, maxsim

pytestmark = pytest.mark.unit


def _unit(rows) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_each_query_token_takes_its_best_document_token():
    query = _unit([[1, 0], [0, 1]])
    near = _unit([[1, 0], [0, 1], [-1, 0]])  # a perfect match for both query tokens
    half = _unit([[1, 1]])  # one token, cos 45 degrees to both
    assert maxsim(query, [near, half, np.zeros((0, 2), np.float32)]).tolist() == pytest.approx([2.0, 2 ** 0.5, 0.0])


def test_the_scale_maps_the_mean_best_cosine_to_0_1():
    engine = MultiVectorEngine.__new__(MultiVectorEngine)  # no model: only the arithmetic is under test
    engine.mean, engine.unit = False, True
    query = _unit([[1, 0], [0, 1]])
    raw = engine.similarity(query, [_unit([[1, 0], [0, 1]]), _unit([[-1, -1]]), _unit([[-1, 0], [0, -1]])])
    assert engine.normalized(raw, query).tolist() == pytest.approx([1.0, (1 - 2 ** 0.5 / 2) / 2, 0.5])
    engine.mean = True  # a checkpoint that scores MeanMaxSim: raw is already the mean
    raw = engine.similarity(query, [_unit([[1, 1]])])
    assert raw.tolist() == pytest.approx([2 ** 0.5 / 2]) and engine.normalized(raw, query)[0] == pytest.approx(
        (1 + 2 ** 0.5 / 2) / 2)
    engine.unit = False  # vectors of any length: the logistic of the mean
    assert engine.normalized(np.array([0.0]), query)[0] == pytest.approx(0.5)
