"""The measured backend choice on a real checkpoint: every runtime exported, measured, gated, swapped in live and
remembered across restarts."""

from __future__ import annotations

import os

import numpy as np
import pytest

import rerank
from scoring import choice, engines

RUNNABLE = [b for b in ("torch", "onnxruntime", "openvino") if engines.unavailable(b) is None]


def test_auto_measures_swaps_and_remembers(tmp_path, tiny_cross_encoder_dir):
    scorer = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert scorer.backend.backend == "torch" and scorer.needs_tuning
    before = scorer.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True)
    chosen = scorer.tune()
    measured = {m.backend: m for m in chosen.measurements}
    assert set(measured) == set(engines.CPU_BACKENDS)  # on the CPU, every CPU runtime is a candidate
    assert measured["torch"].ndcg == pytest.approx(1.0)
    for name in RUNNABLE:  # fp32 engines agree with fp32 torch on every CPU kind
        assert measured[name].seconds > 0 and measured[name].faithful, measured[name]
    for name in engines.REDUCED_PRECISION:  # reduced precision is measured and judged, or says why it was not
        if name in measured:
            assert (measured[name].ndcg is not None) == (measured[name].seconds is not None), measured[name]
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
