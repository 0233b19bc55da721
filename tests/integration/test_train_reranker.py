"""``bench/train_reranker.py`` on a tiny run: it trains the measuring cross-encoder, saves it in the hub's layout, and
judges it against the first stage on held-out queries, as the engine benchmarks rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import rerank
from tests.support import build_collection

ROOT = Path(__file__).resolve().parents[2]


def test_the_bench_script_trains_saves_and_judges_a_cross_encoder(tmp_path):
    collection = build_collection(tmp_path / "tiny-set")
    out = tmp_path / "trained"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train_reranker.py"), "--collections", str(collection),
                           "--out", str(out), "--rounds", "1", "--max-length", "48", "--depth", "10",
                           "--train-depth", "12", "--scores-cache", str(tmp_path / "scores"), "--json"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: trained, but not better than the first stage here
    report = json.loads(done.stdout)  # --json: only JSON on stdout
    assert report["lists"] == 12 and report["train_seconds"] > 0  # one list per development query
    judged = report["collections"]["tiny-set"]
    assert judged["queries"] == 12 and 0 <= judged["bm25"] <= 1 and 0 <= judged["model"] <= 1
    assert report["beats_bm25"] == (done.returncode == 0) == (report["mean"]["model"] > report["mean"]["bm25"])
    export = ("import sys, rerank; rerank.load_scorer(sys.argv[1], allow_fallback=False, backend='onnxruntime', "
              "cache_dir=sys.argv[2])")  # in a child: exporting holds the GIL, which stalls apps served in this process
    subprocess.run([sys.executable, "-c", export, str(out), str(tmp_path / "cache")], check=True, timeout=300, cwd=ROOT)
    scorer = rerank.load_scorer(str(out), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path / "cache")
    assert scorer.info.mode == "cross-encoder" and scorer.backend.backend == "onnxruntime"  # the graph engines run it
    assert scorer.info.max_length == 512  # trained on 48-token pairs, saved to read 512 as it is judged and served
    scores = scorer.score("facts on plimbo", ["Yeast makes bread dough rise.", "The goalkeeper saved a penalty kick."])
    assert len(scores) == 2 and scores[0] != scores[1]  # a trained head, not a constant
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train_reranker.py"), "--collections", str(collection),
                           "--out", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "exists and is not empty" in done.stderr  # nothing is overwritten
