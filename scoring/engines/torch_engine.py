"""The transformers model on torch: on the CPU (fp32, or bf16 autocast where the CPU computes bf16 natively)
or on a CUDA GPU (fp32, fp16 or bf16 weights; SDPA attention; pinned host memory; one model shared by the
worker threads, so one thread's tokenization overlaps another's forward pass)."""

from __future__ import annotations

import contextlib
import inspect
import logging
from pathlib import Path

import numpy as np

from scoring.checkpoint import Layout
from scoring.engines.graph import GraphEngine
from scoring.tokenizer import TextTokenizer

log = logging.getLogger("rag_augment.engines")
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def model_inputs(model) -> list[str]:
    """The tokenizer outputs the model's forward takes."""
    names = inspect.signature(model.forward).parameters
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]


def torch_model(model_dir: Path, layout: Layout, trust_remote_code: bool, *, device: str = "cpu",
                precision: str = "fp32", attention: str | None = None):
    """The transformers model behind a checkpoint, in eval mode, on ``device`` in ``precision`` (``attention``: an
    attention implementation to ask for; a GPU asks for SDPA)."""
    import torch  # lazy: torch loads only on this path
    from transformers import AutoModel, AutoModelForSequenceClassification  # lazy: transformers loads only on this path
    from transformers.utils import logging as hf_logging  # lazy: transformers loads only on this path

    hf_logging.disable_progress_bar()
    cls = AutoModelForSequenceClassification if layout.mode == "cross-encoder" else AutoModel
    attention = attention or ("sdpa" if device != "cpu" else None)
    options = {"attn_implementation": attention} if attention else {}
    try:
        model = cls.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code, **options)
    except (ValueError, ImportError):  # an architecture without that attention: its default one
        model = cls.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code)
    return model.to(device=device, dtype=getattr(torch, PRECISIONS[precision])).eval()


def output_name(layout: Layout) -> str:
    """The model output the engines read: the ranking logits or the token states."""
    return "logits" if layout.mode == "cross-encoder" else "last_hidden_state"


def gpu_decorator():
    """Hugging Face ZeroGPU's ``spaces.GPU`` (a GPU is attached for the call); off ZeroGPU, or without the
    ``spaces`` package, the work runs as it is."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return lambda fn: fn
    return spaces.GPU


def torch_engine(model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, bf16: bool = False,
                 trust_remote_code: bool = False, model=None, device: str = "cpu", precision: str = "fp32",
                 packed: bool = True):
    """One torch replica. CPU: fp32, or bf16 autocast with ``bf16``. CUDA: weights in ``precision``; a cross-encoder
    the packed path supports runs packed (``packed=False``: padded, as transformers runs it)."""
    import torch  # lazy: torch loads only on this path

    on_gpu = device != "cpu"
    if model is None:
        model = torch_model(model_dir, layout, trust_remote_code, device=device, precision=precision if on_gpu else "fp32")
    key = output_name(layout)
    if on_gpu and packed and layout.mode == "cross-encoder":
        from scoring.engines.packed import PackedEngine, unsupported, varlen_attention

        attention = varlen_attention()
        why = unsupported(model, precision, attention)
        if why is None:
            engine = PackedEngine(f"cuda-{precision}", tokenizer, layout, model, device=device, attention=attention)
            why = engine.failure()
            if why is None:
                if graphs := engine.use_graphs():
                    log.info("cuda-%s runs packed without CUDA graphs: %s", precision, graphs)
                return engine
        log.info("cuda-%s runs padded batches: %s", precision, why)
    if on_gpu:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # lazy: torch loads only on this path

        # PyTorch's own attention kernels, not cuDNN's: measured on an H200 (bench/gpu.py), cuDNN attention's
        # per-shape plans put fp16 at p50 21.8 / p95 55.0 ms for 50 documents against 19.4 / 22.5 ms without it.
        kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

        @gpu_decorator()
        def forward(batch: dict) -> np.ndarray:
            tensors = {k: torch.from_numpy(v).pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
            with torch.inference_mode(), sdpa_kernel(kernels):
                return getattr(model(**tensors), key).float().cpu().numpy()

        return GraphEngine(f"cuda-{precision}", tokenizer, layout, forward, model_inputs(model), model=model,
                           device=device, pad_to_multiple_of=8)

    def cpu_forward(batch: dict) -> np.ndarray:
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return getattr(model(**tensors), key).float().numpy()

    return GraphEngine("torch-bf16" if bf16 else "torch", tokenizer, layout, cpu_forward, model_inputs(model), model=model)
