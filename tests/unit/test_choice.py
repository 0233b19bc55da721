"""The measured backend choice: the fidelity gate, the pick, the workers x threads shape, the noise of a timing."""

from __future__ import annotations

import time

import numpy as np
import pytest

from scoring import choice, engines
from scoring.checkpoint import Layout


def _m(backend: str, seconds: float | None, ndcg: float = 1.0, top10: float = 1.0, note: str = "") -> choice.Measurement:
    return choice.Measurement(backend, seconds, ndcg, top10, ndcg, 1.0, 0.0, note)


def test_pick_takes_the_fastest_backend_that_keeps_the_ranking():
    assert choice.pick([_m("torch", 1.0), _m("openvino", 0.5), _m("onnxruntime-int8", 0.2, 0.95, 0.7)]) == "openvino"
    # within 5% of the fastest, the backend that starts without torch wins
    assert choice.pick([_m("torch", 1.0), _m("onnxruntime", 1.04)]) == "onnxruntime"
    assert choice.pick([_m("torch", 1.0), _m("onnxruntime", 1.2)]) == "torch"
    assert choice.pick([_m("onnxruntime-int8", 0.2, 0.5, 0.3), _m("openvino", None, note="not installed")]) == "torch"
    # a tie between full and reduced precision goes to full precision
    assert choice.pick([_m("torch", 1.0), _m("onnxruntime", 0.61), _m("onnxruntime-int8", 0.6, 0.999)]) == "onnxruntime"


def test_the_gate_reads_the_ranking_users_see_not_the_tail():
    tail_moved = _m("onnxruntime-int8", 0.3, ndcg=0.998, top10=1.0)
    tail_moved.spearman = 0.96  # the whole list's rank correlation drifted: not what a user sees
    assert tail_moved.faithful and "keeps fp32's ranking" in tail_moved.verdict()
    top_moved = _m("openvino-int8", 0.2, ndcg=0.95, top10=0.8)
    assert not top_moved.faithful and "reorders the top of fp32's ranking" in top_moved.verdict()
    assert choice.pick([_m("torch", 1.0), top_moved, tail_moved]) == "onnxruntime-int8"
    assert not _m("onnxruntime-int8", None).faithful  # not measured: never admitted


def test_candidates_are_measured_most_promising_first_for_the_cpu_at_hand():
    avx2 = choice.measuring_order(engines.CPU_BACKENDS, int8_dot=False)
    vnni = choice.measuring_order(engines.CPU_BACKENDS, int8_dot=True)
    for order in (avx2, vnni):
        assert order[0] == "torch" and sorted(order) == sorted(engines.CPU_BACKENDS)
    assert avx2.index("onnxruntime-int8") < avx2.index("openvino") < avx2.index("openvino-int8")
    assert vnni[1] == "openvino-int8" and vnni.index("onnxruntime-int8") < vnni.index("openvino")
    assert choice.measuring_order(engines.CPU_BACKENDS) == (vnni if engines.cpu_has_int8_dot() else avx2)


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


class _Drifting:
    """A stand-in replica ``speed`` times as slow as the reference, on a machine whose load is ``state['factor']``."""

    def __init__(self, speed: float, state: dict) -> None:
        self.speed, self.state = speed, state

    def score_pairs(self, query, texts):
        time.sleep(0.005 * self.speed * self.state["factor"])
        return np.array([len(t) for t in texts], dtype=np.float64)


def test_a_machine_that_slows_midway_does_not_hide_the_faster_candidate():
    state = {"factor": 1.0}
    layout = Layout(mode="cross-encoder", max_length=512)

    def slowed_then(speed: float) -> list:
        state["factor"] = 2.0  # other work starts on the machine just as this candidate is measured
        return [_Drifting(speed, state)]

    candidates = {"onnxruntime-int8": lambda: [_Drifting(0.7, state)], "openvino-int8": lambda: slowed_then(0.5)}
    measured, _, spread = choice.measure([_Drifting(1.0, state)], candidates, layout, judge=False)
    by_name = {m.backend: m for m in measured}
    for m in measured:  # the timing is under test here; the gate has its own tests
        m.ndcg, m.top10 = 1.0, 1.0
    assert by_name["openvino-int8"].seconds > by_name["onnxruntime-int8"].seconds  # in seconds the drift hides it
    assert by_name["openvino-int8"].relative == pytest.approx(0.5, rel=0.15)
    assert by_name["onnxruntime-int8"].relative == pytest.approx(0.7, rel=0.15)
    assert spread < 0.1  # the slowdown between candidates is not noise of a comparison
    assert choice.pick(measured, margin=spread) == "openvino-int8"
