"""Shared fixtures: real models (loaded once per session), stand-in retrieval Spaces, the event-loop guard, and the
tiers (unit, integration, e2e) marked by folder. Helpers that are not fixtures live in ``tests.support``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import rerank
from scoring.synthetic import build_tiny_cross_encoder
from tests.support import EVAL_DIR, LOOP_MONITORS, MAX_LOOP_LAG, MAX_STARVED_LAG, stand_in_space

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items) -> None:
    """Each test is marked with its tier, the folder it lives in (``make test-fast`` runs the unit tier)."""
    for item in items:
        tier = next((t for t in TIERS if f"/tests/{t}/" in str(item.path)), None)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def packaged_scorer() -> rerank.Scorer:
    """The packaged all-MiniLM-L6-v2, the offline default, in embedding mode."""
    return rerank.packaged_scorer()


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory) -> Path:
    """A freshly built tiny cross-encoder checkpoint in a temp folder."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="session")
def tiny_scorer(tiny_cross_encoder_dir) -> rerank.Scorer:
    """The tiny cross-encoder loaded through the same path as a hub model."""
    return rerank.get_scorer(str(tiny_cross_encoder_dir), allow_fallback=False)


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    """The shared IR collections, or a skip saying where they are expected."""
    if not EVAL_DIR.is_dir():
        pytest.skip(f"public IR collections not found at {EVAL_DIR} (a user's clone has no ../shared/eval)")
    return EVAL_DIR


@pytest.fixture(scope="session")
def spaces():
    """Stand-in retrieval Spaces on loopback: good, slow and wrong-columns."""
    urls, demos = {}, []
    for behaviour in ["good", "slow", "wrong-columns"]:
        demo = stand_in_space(behaviour)
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
        urls[behaviour] = url
        demos.append(demo)
    yield urls
    for demo in demos:
        demo.close()


@pytest.fixture(scope="session")
def small_corpus():
    """A few stdlib modules' docs: the built-in corpus in miniature."""
    from retrieval import corpus

    return corpus.builtin_passages(modules={"json", "tempfile", "threading", "zipfile"})


@pytest.fixture(scope="session")
def local_retriever(packaged_scorer, small_corpus):
    """The small corpus indexed in memory with the packaged model."""
    from retrieval.index import LocalIndex
    from retrieval.retrievers import LocalRetriever

    return LocalRetriever(LocalIndex.open(small_corpus, packaged_scorer, path=None, name="small corpus"))


@pytest.fixture(autouse=True)
def loop_lag_guard(request):
    """Fails the test during which any served event loop was blocked for more than 250 ms (every route waits then), or
    woke over 2 s late because the whole test process was starved (the test's own work, other processes on the CPU:
    what a served app's handlers cannot cure, yet bounded)."""
    marks = {id(m): len(m.stalls) for m in LOOP_MONITORS}
    yield
    stalls = [s for m in LOOP_MONITORS for s in m.stalls[marks.get(id(m), 0):]]
    blocked = [s.lag for s in stalls if not s.starved and s.lag > MAX_LOOP_LAG]
    starved = [s.lag for s in stalls if s.starved and s.lag > MAX_STARVED_LAG]
    if blocked or starved:
        worst, limit = (max(blocked), MAX_LOOP_LAG) if blocked else (max(starved), MAX_STARVED_LAG)
        what = "was blocked" if blocked else "woke late with the whole process starved"
        pytest.fail(f"the server's event loop {what} for {worst * 1000:.0f} ms during {request.node.name} "
                    f"({len(blocked or starved)} wake-up(s) over {limit * 1000:.0f} ms)", pytrace=False)


def pytest_terminal_summary(terminalreporter) -> None:
    """The worst event-loop lag any served app saw over the run (the guard fails a test past 250 ms)."""
    if LOOP_MONITORS:
        worst = max(m.worst for m in LOOP_MONITORS)
        starved = [s.lag for m in LOOP_MONITORS for s in m.stalls if s.starved]
        terminalreporter.write_line(f"event-loop lag: worst {worst * 1000:.0f} ms over {len(LOOP_MONITORS)} served apps "
                                    f"(limit {MAX_LOOP_LAG * 1000:.0f} ms blocked, {MAX_STARVED_LAG * 1000:.0f} ms with "
                                    f"the process starved: {len(starved)} such wake-up(s))")


def _hypothesis_profile() -> None:
    """Generated inputs are the same on every run, so CI is repeatable; HYPOTHESIS_PROFILE=explore varies them."""
    from hypothesis import settings

    settings.register_profile("repeatable", derandomize=True, database=None)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


_hypothesis_profile()
