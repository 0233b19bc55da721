"""Int8 graphs made once from the exported fp32 graph, with the runtimes' own quantization tools.

* **Dynamic** (ONNX Runtime ``quantize_dynamic``): weights int8 per output channel, activations quantized on the fly;
  the graph first goes through ONNX Runtime's transformer fusions (attention, layer norms, GELU) where they apply,
  so attention itself runs in int8 (``QAttention``).
* **Static** (ONNX Runtime ``quantize_static``, QDQ): the linear layers' activations get fixed ranges measured on
  calibration pairs (:func:`scoring.probe.calibration_pairs`), so nothing is measured per request; weights per
  channel.
* **OpenVINO** (NNCF post-training quantization, transformer preset): calibrated on the same pairs.

On a CPU without an int8 dot product (AVX2 alone: no VNNI, no AMX) the int8 kernels add pairs of 8-bit products in
16-bit sums that saturate; there every graph gets 7-bit weights (``saturating``: ONNX Runtime's ``reduce_range``,
NNCF's overflow fix on every layer), the runtimes' own advice against it.

Operations that cost fidelity stay in fp32 (mixed precision): ``exclude`` names graph nodes left unquantized; which
ones is decided by measurement (:data:`KEEP_FP32`). Whether any of these graphs serves is for the fidelity gate to
say (:mod:`scoring.fidelity`).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger("rag_augment.engines")

# Graph nodes whose quantization costs ranking fidelity more than it saves time, by measurement (bench/gate.py):
# the last encoder layer's feed-forward output (its activations carry the outliers the score is read from)
KEEP_FP32: tuple[str, ...] = ()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantizers log a line per tensor at INFO; silence them while they run."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def fused(fp32: Path, target: Path, *, heads: int = 0, hidden: int = 0) -> Path:
    """The fp32 graph with ONNX Runtime's transformer fusions (BERT-like encoders: ``heads`` attention heads over
    ``hidden`` wide states, which the fusion cannot always read off the graph); the graph as it was where the fusions
    do not apply."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model  # lazy: onnxruntime loads only on this path

        with _quiet():
            optimize_model(str(fp32), model_type="bert", num_heads=heads, hidden_size=hidden).save_model_to_file(
                str(target))
        return target
    except Exception as exc:  # another architecture's graph: quantize it unfused
        log.info("transformer fusions do not apply to %s (%s); quantizing it as exported", fp32.name,
                 str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        target.unlink(missing_ok=True)
        return fp32


def dynamic_int8(fp32: Path, target: Path, *, exclude: Sequence[str] = (), heads: int = 0, hidden: int = 0,
                 saturating: bool = False) -> None:
    """Dynamically quantized: int8 weights per output channel, activations quantized as they come (``heads``,
    ``hidden``: the encoder's shape, for the attention fusion; ``saturating``: 7-bit weights, for a CPU without an
    int8 dot product)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: onnxruntime loads only on this path

    source = fused(fp32, target.with_suffix(".fused.onnx"), heads=heads, hidden=hidden)
    try:
        with _quiet():
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=saturating, nodes_to_exclude=list(exclude) or None,
                             extra_options={"DefaultTensorType": 1})  # fp32 where fused operators hide a tensor's type
    finally:
        if source != fp32:
            source.unlink(missing_ok=True)


def static_int8(fp32: Path, target: Path, inputs: Iterable[dict], *, exclude: Sequence[str] = (),
                saturating: bool = False) -> None:
    """Statically quantized (QDQ): the linear layers' weights per channel, their activations with ranges measured on
    ``inputs`` (model inputs as numpy arrays, one calibration pair each; ``saturating``: 7-bit weights)."""
    import onnx  # lazy: onnx loads only on this path
    from onnxruntime.quantization import (  # lazy: onnxruntime loads only on this path
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    names = [i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._inputs = ({k: batch[k] for k in names} for batch in inputs)

        def get_next(self) -> dict | None:
            return next(self._inputs, None)

    prepared = target.with_suffix(".prepared.onnx")
    try:
        with _quiet():
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=saturating, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                            nodes_to_exclude=list(exclude) or None, extra_options={"MatMulConstBOnly": True})
    finally:
        prepared.unlink(missing_ok=True)


def openvino_int8(fp32: Path, target: Path, inputs: list[dict], *, saturating: bool = False) -> None:
    """OpenVINO's int8 model (NNCF post-training quantization with its transformer preset), calibrated on ``inputs``;
    saved as OpenVINO IR (``target`` .xml with its .bin). ``saturating``: 7-bit weights in every layer (NNCF's own
    default fixes the first layer only)."""
    import nncf  # lazy: nncf loads only on this path
    import openvino  # lazy: openvino loads only on this path
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    model = openvino.Core().read_model(str(fp32))
    names = [i.get_any_name() for i in model.inputs]
    samples = [{k: batch[k] for k in names} for batch in inputs]
    with _quiet(), contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: never on a --json stdout
        quantized = nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(samples), advanced_parameters=AdvancedQuantizationParameters(
                                      overflow_fix=OverflowFix.ENABLE if saturating else None))
    openvino.save_model(quantized, str(target))
