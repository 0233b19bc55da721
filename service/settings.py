"""Every environment variable rag-augment reads, read here and nowhere else.

Modules take their settings as keyword arguments; the entry points (``app.py``, the CLIs) build a
:class:`Settings` from the environment once and pass its values down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

VERSION = "0.1.0"
DEFAULT_MODEL = "cross-encoder/ms-marco-MiniLM-L6-v2"


# RERANK_BACKEND: auto measures the others at start-up (see scoring/choice.py)
BACKENDS = ("auto", "torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8",
            "onnxruntime-int8-static", "openvino-int8", "cuda-fp32", "cuda-fp16", "cuda-bf16")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    """Read a positive integer setting, naming the variable when it is malformed."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    """Read a positive float setting, naming the variable when it is malformed."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    """Read a setting that must be one of ``allowed``."""
    value = env.get(name, "").strip().lower() or default
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _weight(env: Mapping[str, str], name: str, default: float) -> float:
    """Read a weight in [0, 1]."""
    raw = env.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number from 0 to 1, got {raw!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be from 0 to 1, got {value}")
    return value


def _device(env: Mapping[str, str]) -> str:
    """``RERANK_DEVICE``: auto, cpu, cuda or cuda:N (whether that device exists is checked when the model loads)."""
    value = env.get("RERANK_DEVICE", "").strip().lower() or "auto"
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
        return value
    raise ValueError(f"RERANK_DEVICE must be auto, cpu, cuda or cuda:N, got {value!r}")


def _skim_tokens(env: Mapping[str, str]) -> int | str | None:
    """``RERANK_SKIM_TOKENS``: auto (each model family's measured default), off, or a number of tokens (>= 16)."""
    value = env.get("RERANK_SKIM_TOKENS", "").strip().lower() or "auto"
    if value == "auto":
        return value
    if value in ("off", "0"):
        return None
    if not value.isdigit() or int(value) < 16:
        raise ValueError(f"RERANK_SKIM_TOKENS must be auto, off or a number of tokens >= 16, got {value!r}")
    return int(value)


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    """Where indexes live: ``RAG_AUGMENT_CACHE`` or the XDG cache folder."""
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rag-augment"


@dataclass(frozen=True)
class Settings:
    """The service's configuration; defaults are the embedded, offline-capable set-up."""

    model: str = DEFAULT_MODEL
    extra_models: tuple[str, ...] = ()
    max_documents: int = 1000
    retrieval_url: str | None = None
    retrieval_timeout: float = 30.0
    server_name: str = "127.0.0.1"
    server_port: int = 7860
    cache_dir: Path = field(default_factory=lambda: _default_cache_dir(os.environ))
    corpus_path: str | None = None
    api_key: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    max_queue: int = 64
    max_in_flight_per_client: int = 16
    max_request_tokens: int = 262_144
    max_image_bytes: int = 8 * 1024 * 1024  # one image document's encoded bytes
    max_image_pixels: int = 4096 * 4096  # one image document's width x height
    max_upload_bytes: int = 5 * 1024 * 1024
    max_upload_passages: int = 5000
    upload_ttl: float = 3600.0
    trust_remote_code: bool = False
    fusion: str = "auto"
    fusion_weight: float = 0.7
    hybrid_fusion_weight: float = 0.3
    instruction: str | None = None
    max_tokens: int = 8192
    max_tokens_per_doc: int | None = None  # each document's first tokens only, unless a request says otherwise
    skim_tokens: int | str | None = "auto"  # every document read at its first tokens, then only the best read whole ...
    skim_keep: int = 10  # ... this many ("auto": the measured default of each model family; None: all read whole)
    backend: str = "auto"
    device: str = "auto"
    measure_budget: float = 120.0
    calibration: str | None = None  # a file from evaluate.py --calibrate: scores served as P(relevant)
    memory_release_s: float = 10.0  # seconds between returns of freed heap to the system (0: never)
    cache_mb: int = 32  # each model's score or embedding cache, in MiB (0: off)
    token_cache_mb: int = 8  # each model's token cache, in MiB (0: off)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (see the README's Configuration table)."""
        env = os.environ if env is None else env
        extra = tuple(m.strip() for m in env.get("RERANK_EXTRA_MODELS", "").split(",") if m.strip())
        return cls(
            model=env.get("RERANK_MODEL", "").strip() or DEFAULT_MODEL,
            extra_models=extra,
            max_documents=_int(env, "RERANK_MAX_DOCUMENTS", 1000),
            retrieval_url=env.get("RETRIEVAL_URL", "").strip() or None,
            retrieval_timeout=_float(env, "RETRIEVAL_TIMEOUT", 30.0),
            server_name=env.get("GRADIO_SERVER_NAME", "").strip() or "127.0.0.1",
            server_port=_int(env, "GRADIO_SERVER_PORT", 7860),
            cache_dir=Path(env["RAG_AUGMENT_CACHE"]) if env.get("RAG_AUGMENT_CACHE") else _default_cache_dir(env),
            corpus_path=env.get("CORPUS_PATH", "").strip() or None,
            api_key=env.get("RERANK_API_KEY") or None,
            max_body_bytes=_int(env, "RERANK_MAX_BODY_BYTES", 10 * 1024 * 1024),
            max_queue=_int(env, "RERANK_MAX_QUEUE", 64),
            max_in_flight_per_client=_int(env, "RERANK_MAX_IN_FLIGHT_PER_CLIENT", 16),
            max_request_tokens=_int(env, "RERANK_MAX_REQUEST_TOKENS", 262_144),
            max_image_bytes=_int(env, "RERANK_MAX_IMAGE_BYTES", 8 * 1024 * 1024),
            max_image_pixels=_int(env, "RERANK_MAX_IMAGE_PIXELS", 4096 * 4096),
            max_upload_bytes=_int(env, "RERANK_MAX_UPLOAD_BYTES", 5 * 1024 * 1024),
            max_upload_passages=_int(env, "RERANK_MAX_UPLOAD_PASSAGES", 5000),
            upload_ttl=_float(env, "RERANK_UPLOAD_TTL", 3600.0),
            trust_remote_code=env.get("RERANK_TRUST_REMOTE_CODE", "").strip().lower() in {"1", "true", "yes"},
            fusion=_choice(env, "RERANK_FUSION", "auto", ("auto", "none", "rrf", "interpolate")),
            fusion_weight=_weight(env, "RERANK_FUSION_WEIGHT", 0.7),
            hybrid_fusion_weight=_weight(env, "RERANK_HYBRID_FUSION_WEIGHT", 0.3),
            instruction=env.get("RERANK_INSTRUCTION", "").strip() or None,
            max_tokens=_int(env, "RERANK_MAX_TOKENS", 8192, minimum=16),
            max_tokens_per_doc=_int(env, "RERANK_MAX_TOKENS_PER_DOC", 0, minimum=16) or None,
            skim_tokens=_skim_tokens(env),
            skim_keep=_int(env, "RERANK_SKIM_KEEP", 10),
            backend=_choice(env, "RERANK_BACKEND", "auto", BACKENDS),
            device=_device(env),
            measure_budget=_float(env, "RERANK_MEASURE_SECONDS", 120.0),
            calibration=env.get("RERANK_CALIBRATION", "").strip() or None,
            memory_release_s=0.0 if env.get("RERANK_MEMORY_RELEASE_S", "").strip() == "0"
            else _float(env, "RERANK_MEMORY_RELEASE_S", 10.0),
            cache_mb=_int(env, "RERANK_CACHE_MB", 32, minimum=0),
            token_cache_mb=_int(env, "RERANK_TOKEN_CACHE_MB", 8, minimum=0),
        )
