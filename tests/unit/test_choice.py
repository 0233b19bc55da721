"""The measured backend choice: the fidelity gate, the pick, the live swap and its memory across restarts."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import rerank
from scoring import choice, engines
from scoring.checkpoint import Layout

RUNNABLE = [b for b in ("torch", "onnxruntime", "openvino") if engines.unavailable(b) is None]


def test_pick_takes_the_fastest_faithful_backend():
    m = choice.Measurement
    assert choice.pick([m("torch", 1.0, 1.0), m("openvino", 0.5, 1.0), m("onnxruntime-int8", 0.2, 0.95)]) == "openvino"
    # within 5% of the fastest, the backend that starts without torch wins
    assert choice.pick([m("torch", 1.0, 1.0), m("onnxruntime", 1.04, 1.0)]) == "onnxruntime"
    assert choice.pick([m("torch", 1.0, 1.0), m("onnxruntime", 1.2, 1.0)]) == "torch"
    assert choice.pick([m("onnxruntime-int8", 0.2, 0.5), m("openvino", note="not installed")]) == "torch"


def test_the_gate_also_bounds_how_far_scores_move():
    fast_but_off = choice.Measurement("openvino-bf16", 0.3, spearman=0.999, max_abs_diff=0.2, score_range=1.0)
    close = choice.Measurement("torch-bf16", 0.4, spearman=0.995, max_abs_diff=0.01, score_range=1.0)
    assert not fast_but_off.faithful and "5% of the probe's range" in fast_but_off.verdict()
    assert close.faithful
    assert choice.pick([choice.Measurement("torch", 1.0, 1.0, 0.0, score_range=1.0), fast_but_off, close]) == "torch-bf16"
    drifting = choice.Measurement("onnxruntime-int8", 0.2, spearman=0.96, max_abs_diff=0.01, score_range=1.0)
    assert not drifting.faithful and "Spearman 0.960" in drifting.verdict()


def test_spearman_is_zero_where_undefined():
    assert choice.spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    assert choice.spearman(np.ones(3), np.array([1.0, 2.0, 3.0])) == 0.0


def test_auto_measures_swaps_and_remembers(tmp_path, tiny_cross_encoder_dir):
    scorer = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert scorer.backend.backend == "torch" and scorer.needs_tuning
    before = scorer.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True)
    chosen = scorer.tune()
    measured = {m.backend: m for m in chosen.measurements}
    assert set(measured) == set(engines.CPU_BACKENDS)  # on the CPU, every CPU runtime is a candidate
    assert measured["torch"].spearman == pytest.approx(1.0)
    for name in RUNNABLE:  # fp32 engines agree with fp32 torch on every CPU kind
        assert measured[name].seconds > 0 and measured[name].faithful, measured[name]
    for name in engines.NATIVE_BF16:
        if engines.unavailable(name):
            assert measured[name].seconds is None and "no native bf16" in measured[name].note
    assert chosen.backend in {m.backend for m in measured.values() if m.faithful}
    assert scorer.backend.backend == chosen.backend and not scorer.needs_tuning
    assert {r.name for r in scorer.pool.replicas} == {chosen.backend}
    scorer.cache.clear()
    after = scorer.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True)
    np.testing.assert_allclose(after, before, atol=1e-4)
    cores = os.cpu_count() or 1
    if cores > 1:  # the chosen backend's workers x threads shapes were measured too, and the pool runs the winner
        assert {r["shape"] for r in chosen.shapes} == {f"{w}x{t}" for w, t in choice.shapes_for(cores)}
        assert scorer.workers == (chosen.workers or cores) and (chosen.workers or cores) * chosen.threads == cores
    again = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert again.backend.backend == chosen.backend and "earlier start" in again.backend.how
    assert (again.backend.workers, again.backend.threads) == (chosen.workers, chosen.threads)
    assert again.workers == scorer.workers
    assert not again.needs_tuning


class _Timed:
    """A stand-in replica whose forward pass takes ``delay`` seconds and scores by text length."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def score_pairs(self, query, texts):
        time.sleep(self.delay)
        return np.array([len(t) for t in texts], dtype=np.float64)


def test_shapes_use_every_core():
    assert choice.shapes_for(16) == [(16, 1), (8, 2), (4, 4), (2, 8), (1, 16)]
    assert choice.shapes_for(2) == [(2, 1), (1, 2)] and choice.shapes_for(1) == [(1, 1)]
    assert choice.shapes_for(6) == [(6, 1), (3, 2)]


def test_a_wider_shape_wins_only_when_clearly_faster():
    import torch

    before = torch.get_num_threads()
    layout = Layout(mode="cross-encoder", max_length=512)
    try:
        fast_pairs = {(4, 1): 0.02, (2, 2): 0.005, (1, 4): 0.02}  # 12 probe batches: 0.06 s, 0.03 s, 0.24 s
        workers, threads, rows = choice.choose_shape(lambda w, t: [_Timed(fast_pairs[(w, t)])] * w, layout, 4)
        assert (workers, threads) == (2, 2) and [r["shape"] for r in rows] == ["4x1", "2x2", "1x4"]
        assert torch.get_num_threads() == 2  # left as the chosen shape runs
        even = choice.choose_shape(lambda w, t: [_Timed(0.01 * 4 / w)] * w, layout, 4)  # every shape equally fast
        assert even[:2] == (None, 1)
    finally:
        torch.set_num_threads(before)


def test_one_stray_timing_does_not_make_every_candidate_a_tie():
    steady = [0.30, 0.31, 0.29, 0.30, 0.32, 0.30, 0.31, 0.30, 0.29, 0.30, 0.31, 0.30]
    assert choice.noise(steady + [0.65]) < 0.1  # the middle half's spread
    assert choice.noise([0.30, 0.33]) == pytest.approx(0.03 / 0.315)  # few timings: the full range
    assert choice.noise([0.3]) == 0.0
