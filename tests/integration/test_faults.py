"""Faults leave the service serving and nothing half-written: a full disk during the graph export, the choice file and
the index build; damaged exports, choice files and indexes; a build killed mid-way. Each case: it still ranks, the log
says what failed in one line, and the next start rebuilds what was damaged."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rerank
from retrieval.index import LocalIndex, remove_stale_builds
from scoring import choice
from tests.support import ROOT, CountingEmbedder


@pytest.fixture()
def small_disk(tmp_path, request):
    """A real filesystem (tmpfs, 256 KiB unless the test's ``disk_size`` mark says): writes past it fail with ENOSPC,
    as on a full disk."""
    mark = request.node.get_closest_marker("disk_size")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    size = mark.args[0] if mark else "256k"
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()}); the full-disk cases need root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    out = (disk / "filler").open("wb", buffering=0)
    try:
        while True:
            out.write(b"\0" * 65536)
    except OSError:
        pass
    finally:
        out.close()


def test_the_index_build_on_a_full_disk_falls_back_to_memory_and_leaves_nothing(small_disk, packaged_scorer,
                                                                                small_corpus, caplog):
    caplog.set_level(logging.WARNING, logger="rag_augment.index")
    index = LocalIndex.open(small_corpus, packaged_scorer, path=small_disk / "index.duckdb")
    assert index.stats.path == ":memory:" and len(index.search("parse json", 3)) == 3
    lines = [r.getMessage() for r in caplog.records if "cannot write the index" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert [p.name for p in small_disk.iterdir()] == []  # no partial file, no write-ahead log
    index.close()


def test_the_choice_file_on_a_full_disk_is_not_half_written(small_disk, tiny_cross_encoder_dir, caplog):
    caplog.set_level(logging.WARNING, logger="rag_augment.choice")
    layout = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False)._pool.source.layout
    folder = choice._choice_file(tiny_cross_encoder_dir, layout, small_disk).parent
    folder.mkdir(parents=True)
    _fill(small_disk)
    choice.save_choice(tiny_cross_encoder_dir, layout, small_disk, choice.Choice("onnxruntime", "measured"))
    assert list(folder.iterdir()) == []  # neither the file nor its temporary
    assert any("measured again at the next start" in r.getMessage() for r in caplog.records)
    assert choice.load_choice(tiny_cross_encoder_dir, layout, small_disk) is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong types"])
def test_a_damaged_choice_file_is_measured_again(tmp_path, tiny_cross_encoder_dir, damage, caplog):
    caplog.set_level(logging.WARNING, logger="rag_augment.choice")
    layout = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False)._pool.source.layout
    choice.save_choice(tiny_cross_encoder_dir, layout, tmp_path, choice.Choice("onnxruntime", "measured"))
    path = choice._choice_file(tiny_cross_encoder_dir, layout, tmp_path)
    text = path.read_text()
    path.write_text({"garbage": "\x00not json", "truncated": text[: len(text) // 2],
                     "wrong types": text.replace('"threads": 1', '"threads": "many"')}[damage])
    assert choice.load_choice(tiny_cross_encoder_dir, layout, tmp_path) is None
    assert any("measuring again" in r.getMessage() for r in caplog.records)
    scorer = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert len(scorer.score("q", ["a", "b"])) == 2  # serves (fp32 until measured again)


@pytest.mark.disk_size("32m")
def test_the_graph_export_on_a_full_disk_serves_on_torch_and_exports_once_there_is_room(small_disk,
                                                                                        tiny_cross_encoder_dir):
    layout = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False)._pool.source.layout
    choice.save_choice(tiny_cross_encoder_dir, layout, small_disk, choice.Choice("onnxruntime", "measured"))
    _fill(small_disk)
    full = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=small_disk)
    assert full.backend.backend == "torch" and "cannot export" in full.backend.how
    assert len(full.score("q", ["a", "b"])) == 2
    assert not list(small_disk.glob("backends/*/*.onnx*"))  # no partial graph left
    (small_disk / "filler").unlink()
    again = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=small_disk)
    assert again.backend.backend == "onnxruntime" and list(small_disk.glob("backends/*/model.onnx"))


def test_a_truncated_graph_is_removed_served_on_torch_and_exported_again(tmp_path, tiny_cross_encoder_dir):
    scorer = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    expected = scorer.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True)
    graph = next(tmp_path.glob("backends/*/model.onnx"))
    choice.save_choice(tiny_cross_encoder_dir, scorer._pool.source.layout, tmp_path, choice.Choice("onnxruntime", "m"))
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    damaged = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="auto", cache_dir=tmp_path)
    assert damaged.backend.backend == "torch" and "removed it" in damaged.backend.how
    np.testing.assert_allclose(damaged.score(choice.PROBE_QUERY, choice.probe_documents(), raw=True), expected, atol=1e-4)
    again = rerank.load_scorer(str(tiny_cross_encoder_dir), allow_fallback=False, backend="onnxruntime", cache_dir=tmp_path)
    assert again.backend.backend == "onnxruntime" and graph.stat().st_size > 0


def test_a_truncated_index_file_is_rebuilt(tmp_path, packaged_scorer, small_corpus):
    path = tmp_path / "index.duckdb"
    LocalIndex.open(small_corpus[:20], packaged_scorer, path=path).close()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    counting = CountingEmbedder(packaged_scorer)
    index = LocalIndex.open(small_corpus[:20], counting, path=path)
    assert counting.document_texts == 20 and len(index.search("json", 3)) == 3
    index.close()
    reopened = LocalIndex.open(small_corpus[:20], counting, path=path)  # the rebuilt file is whole: reused
    assert reopened.stats.reused and counting.document_texts == 20
    reopened.close()


BUILD = """
import sys, time
import rerank
from retrieval import corpus
from retrieval.index import LocalIndex

class Slow:
    def __init__(self, inner):
        self.inner, self.fingerprint = inner, inner.fingerprint
    def embed(self, texts, query=False, background=False):
        time.sleep(0.2)
        return self.inner.embed(texts, query=query, background=background)

passages = corpus.builtin_passages(modules={"json", "tempfile", "threading", "zipfile"})
LocalIndex.open(passages, Slow(rerank.packaged_scorer()), path=__import__("pathlib").Path(sys.argv[1]), batch_size=8)
"""


def test_a_build_killed_mid_way_leaves_nothing_the_next_start_cannot_clean(tmp_path, packaged_scorer, small_corpus):
    path = tmp_path / "index-test.duckdb"
    builder = subprocess.Popen([sys.executable, "-c", BUILD, str(path)], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("index-test.duckdb.*.tmp")) and time.monotonic() < deadline:
        assert builder.poll() is None, "the build ended before it could be killed"
        time.sleep(0.1)
    time.sleep(0.5)  # mid-way through embedding
    builder.send_signal(signal.SIGKILL)
    builder.wait(30)
    left = list(tmp_path.glob("index-test.duckdb.*.tmp*"))
    assert left and not path.exists()  # killed mid-write: only its temporary remains
    assert sorted(remove_stale_builds(tmp_path)) == sorted(left)
    index = LocalIndex.open(small_corpus, packaged_scorer, path=path)
    assert not index.stats.reused and len(index.search("parse json", 3)) == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    index.close()
