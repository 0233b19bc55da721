"""The measured backend choice on a real checkpoint: every runtime exported, measured, gated, swapped in live and
remembered across restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rerank
from scoring import choice, engines

ROOT = Path(__file__).resolve().parents[2]
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


MEASURE_HERE = """
import json, logging, sys
from service import assembly
from service.settings import Settings
logging.basicConfig(level=logging.INFO)
scorer, extra, embedder = assembly.load_models(Settings.from_env())
print(json.dumps({"backend": scorer.backend.backend, "how": scorer.backend.how, "embedder": embedder.backend.backend,
                  "runtimes": sorted(m for m in ("onnx", "onnxruntime", "openvino") if m in sys.modules)}))
"""


def test_a_fresh_start_measures_in_a_child_process_and_serves_what_it_chose(tmp_path, tiny_cross_encoder_dir,
                                                                              packaged_scorer):
    cache = tmp_path / "cache"
    embedder = packaged_scorer.pool.source  # remembered from an earlier start: only the tiny model is measured here
    choice.save_choice(embedder.path, embedder.layout, cache, choice.Choice("torch", "an earlier start's"))
    env = {**os.environ, "RERANK_MODEL": str(tiny_cross_encoder_dir), "RERANK_BACKEND": "auto", "HF_HUB_OFFLINE": "1",
           "RAG_AUGMENT_CACHE": str(cache), "RERANK_MEASURE_SECONDS": "8"}
    run = subprocess.run([sys.executable, "-c", MEASURE_HERE], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    served = json.loads(run.stdout)
    assert "in a child process" in run.stderr and "(measured apart)" in run.stderr
    source = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="torch").pool.source
    remembered = choice.load_choice(source.path, source.layout, cache)
    assert remembered is not None and served["backend"] == remembered.backend and served["embedder"] == "torch"
    assert served["how"] == "measured on this machine at this start, in a child process"
    assert [m for m in remembered.measurements if m.seconds is not None]  # the child measured (its budget: 8 s)
    needs = {"onnxruntime": {"onnxruntime"}, "openvino": {"openvino"}}.get(remembered.backend.split("-")[0], set())
    assert set(served["runtimes"]) <= needs  # what measuring loaded (the exporter, the other runtimes) stayed there
