"""The fidelity gate on real engines: it admits a faithful one and turns away one that reorders the top of fp32's
ranking (noise on its scores, a damaged quantized graph); static quantization is calibrated, cached and gated."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import rerank
from scoring import choice, engines, fidelity
from scoring.checkpoint import layout_of
from scoring.engines import onnx_engines
from scoring.tokenizer import TextTokenizer
from tests.support import ROOT

pytestmark = pytest.mark.skipif(engines.unavailable("onnxruntime") is not None, reason="onnxruntime is not installed")


class Noisy:
    """A real engine whose embeddings get seeded noise: it ranks like a drifting reduced-precision engine."""

    def __init__(self, engine, scale: float) -> None:
        self.engine, self.scale = engine, scale
        self.rng = np.random.default_rng(0)

    def embed(self, texts, *, query: bool = False):
        vectors = self.engine.embed(texts, query=query)
        noisy = vectors + self.rng.normal(0.0, self.scale, vectors.shape).astype(np.float32)
        return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def packaged():
    """The packaged embedding model's folder, layout and tokenizer: a trained model whose probe scores spread."""
    path = rerank.packaged_model_path()
    return path, layout_of(path, "embedding"), TextTokenizer.from_dir(path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache holding the packaged model's fp32 and static int8 graphs, made in a child process: exporting and
    calibrating hold the GIL for seconds, which would stall the event loop of any app served in this process."""
    folder = tmp_path_factory.mktemp("gate-cache")
    make = ("import sys; from pathlib import Path; import rerank; from scoring import engines; "
            "from scoring.checkpoint import layout_of; from scoring.tokenizer import TextTokenizer; "
            "p = rerank.packaged_model_path(); "
            "[engines.replicas(n, p, layout_of(p, 'embedding'), TextTokenizer.from_dir(p), "
            "cache_dir=Path(sys.argv[1]), workers=1) for n in ('onnxruntime', 'onnxruntime-int8-static')]")
    subprocess.run([sys.executable, "-c", make, str(folder)], check=True, cwd=ROOT, timeout=600)
    return folder


def _replicas(name, packaged, cache, workers=2):
    path, layout, tokenizer = packaged
    return engines.replicas(name, path, layout, tokenizer, cache_dir=cache, workers=workers)


@pytest.fixture(scope="module")
def fp32(packaged, cache):
    """fp32 torch's scores of the fidelity probe: the ranking every candidate is judged against."""
    return choice.fidelity_scores(_replicas("torch", packaged, cache), packaged[1])


def _judged(name: str, replicas: list, layout, fp32, seconds: float) -> choice.Measurement:
    return choice.Measurement.of(name, seconds, seconds, fidelity.compare(choice.fidelity_scores(replicas, layout), fp32))


def test_the_gate_admits_a_faithful_engine_and_rejects_noise_that_reorders_the_top(packaged, cache, fp32):
    layout = packaged[1]
    faithful = _judged("onnxruntime", _replicas("onnxruntime", packaged, cache), layout, fp32, 1.0)
    noisy = _judged("noisy", [Noisy(r, 0.08) for r in _replicas("onnxruntime", packaged, cache)], layout, fp32, 0.01)
    assert faithful.faithful and faithful.ndcg > 0.999 and faithful.top10 == 1.0, faithful
    assert not noisy.faithful and "reorders the top of fp32's ranking" in noisy.verdict(), noisy
    reference = choice.Measurement("torch", 1.0, 1.0, 1.0, 1.0, 1.0, 0.0)
    assert choice.pick([reference, faithful, noisy]) != "noisy"  # however fast, what the gate turns away never serves


def test_static_quantization_is_calibrated_cached_and_a_damaged_graph_is_turned_away(packaged, cache, fp32):
    import onnx
    from onnx import numpy_helper

    path, layout, _ = packaged
    static = _replicas("onnxruntime-int8-static", packaged, cache)
    graph = onnx_engines.onnx_path(path, layout, cache, variant="int8-static")
    model = onnx.load(str(graph))
    kinds = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds  # activations quantized with calibrated ranges
    made = graph.stat().st_mtime_ns  # made by the fixture's process, read from the cache here
    assert _replicas("onnxruntime-int8-static", packaged, cache)[0].name == "onnxruntime-int8-static"
    assert graph.stat().st_mtime_ns == made
    texts = ["json.loads parses a JSON document", "tulips bloom in spring", "subprocess.run runs a command"]
    plain = _replicas("onnxruntime", packaged, cache)[0]
    assert fidelity.spearman(static[0].embed(texts) @ static[0].embed(["parse json"], query=True)[0],
                             plain.embed(texts) @ plain.embed(["parse json"], query=True)[0]) > 0.4

    scales = [i for i in model.graph.initializer if i.name.endswith("_scale") and "MatMul" in i.name]
    for initializer in scales[: len(scales) // 2]:  # a damaged graph: half the weight scales off by 4x
        initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer) * 4.0, initializer.name))
    damaged_path = graph.with_name("damaged.onnx")
    onnx.save(model, str(damaged_path))
    damaged = [onnx_engines.onnxruntime_engine(damaged_path, layout, packaged[2].copy(), name="damaged")
               for _ in range(2)]
    verdict = _judged("damaged", damaged, layout, fp32, 0.01)
    assert not verdict.faithful and verdict.ndcg < 1.0, verdict


@pytest.mark.skipif(engines.unavailable("openvino-int8") is not None, reason="OpenVINO or NNCF is not installed")
def test_where_int8_sums_saturate_every_int8_graph_gets_7_bit_weights_cached_apart(tiny_cross_encoder_dir, tmp_path,
                                                                                     monkeypatch):
    import onnx
    import openvino
    from onnx import numpy_helper

    layout = layout_of(tiny_cross_encoder_dir, "cross-encoder")
    tokenizer = TextTokenizer.from_dir(tiny_cross_encoder_dir)
    pairs = ["json.loads parses a JSON document", "tulips bloom in spring"]

    def int8_under(node, depth: int = 4) -> list:
        """The int8 constants a node's inputs are computed from (an IR weight: i8 -> Convert -> Subtract -> Multiply)."""
        if node.get_type_name() == "Constant":
            return [node.get_data()] if node.get_element_type() == openvino.Type.i8 else []
        return [c for value in node.input_values() for c in int8_under(value.get_node(), depth - 1)] if depth else []

    def widest(graph) -> int:
        """The largest magnitude among the int8 weights the graph multiplies activations by (not embedding tables,
        which are looked up, not summed)."""
        if graph.suffix == ".xml":
            constants = [c for op in openvino.Core().read_model(str(graph)).get_ops() if op.get_type_name() == "MatMul"
                         for c in int8_under(op.input_value(1).get_node())]
        else:
            constants = [numpy_helper.to_array(i) for i in onnx.load(str(graph)).graph.initializer
                         if i.data_type == onnx.TensorProto.INT8]
        assert constants, graph.name
        return max(int(np.abs(c.astype(np.int32)).max()) for c in constants)

    for saturating in (False, True):  # a VNNI CPU, then one with AVX2 alone, whatever this machine is
        monkeypatch.setattr(engines, "cpu_has_int8_dot", lambda saturating=saturating: not saturating)
        for name, variant in (("onnxruntime-int8", "int8"), ("openvino-int8", "openvino-int8")):
            engine = engines.create(name, tiny_cross_encoder_dir, layout, tokenizer.copy(), cache_dir=tmp_path)
            assert np.isfinite(engine.score_pairs("parse json", pairs)).all()
            graph = onnx_engines.onnx_path(tiny_cross_encoder_dir, layout, tmp_path, variant=variant,
                                           saturating=saturating)
            assert graph.name == onnx_engines.graph_file(variant, saturating=saturating)
            assert ("-w7." in graph.name) == saturating
            if saturating:  # 7 bits: no pair of products overflows a 16-bit sum
                assert widest(graph) <= 64, (name, widest(graph))
            else:
                assert widest(graph) > 64, (name, widest(graph))
