"""The measured backend choice: the fidelity gate, the pick, the live swap and its memory across restarts."""

from __future__ import annotations

import numpy as np
import pytest

import rerank as core
from scoring import choice, engines

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
    scorer = core.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
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
    again = core.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert again.backend.backend == chosen.backend and "earlier start" in again.backend.how
    assert not again.needs_tuning
