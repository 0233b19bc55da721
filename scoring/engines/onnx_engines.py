"""ONNX Runtime and OpenVINO: a graph exported once from the torch model into the cache folder.

They import in well under a second where torch and transformers take several, which is most of a
cold start. OpenVINO runs in fp32 unless asked for bf16: its own default is bf16 wherever the CPU
has it, which would make the backend called ``openvino`` change its numbers from machine to machine.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scoring.checkpoint import Layout, digest, file_list, read_json
from scoring.engines import quantize
from scoring.engines.graph import GraphEngine
from scoring.engines.torch_engine import model_inputs, output_name, torch_model
from scoring.stale_files import remove_if_owner_gone
from scoring.tokenizer import TextTokenizer

log = logging.getLogger("rag_augment.engines")
_EXPORT_LOCK = threading.RLock()
PARTIAL = ".partial."  # files in progress: model.<pid>.partial.onnx (or .xml / .bin)
EXPORT_VERSION = 2  # exported with eager attention: plain matmuls and softmax, no masking over the scores
GRAPHS = {"fp32": "model.onnx", "int8": "model-int8.onnx", "int8-static": "model-int8-static.onnx",
          "openvino-int8": "model-int8-openvino.xml"}
SEVEN_BIT = "-w7"  # the int8 graphs made for a CPU whose int8 sums saturate (:mod:`scoring.engines.quantize`)


def export_folder(model_dir: Path, layout: Layout, cache_dir: Path) -> Path:
    """Where a checkpoint's exports (and its measured choice) live: keyed by path, files, mtimes, layout and how
    graphs are exported."""
    mtimes = sorted(f.stat().st_mtime_ns for f in Path(model_dir).glob("*") if f.is_file())
    return Path(cache_dir) / "backends" / digest(str(Path(model_dir).resolve()), file_list(model_dir), mtimes, layout,
                                                 EXPORT_VERSION)


def graph_file(variant: str, *, saturating: bool = False) -> str:
    """The file a variant's graph is cached in: int8 graphs with 7-bit weights (``saturating``) are named apart, so a
    cache carried to another kind of CPU never serves a graph made for the other."""
    name = GRAPHS[variant]
    if variant == "fp32" or not saturating:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}{SEVEN_BIT}.{suffix}"


def onnx_path(model_dir: Path, layout: Layout, cache_dir: Path, *, variant: str = "fp32",
              trust_remote_code: bool = False, calibration: Callable[[], list[dict]] | None = None,
              saturating: bool = False) -> Path:
    """The checkpoint's graph in ``variant`` (:data:`GRAPHS`: fp32, int8 dynamic, int8 static, OpenVINO int8), made
    once into ``cache_dir``; ``calibration`` gives the model inputs a static quantization measures its ranges on;
    ``saturating``: int8 with 7-bit weights, for a CPU without an int8 dot product."""
    folder = export_folder(model_dir, layout, cache_dir)
    target = folder / graph_file(variant, saturating=saturating)
    with _EXPORT_LOCK:
        if target.is_file():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"{target.stem}.{os.getpid()}{PARTIAL}{target.suffix[1:]}"  # sharing processes never clobber
        try:
            if variant == "fp32":
                _export(model_dir, layout, partial, trust_remote_code)
            else:
                fp32 = onnx_path(model_dir, layout, cache_dir, trust_remote_code=trust_remote_code)
                _quantize(variant, fp32, partial, calibration, read_json(Path(model_dir) / "config.json"),
                          saturating=saturating)
            if partial.suffix == ".xml":  # OpenVINO IR: its weights first, so a complete .xml means a complete pair
                partial.with_suffix(".bin").replace(target.with_suffix(".bin"))
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
            partial.with_suffix(".bin").unlink(missing_ok=True)
        log.info("made %s of %s in %s", variant, model_dir.name, target)
    return target


def _quantize(variant: str, fp32: Path, target: Path, calibration: Callable[[], list[dict]] | None,
              config: dict, *, saturating: bool) -> None:
    """One of the int8 graphs of :mod:`scoring.engines.quantize` from the fp32 graph (``config``: the checkpoint's)."""
    if variant == "int8":
        quantize.dynamic_int8(fp32, target, exclude=quantize.KEEP_FP32, heads=int(config.get("num_attention_heads") or 0),
                              hidden=int(config.get("hidden_size") or 0), saturating=saturating)
        return
    if calibration is None:
        raise ValueError(f"the {variant} graph needs calibration inputs")
    if variant == "int8-static":
        quantize.static_int8(fp32, target, calibration(), exclude=quantize.KEEP_FP32, saturating=saturating)
    else:
        quantize.openvino_int8(fp32, target, calibration(), saturating=saturating)


def _export(model_dir: Path, layout: Layout, target: Path, trust_remote_code: bool) -> None:
    """torch.onnx export with batch and sequence as dynamic axes, of the model with eager attention: the SDPA export
    adds a masking pass over every attention score (Where, IsNaN), 13% of the time on one CPU core."""
    import torch  # lazy: torch loads only on this path

    model = torch_model(model_dir, layout, trust_remote_code, attention="eager")
    names = model_inputs(model)
    output = output_name(layout)

    class Graph(torch.nn.Module):
        """The encoder with exactly the inputs the tokenizer gives and the one output the engines read."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return getattr(self.model(**dict(zip(names, tensors, strict=True))), output)

    example = tuple(torch.zeros((2, 8), dtype=torch.int64) if n == "token_type_ids" else torch.ones((2, 8), dtype=torch.int64)
                    for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[output] = {0: "batch"} if layout.mode == "cross-encoder" else {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(Graph().eval(), example, str(target), input_names=names, output_names=[output],
                          dynamic_axes=axes, opset_version=17, dynamo=False)


def onnxruntime_engine(path: Path, layout: Layout, tokenizer: TextTokenizer, *, threads: int = 1,
                       name: str = "onnxruntime") -> GraphEngine:
    """An ONNX Runtime session on the CPU with ``threads`` intra-op threads."""
    import onnxruntime  # lazy: onnxruntime loads only on this path

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    return GraphEngine(name, tokenizer, layout, lambda batch: session.run(None, batch)[0], inputs)


def openvino_engine(path: Path, layout: Layout, tokenizer: TextTokenizer, *, threads: int = 1,
                    bf16: bool = False, name: str = "openvino") -> GraphEngine:
    """An OpenVINO compiled model on the CPU: fp32 on every CPU unless ``bf16`` (precision is always explicit)."""
    import openvino  # lazy: openvino loads only on this path

    core = openvino.Core()
    model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                                                 "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()
    inputs = [i.get_any_name() for i in model.inputs]

    def forward(batch: dict) -> np.ndarray:
        return np.array(request.infer(batch)[0])

    engine = GraphEngine(name, tokenizer, layout, forward, inputs)
    # One inference here, on the creating thread: OpenVINO's Python binding sets up its numpy bridge on first use,
    # and two worker threads doing that at the same moment deadlock inside pybind11 (seen: both replicas' first
    # infer() waiting forever). It also keeps the first-inference cost out of the first request.
    if layout.mode == "cross-encoder":
        engine.score_pairs("warm up", ["warm up"])
    else:
        engine.embed(["warm up"])
    return engine


def remove_stale_exports(cache_dir: Path) -> list[Path]:
    """Delete half-written exports left by processes that are gone (their pid is in the name)."""

    def pid(path: Path) -> str:
        parts = path.name.split(".")
        return parts[parts.index("partial") - 1]

    return remove_if_owner_gone(Path(cache_dir).glob(f"backends/*/*{PARTIAL}*"), pid)
