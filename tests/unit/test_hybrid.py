"""The hybrid first stage's fusion: exact scores over the union of both lists, bounded distances, modes."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval import hybrid


def test_top_is_best_first_with_ties_by_index():
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.0])
    assert hybrid.top(scores, 3).tolist() == [1, 3, 2]
    assert hybrid.top(scores, 10).tolist() == [1, 3, 2, 0, 4]
    assert hybrid.top(scores, 0).tolist() == []


def test_fusion_finds_what_either_list_alone_misses():
    # passage 0: strong on words only; passage 1: strong on meaning only; passage 2: middling on both
    dense = np.array([0.10, 0.90, 0.60, 0.05])
    lexical = np.array([12.0, 0.0, 7.0, 0.5])
    ids, fused = hybrid.fuse(dense, lexical, depth=2, dense_weight=0.6)
    assert set(ids.tolist()) == {0, 1, 2}  # the union of both top-2 lists, nothing else
    assert np.all(np.diff(fused) <= 0) and fused.min() >= 0 and fused.max() <= 1
    # exact: 0.6 * z(dense) + 0.4 * z(lexical) over the union {0, 1, 2}, rescaled to [0, 1]
    d, lex = np.array([0.10, 0.90, 0.60]), np.array([12.0, 0.0, 7.0])
    raw = 0.6 * (d - d.mean()) / d.std() + 0.4 * (lex - lex.mean()) / lex.std()
    expected = dict(enumerate(((raw - raw.min()) / (raw.max() - raw.min())).tolist()))
    assert dict(zip(ids.tolist(), fused.tolist(), strict=True)) == pytest.approx(expected)
    assert fused[0] == 1.0 and fused[-1] == 0.0


@pytest.mark.parametrize("mode", hybrid.MODES)
def test_candidates_have_distances_lower_is_closer(mode):
    rng = np.random.default_rng(1)
    dense, lexical = rng.uniform(-0.2, 1, 500), rng.exponential(3, 500) * (rng.random(500) < 0.3)
    ids, distances = hybrid.candidates(mode, dense, lexical, 20)
    assert len(ids) == 20 and len(set(ids.tolist())) == 20
    assert np.all(np.diff(distances) >= 0)
    if mode == "dense":
        np.testing.assert_allclose(distances, 1 - dense[ids])
        assert ids.tolist() == np.argsort(-dense)[:20].tolist()
    elif mode == "lexical":
        np.testing.assert_allclose(distances, 1 / (1 + lexical[ids]))
    else:
        assert distances.min() >= 0 and distances.max() <= 1


def test_k_deeper_than_the_default_depth_still_returns_k():
    rng = np.random.default_rng(2)
    ids, _ = hybrid.candidates("hybrid", rng.random(1000), rng.random(1000), 300)
    assert len(ids) == 300


@pytest.mark.parametrize("value, expected", [(None, "hybrid"), ("", "hybrid"), (" Dense ", "dense"), ("lexical", "lexical")])
def test_modes_are_checked(value, expected):
    assert hybrid.check_mode(value) == expected


@pytest.mark.parametrize("value", ["fuzzy", 3, "bm25"])
def test_unknown_mode_names_the_field_and_the_choices(value):
    with pytest.raises(hybrid.ModeError, match=r"mode must be one of hybrid, dense, lexical"):
        hybrid.check_mode(value)
