"""Engines: one replica of a checkpoint's forward pass on one runtime, behind one small interface.

Every engine tokenizes with the checkpoint's own fast tokenizer and pools as sentence-transformers
does, so fp32 scores agree with ``CrossEncoder.predict`` / ``SentenceTransformer.encode`` within
float rounding. Reduced-precision variants (bf16, int8) are candidates of their own, admitted only
by the fidelity gate in :mod:`scoring.choice`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from scoring.checkpoint import Layout
from scoring.errors import BackendError
from scoring.tokenizer import TextTokenizer

BACKENDS = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8")
_NEEDS = {"torch": "torch", "torch-bf16": "torch", "onnxruntime": "onnxruntime", "onnxruntime-int8": "onnxruntime",
          "openvino": "openvino", "openvino-bf16": "openvino"}
NATIVE_BF16 = ("torch-bf16", "openvino-bf16")


class Engine(Protocol):
    """One replica of a model on one runtime; used by one thread at a time."""

    name: str

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs (cross-encoders)."""

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text (embedding models)."""


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def unavailable(name: str) -> str | None:
    """Why a backend cannot run on this machine, or None when it can."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or auto"
    if importlib.util.find_spec(_NEEDS[name]) is None:
        return f"{_NEEDS[name]} is not installed"
    if name in NATIVE_BF16 and not cpu_has_native_bf16():
        return "this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 would be emulated"
    return None


def create(name: str, model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, cache_dir: Path | None,
           threads: int = 1, trust_remote_code: bool = False, model=None):
    """One engine replica of ``name`` for a checkpoint (exporting to ``cache_dir`` first where needed)."""
    from scoring.engines import onnx_engines
    from scoring.engines.torch_engine import torch_engine

    reason = unavailable(name)
    if reason:
        raise BackendError(f"backend {name!r} is unavailable: {reason}")
    if name in ("torch", "torch-bf16"):
        return torch_engine(model_dir, layout, tokenizer, bf16=name == "torch-bf16",
                            trust_remote_code=trust_remote_code, model=model)
    if cache_dir is None:
        raise BackendError(f"backend {name!r} needs a cache folder for its exported graph")
    try:
        path = onnx_engines.onnx_path(model_dir, layout, cache_dir, int8=name == "onnxruntime-int8",
                                      trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise BackendError(f"cannot export {model_dir.name} for {name}: {exc}") from exc
    try:
        if name.startswith("onnxruntime"):
            return onnx_engines.onnxruntime_engine(path, layout, tokenizer, threads=threads)
        return onnx_engines.openvino_engine(path, layout, tokenizer, threads=threads, bf16=name == "openvino-bf16")
    except Exception as exc:  # a damaged cached graph: remove it, so the next measurement exports it again
        path.unlink(missing_ok=True)
        raise BackendError(f"cannot run the cached graph {path.name} on {name} "
                           f"({str(exc).splitlines()[0][:200]}); removed it") from exc


def replicas(name: str, model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, cache_dir: Path | None,
             workers: int, trust_remote_code: bool = False, model=None) -> list:
    """``workers`` engines of backend ``name``, each with its own tokenizer and one thread (torch: copies of one model)."""
    if name in ("torch", "torch-bf16"):
        import copy

        import torch

        if workers > 1:
            torch.set_num_threads(1)  # one core per worker thread
        first = create(name, model_dir, layout, tokenizer.copy(), cache_dir=cache_dir,
                       trust_remote_code=trust_remote_code, model=model)
        return [first] + [create(name, model_dir, layout, tokenizer.copy(), cache_dir=cache_dir,
                                 model=copy.deepcopy(first.model)) for _ in range(workers - 1)]
    return [create(name, model_dir, layout, tokenizer.copy(), cache_dir=cache_dir, threads=1,
                   trust_remote_code=trust_remote_code) for _ in range(workers)]
