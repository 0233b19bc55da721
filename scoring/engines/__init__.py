"""Engines: one replica of a checkpoint's forward pass on one runtime, behind one small interface.

Every engine tokenizes with the checkpoint's own fast tokenizer and pools as sentence-transformers
does, so fp32 scores agree with ``CrossEncoder.predict`` / ``SentenceTransformer.encode`` within
float rounding. Reduced-precision variants (bf16, int8) are candidates of their own, admitted only
by the fidelity gate in :mod:`scoring.choice`.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from scoring.checkpoint import Layout
from scoring.engines.base import Engine  # noqa: F401  (the interface every engine implements)
from scoring.errors import BackendError
from scoring.tokenizer import TextTokenizer

CPU_BACKENDS = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8",
                "onnxruntime-int8-static", "openvino-int8")
CUDA_BACKENDS = ("cuda-fp32", "cuda-fp16", "cuda-bf16")
BACKENDS = CPU_BACKENDS + CUDA_BACKENDS
_NEEDS = {"torch": ("torch",), "torch-bf16": ("torch",), "onnxruntime": ("onnxruntime",),
          "onnxruntime-int8": ("onnxruntime",), "onnxruntime-int8-static": ("onnxruntime",), "openvino": ("openvino",),
          "openvino-bf16": ("openvino",), "openvino-int8": ("openvino", "nncf"), "cuda-fp32": ("torch",),
          "cuda-fp16": ("torch",), "cuda-bf16": ("torch",)}
NATIVE_BF16 = ("torch-bf16", "openvino-bf16")
PRECISION = {"torch": "fp32", "torch-bf16": "bf16", "onnxruntime": "fp32", "openvino": "fp32",
             "openvino-bf16": "bf16", "onnxruntime-int8": "int8 (dynamic)", "onnxruntime-int8-static": "int8 (static)",
             "openvino-int8": "int8 (static, NNCF)", "cuda-fp32": "fp32", "cuda-fp16": "fp16", "cuda-bf16": "bf16"}
REDUCED_PRECISION = tuple(name for name, precision in PRECISION.items() if precision not in ("fp32",))
_GRAPH = {"onnxruntime": "fp32", "openvino": "fp32", "openvino-bf16": "fp32", "onnxruntime-int8": "int8",
          "onnxruntime-int8-static": "int8-static", "openvino-int8": "openvino-int8"}


@lru_cache(maxsize=1)
def _cpu_flags() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them ("" where it cannot be read); read once per process."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return any(flag in _cpu_flags() for flag in ("avx512_bf16", "amx_bf16"))


def cpu_has_int8_dot() -> bool:
    """True where the CPU multiplies int8 with 32-bit accumulation in one instruction (VNNI or AMX), where calibrated
    int8 graphs run far faster than fp32; with AVX2 alone they may not."""
    return any(flag in _cpu_flags() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def cuda_devices() -> int:
    """How many CUDA devices torch sees (0 without torch or without a GPU)."""
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch  # lazy: torch loads only on this path

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(setting: str, *, cuda_count: int | None = None) -> str:
    """``RERANK_DEVICE`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a torch device string.

    ``auto`` takes the first GPU where there is one; asking for a GPU that is not there is an error that
    says what is.
    """
    count = cuda_devices() if cuda_count is None else cuda_count
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return "cuda:0" if count > 0 else "cpu"
    if value == "cpu":
        return "cpu"
    if value == "cuda" or value.startswith("cuda:"):
        index = 0 if value == "cuda" else value.split(":", 1)[1]
        if not str(index).isdigit():
            raise ValueError(f"RERANK_DEVICE must be auto, cpu, cuda or cuda:N, got {setting!r}")
        if int(index) >= count:
            seen = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ValueError(f"RERANK_DEVICE={setting} but this machine has {seen}")
        return f"cuda:{int(index)}"
    raise ValueError(f"RERANK_DEVICE must be auto, cpu, cuda or cuda:N, got {setting!r}")


def settle(backend: str, device_setting: str, *, cuda_count: int | None = None) -> tuple[str, str]:
    """The (backend, device) to serve on from ``RERANK_BACKEND`` and ``RERANK_DEVICE``.

    ``torch`` on a GPU is ``cuda-fp32``; a CPU-only runtime (ONNX Runtime, OpenVINO) with ``RERANK_DEVICE=auto``
    runs on the CPU; asking for both a CPU-only runtime and a GPU is an error naming the two settings.
    """
    device = resolve_device(device_setting, cuda_count=cuda_count)
    if device != "cpu" and backend in CPU_BACKENDS and backend != "torch":
        if (device_setting or "auto").strip().lower() != "auto":
            raise ValueError(f"RERANK_BACKEND={backend} runs on the CPU but RERANK_DEVICE={device_setting} asks for a GPU")
        device = "cpu"
    if device != "cpu" and backend == "torch":
        backend = "cuda-fp32"
    return backend, device


def workers_for(device: str) -> int:
    """Worker threads: one per core on the CPU (each with its own replica); one on a GPU, which runs a request's
    pairs as one batch and merges waiting requests' batches. Measured on an H200 (bench/gpu.py): with cuDNN
    attention four threads sharing the model made fp16 passes 14x slower; with the packed engine two workers gave
    no steady gain (5-15% more throughput in one run, less in another) for a third more memory, so one stays."""
    return max(1, os.cpu_count() or 1) if device == "cpu" else 1


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads (one setting for the whole process), where torch is loaded."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, threads))


def backends_for(device: str) -> tuple[str, ...]:
    """The backends that run on ``device``; the first is its fp32 reference."""
    return CPU_BACKENDS if device == "cpu" else CUDA_BACKENDS


def unavailable(name: str, device: str = "cpu") -> str | None:
    """Why a backend cannot run on this machine (on ``device``), or None when it can."""
    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or auto"
    missing = [package for package in _NEEDS[name] if importlib.util.find_spec(package) is None]
    if missing:
        return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    if name in NATIVE_BF16 and not cpu_has_native_bf16():
        return "this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 would be emulated"
    if name in CUDA_BACKENDS:
        if device == "cpu" or cuda_devices() == 0:
            return "no CUDA device here (RERANK_DEVICE is cpu, or torch sees no GPU)"
        import torch  # lazy: torch loads only on this path

        if name == "cuda-bf16" and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(device)} has no bf16 arithmetic"
    elif device != "cpu":
        return f"{name} runs on the CPU; the model is served on {device}"
    return None


def create(name: str, model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, cache_dir: Path | None,
           threads: int = 1, trust_remote_code: bool = False, model=None, device: str = "cpu", packed: bool = True):
    """One engine replica of ``name`` for a checkpoint (exporting to ``cache_dir`` first where needed; ``packed``:
    a GPU cross-encoder may run padding-free, see :mod:`scoring.engines.packed`)."""
    from scoring.engines import onnx_engines
    from scoring.engines.torch_engine import torch_engine

    reason = unavailable(name, device)
    if reason:
        raise BackendError(f"backend {name!r} is unavailable: {reason}")
    if name in CUDA_BACKENDS:
        return torch_engine(model_dir, layout, tokenizer, trust_remote_code=trust_remote_code, model=model,
                            device=device, precision=name.split("-", 1)[1], packed=packed)
    if name in ("torch", "torch-bf16"):
        return torch_engine(model_dir, layout, tokenizer, bf16=name == "torch-bf16",
                            trust_remote_code=trust_remote_code, model=model)
    if cache_dir is None:
        raise BackendError(f"backend {name!r} needs a cache folder for its exported graph")
    try:
        path = onnx_engines.onnx_path(model_dir, layout, cache_dir, variant=_GRAPH[name],
                                      trust_remote_code=trust_remote_code, saturating=not cpu_has_int8_dot(),
                                      calibration=lambda: calibration_inputs(tokenizer, layout))
    except Exception as exc:
        raise BackendError(f"cannot export {model_dir.name} for {name}: {exc}") from exc
    try:
        if name.startswith("onnxruntime"):
            return onnx_engines.onnxruntime_engine(path, layout, tokenizer, threads=threads, name=name)
        return onnx_engines.openvino_engine(path, layout, tokenizer, threads=threads, bf16=name == "openvino-bf16",
                                            name=name)
    except Exception as exc:  # a damaged cached graph: remove it, so the next measurement exports it again
        path.unlink(missing_ok=True)
        path.with_suffix(".bin").unlink(missing_ok=True)
        raise BackendError(f"cannot run the cached graph {path.name} on {name} "
                           f"({str(exc).splitlines()[0][:200]}); removed it") from exc


def calibration_inputs(tokenizer: TextTokenizer, layout: Layout) -> list[dict]:
    """Model inputs a static quantization measures activation ranges on, one pair (or text) each: the probe's
    calibration pairs (:func:`scoring.probe.calibration_pairs`), as this checkpoint tokenizes them."""
    from scoring.probe import calibration_pairs

    pairs = calibration_pairs()
    if layout.mode == "cross-encoder":
        return [tokenizer.batch([pair], layout.max_length) for pair in pairs]
    texts = sorted({layout.query_prompt + q for q, _ in pairs}) + [layout.document_prompt + d for _, d in pairs]
    return [tokenizer.batch([text], layout.max_length) for text in texts]


def replicas(name: str, model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, cache_dir: Path | None,
             workers: int, trust_remote_code: bool = False, model=None, device: str = "cpu", threads: int = 1,
             packed: bool = True) -> list:
    """``workers`` engines of backend ``name``, each with its own tokenizer and ``threads`` threads (CPU torch: copies
    of one model; torch's thread count is one setting for the process; CUDA: one model on the GPU shared by every
    worker, whose CPU work overlaps the others' GPU work)."""
    if name in CUDA_BACKENDS:
        first = create(name, model_dir, layout, tokenizer.copy(), cache_dir=cache_dir, trust_remote_code=trust_remote_code,
                       model=model, device=device, packed=packed)
        return [first] + [create(name, model_dir, layout, tokenizer.copy(), cache_dir=cache_dir, model=first.model,
                                 device=device, packed=packed) for _ in range(workers - 1)]
    if name in ("torch", "torch-bf16"):
        import copy

        import torch  # lazy: torch loads only on this path

        if workers > 1 or threads > 1:
            torch.set_num_threads(threads)  # workers x threads cores
        first = create(name, model_dir, layout, tokenizer.copy(), cache_dir=cache_dir,
                       trust_remote_code=trust_remote_code, model=model)
        return [first] + [create(name, model_dir, layout, tokenizer.copy(), cache_dir=cache_dir,
                                 model=copy.deepcopy(first.model)) for _ in range(workers - 1)]
    return [create(name, model_dir, layout, tokenizer.copy(), cache_dir=cache_dir, threads=threads,
                   trust_remote_code=trust_remote_code) for _ in range(workers)]
