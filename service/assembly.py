"""The one assembly: :class:`Settings` in, the :class:`Service` every entry point serves out.

``python app.py``, ``rerank.py``, ``evaluate.py``, a Ray Serve replica and the benchmarks all build
their service here, so the models, the embedder, the retriever, the limits, the fusion policy, the
key and the default instruction are the same wherever it runs. Parts given are used as they are (a
test's tiny model, a benchmark's scorer); with no scorer given, everything is loaded and started as
the settings say.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence

from retrieval.retrievers import BackgroundRetriever, LocalRetriever, RemoteRetriever, Retriever, terminal_progress
from scoring.cache import MIB
from scoring.calibration import Calibration
from scoring.loading import get_scorer, load_scorer, packaged_scorer
from scoring.media import ImageLimits
from scoring.ranking import ScoringPolicy
from scoring.scorer import Scorer
from scoring.skim import SkimPolicy
from service.core import Limits, Service
from service.models import Models
from service.settings import Settings

log = logging.getLogger("rag_augment.assembly")


def limits_of(settings: Settings) -> Limits:
    """What one request, and the service as a whole, may take."""
    return Limits(max_documents=settings.max_documents, max_request_tokens=settings.max_request_tokens,
                  max_in_flight=settings.max_queue, max_in_flight_per_client=settings.max_in_flight_per_client,
                  max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes,
                  max_upload_passages=settings.max_upload_passages, upload_ttl_seconds=settings.upload_ttl,
                  images=ImageLimits(settings.max_image_bytes, settings.max_image_pixels))


def policy_of(settings: Settings) -> ScoringPolicy:
    """How the final score is made from the model's and the first stage's."""
    return ScoringPolicy(fusion=settings.fusion, weight=settings.fusion_weight,
                         hybrid_weight=settings.hybrid_fusion_weight)


def skim_of(settings: Settings) -> SkimPolicy:
    """Skimming as configured: which models read every document's first tokens, then only the best whole."""
    return SkimPolicy(settings.skim_tokens, settings.skim_keep)


def load_model(settings: Settings, name: str | None = None, *, workers: int | None = None) -> Scorer:
    """A ranking model as configured (``name`` or ``RERANK_MODEL``: backend, device, window, remote code), loaded once per
    process; ``workers``: scoring threads (a Ray replica's CPUs), such a model is loaded apart from the process cache."""
    options = {"trust_remote_code": settings.trust_remote_code, "backend": settings.backend,
               "cache_dir": str(settings.cache_dir), "device": settings.device, "max_tokens": settings.max_tokens}
    if workers:
        return load_scorer(name or settings.model, workers=workers, **options)
    return get_scorer(name or settings.model, **options)


def load_models(settings: Settings, *, model: str | None = None, workers: int | None = None,
                measure: bool = True, apart: bool = True) -> tuple[Scorer, list[Scorer], Scorer]:
    """The ranking model, the extra models and the embedder (the packaged model: the local index's and uploads'); with
    ``measure``, a model whose backend is ``auto`` is measured first where no choice is remembered (before a port
    opens: measuring never competes with requests). With ``apart``, a model on the CPU is measured in a child process and
    this one loads what it chose: the exports, engines, threads and heap measuring leaves behind are not kept by the
    serving process."""
    scorer = load_model(settings, model, workers=workers)
    extra = [load_model(settings, name, workers=workers) for name in settings.extra_models]
    embedder = packaged_scorer(backend=settings.backend, cache_dir=settings.cache_dir, device=settings.device)
    for each in (scorer, *extra, embedder):
        each.bound_caches(settings.cache_mb * MIB, settings.token_cache_mb * MIB)
    pending = [m for m in {id(m.pool): m for m in (scorer, *extra, embedder)}.values() if m.needs_tuning] if measure else []
    elsewhere = [m for m in pending if apart and m.pool.source.device == "cpu"]
    if elsewhere:
        exit_code = measure_apart(settings, model=model, workers=workers)
        for each in elsewhere:
            if each.adopt_remembered() is None:
                log.warning("measuring %s apart ended with exit code %s and chose nothing; serving on %s until a "
                            "later start measures", each.info.name, exit_code, each.backend.backend)
    for each in pending:
        if each not in elsewhere:  # on a GPU, here: the fp32 replicas loaded are the reference, not a second copy
            log.info("measuring the inference backends for %s (at most %.0f s; remembered for later starts)",
                     each.info.name, settings.measure_budget)
            each.tune(budget_s=settings.measure_budget)
    return scorer, extra, embedder


def _measure_here(settings: Settings, model: str | None, workers: int | None, level: int) -> None:
    """A child process's work: load the models as the parent does and measure those with no remembered choice."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    load_models(settings, model=model, workers=workers, apart=False)


def measure_apart(settings: Settings, *, model: str | None = None, workers: int | None = None) -> int | None:
    """Measure the models' backends in a child process (a fresh interpreter), which remembers its choices in the cache;
    its exit code."""
    log.info("measuring the inference backends in a child process (at most %.0f s a model; remembered for later "
             "starts)", settings.measure_budget)
    child = multiprocessing.get_context("spawn").Process(
        target=_measure_here, args=(settings, model, workers, logging.getLogger().getEffectiveLevel()),
        name="rerank-measure")
    child.start()
    child.join()
    return child.exitcode


def start_retriever(settings: Settings, embedder: Scorer, scorer: Scorer | None = None) -> Retriever:
    """The configured first stage: the remote Space (``RETRIEVAL_URL``), or the local index built in the background
    (holding a late-interaction ``scorer``'s document vectors too)."""
    if settings.retrieval_url:
        return RemoteRetriever(settings.retrieval_url, timeout=settings.retrieval_timeout)
    late = scorer if scorer is not None and scorer.info.mode == "late-interaction" else None

    def build(progress) -> Retriever:
        with terminal_progress(also=progress) as report:
            return LocalRetriever.build(corpus_path=settings.corpus_path, cache_dir=settings.cache_dir,
                                        embedder=embedder, progress=report, late=late)

    return BackgroundRetriever(build, name="local index of " + (settings.corpus_path or "the Python standard library docs"))


def build(settings: Settings, *, scorer: Scorer | None = None, extra: Sequence[Scorer] = (),
          embedder: Scorer | None = None, retriever: Retriever | None = None, model: str | None = None,
          workers: int | None = None, index: bool = True) -> Service:
    """The service as ``settings`` configure it.

    With ``scorer`` given, the parts given are the service's (``embedder`` defaults to the scorer when it is an
    embedding model; no retriever unless given). Without, :func:`load_models` loads them and, with ``index``, the
    configured retriever starts (:func:`start_retriever`).
    """
    started = time.perf_counter()
    calibration = Calibration.read(settings.calibration) if settings.calibration else None  # a bad file fails first
    loaded = scorer is None
    if loaded:
        scorer, extra, embedder = load_models(settings, model=model, workers=workers)
    if calibration is not None:
        calibration.check(scorer.info.name, scorer.fingerprint)  # refused before anything starts
    if loaded and retriever is None and index:
        retriever = start_retriever(settings, embedder, scorer)
    embedder = embedder or (scorer if scorer.info.mode == "embedding" else None)
    service = Service(Models(scorer, list(extra)), limits=limits_of(settings), api_key=settings.api_key,
                      policy=policy_of(settings), retriever=retriever, embedder=embedder,
                      instruction=settings.instruction, calibration=calibration,
                      max_tokens_per_doc=settings.max_tokens_per_doc, skim=skim_of(settings))
    service.started_in_s = round(time.perf_counter() - started, 2)
    return service
