"""Loading a model: resolve it, detect its mode, build its engines and worker pool; fall back when it cannot be had."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from scoring import choice as choosing
from scoring import engines
from scoring.checkpoint import (
    PACKAGED_MODEL_NAME,
    ModelInfo,
    detect_mode,
    layout_of,
    packaged_model_path,
    resolve_model_dir,
)
from scoring.engines.st_engine import ST_BACKEND, st_replicas
from scoring.errors import BackendError, ModelLoadError
from scoring.pool import WorkerPool
from scoring.scorer import UNMEASURED, ModelSource, Scorer
from scoring.tokenizer import TextTokenizer

log = logging.getLogger("rag_augment.loading")


def default_workers() -> int:
    """One worker per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def display_name(spec: str) -> str:
    """How a model is named to clients: its hub id, or a local folder's name (never a filesystem path)."""
    path = Path(spec).expanduser()
    if path.exists() and path.resolve() == packaged_model_path().resolve():
        return PACKAGED_MODEL_NAME
    return path.name if (path.is_absolute() or spec.startswith((".", "~")) or path.exists()) else spec


def _initial_choice(backend: str, source: ModelSource) -> choosing.Choice:
    """The backend to start on: the configured one, a choice measured at an earlier start, or torch until measured."""
    if backend != "auto":
        return choosing.Choice(backend, "set by RERANK_BACKEND")
    remembered = choosing.load_choice(source.path, source.layout, source.cache_dir) if source.cache_dir else None
    return remembered or choosing.Choice("torch", UNMEASURED)


def _graph_pool(path: Path, layout, backend: str, cache_dir: Path | None, trust_remote_code: bool,
                workers: int) -> WorkerPool:
    """Replicas on the chosen (or configured) backend; torch, saying why, when that backend cannot run here."""
    source = ModelSource(path, layout, Path(cache_dir) if cache_dir else None, trust_remote_code,
                         needs_tuning=backend == "auto")
    tokenizer = TextTokenizer.from_dir(path)
    choice = _initial_choice(backend, source)

    def build(name: str) -> list:
        return engines.replicas(name, source.path, source.layout, tokenizer, cache_dir=source.cache_dir, workers=workers,
                                trust_remote_code=trust_remote_code)

    try:
        replicas = build(choice.backend)
    except BackendError as exc:
        log.warning("%s; serving on torch", exc)
        choice = choosing.Choice("torch", f"{choice.backend} unavailable here: {exc}")
        replicas = build("torch")
    return WorkerPool(replicas, tokenizer, choice, source=source)


def _load(path: Path, requested: str, fallback_reason: str | None, name: str, *, trust_remote_code: bool,
          backend: str = "torch", cache_dir: Path | None = None, workers: int | None = None) -> Scorer:
    """Load a resolved checkpoint in the mode its files call for, on the requested backend."""
    mode = detect_mode(path)
    workers = default_workers() if workers is None else max(1, workers)
    if backend != "auto" and backend not in engines.BACKENDS:
        raise ModelLoadError(f"RERANK_BACKEND must be auto or one of {', '.join(engines.BACKENDS)}, got {backend!r}")
    try:
        layout = layout_of(path, mode)
        if layout is None:  # modules of its own: sentence-transformers runs it
            replicas, tokenizer, max_length = st_replicas(path, mode, trust_remote_code, workers)
            pool = WorkerPool(replicas, tokenizer, choosing.Choice(
                ST_BACKEND, "the checkpoint has sentence-transformers modules beyond Transformer + Pooling + Normalize"))
        else:
            pool, max_length = _graph_pool(path, layout, backend, cache_dir, trust_remote_code, workers), layout.max_length
    except Exception as exc:
        raise ModelLoadError(f"cannot load {name!r} as a {mode} model: {exc}") from exc
    info = ModelInfo(name=name, path=str(path), mode=mode, max_length=max_length, requested=requested,
                     fallback_reason=fallback_reason)
    scorer = Scorer(info, pool)
    log.info("model ready: %s", scorer.describe())
    return scorer


def load_scorer(spec: str, *, allow_fallback: bool = True, trust_remote_code: bool = False, backend: str = "torch",
                cache_dir: str | Path | None = None, workers: int | None = None) -> Scorer:
    """Load ``spec`` (hub id or folder); if it cannot be had, fall back to the packaged embedding model.

    ``backend``: ``torch`` (fp32), another of :data:`scoring.engines.BACKENDS`, or ``auto`` (a choice measured
    on this machine and remembered in ``cache_dir``; torch until :meth:`Scorer.tune` has measured).
    """
    try:
        return _load(resolve_model_dir(spec), spec, None, display_name(spec), trust_remote_code=trust_remote_code,
                     backend=backend, cache_dir=cache_dir, workers=workers)
    except ModelLoadError as exc:
        if not allow_fallback:
            raise
        log.warning("model %r unavailable (%s); falling back to the packaged all-MiniLM-L6-v2", spec, exc)
        base = packaged_scorer(backend=backend, cache_dir=cache_dir)
        info = replace(base.info, name=PACKAGED_MODEL_NAME, requested=spec, fallback_reason=str(exc))
        log.warning("model ready: %s", info.describe())
        return Scorer(info, base)


@lru_cache(maxsize=8)
def get_scorer(spec: str, *, allow_fallback: bool = True, trust_remote_code: bool = False, backend: str = "torch",
               cache_dir: str | None = None) -> Scorer:
    """The process-wide cached :func:`load_scorer` (each model is loaded once per backend)."""
    return load_scorer(spec, allow_fallback=allow_fallback, trust_remote_code=trust_remote_code, backend=backend,
                       cache_dir=cache_dir)


def packaged_scorer(*, backend: str = "torch", cache_dir: str | Path | None = None) -> Scorer:
    """The packaged all-MiniLM-L6-v2 (the offline default and the local index's embedder), loaded once per backend."""
    return get_scorer(str(packaged_model_path()), allow_fallback=False, backend=backend,
                      cache_dir=str(cache_dir) if cache_dir else None)
