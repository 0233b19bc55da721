"""Where a batch's time goes in each exported graph, by operator: ONNX Runtime's profiler and OpenVINO's performance
counters, one thread, the same batches (shapes of a skimmed SciFact request: 3 pairs of 150 tokens, 1 of 420).

``python bench/graph_ops.py --model DIR [--backends onnxruntime,onnxruntime-int8,openvino,openvino-int8]`` makes
each graph as the app does on this CPU (7-bit weights where it has no int8 dot product) and prints each one's time
and its operators' shares, with the kernel each ran on (OpenVINO names it: ``jit_gemm_I8``, ``brgemm_avx2_f32``).
Under ``bench/avx2_only/run.sh`` it shows the AVX2 code paths.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import rerank
from scoring.engines import cpu_has_int8_dot
from scoring.engines.onnx_engines import graph_file

VARIANTS = {"onnxruntime": "fp32", "onnxruntime-int8": "int8", "openvino": "fp32", "openvino-int8": "openvino-int8"}
SHAPES = ((3, 150), (1, 420))


def batches(names: list[str]) -> list[dict]:
    """The batches every graph runs: random token ids in the shapes of :data:`SHAPES`, only the inputs it takes."""
    rng = np.random.default_rng(0)
    out = []
    for rows, length in SHAPES:
        feed = {"input_ids": rng.integers(1000, 20000, (rows, length)), "attention_mask": np.ones((rows, length)),
                "token_type_ids": np.zeros((rows, length))}
        out.append({k: v.astype(np.int64) for k, v in feed.items() if k in names})
    return out


def alternated(runs: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """The median seconds of each run, timed in rounds that take every run in turn, so a machine that speeds up or
    slows down moves them alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(t)) for name, t in times.items()}


def onnxruntime_ops(path: Path, tmp: Path) -> tuple[Callable[[], object], collections.Counter]:
    """A pass over the batches, and microseconds by operator type from ONNX Runtime's profiler."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    plain = onnxruntime.InferenceSession(str(path), options)
    feeds = batches([i.name for i in plain.get_inputs()])
    options.enable_profiling, options.profile_file_prefix = True, str(tmp / "ort")
    session = onnxruntime.InferenceSession(str(path), options)
    for feed in feeds:
        session.run(None, feed)
    ops = collections.Counter()
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            ops[event["args"]["op_name"]] += event["dur"]
    return lambda: [plain.run(None, f) for f in feeds], ops


def openvino_ops(path: Path) -> tuple[Callable[[], object], collections.Counter]:
    """A pass over the batches, and microseconds by (operator, kernel) from OpenVINO's performance counters."""
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    feeds = batches([i.get_any_name() for i in model.inputs])
    ops = collections.Counter()
    for feed in feeds:
        request.infer(feed)
        for counter in request.profiling_info:
            ops[f"{counter.node_type} ({counter.exec_type})"] += counter.real_time.total_seconds() * 1e6
    return lambda: [request.infer(f) for f in feeds], ops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a cross-encoder or embedding model folder")
    parser.add_argument("--backends", default=",".join(VARIANTS))
    parser.add_argument("--top", type=int, default=8, help="operators shown per graph")
    args = parser.parse_args()
    backends = args.backends.split(",")
    if unknown := [b for b in backends if b not in VARIANTS]:
        parser.error(f"--backends takes {', '.join(VARIANTS)}; got {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs, shares, files = {}, {}, {}
        for backend in backends:
            # loaded as the app loads it, to make its graph; closed at once, so no idle replica holds memory
            rerank.load_scorer(args.model, allow_fallback=False, backend=backend, cache_dir=tmp / "cache",
                               workers=1).close()
            files[backend] = graph_file(VARIANTS[backend], saturating=not cpu_has_int8_dot())
            path = next((tmp / "cache").glob(f"backends/*/{files[backend]}"))
            runs[backend], shares[backend] = openvino_ops(path) if backend.startswith("openvino") else \
                onnxruntime_ops(path, tmp)
        seconds = alternated(runs)
        for backend in backends:
            ops = shares[backend]
            total = sum(ops.values()) or 1
            print(f"{backend} ({files[backend]}): {seconds[backend] * 1000:.1f} ms a pass over "
                  f"{', '.join(f'{r}x{n}' for r, n in SHAPES)}, x{seconds[backends[0]] / seconds[backend]:.2f} "
                  f"the speed of {backends[0]}")
            for op, spent in ops.most_common(args.top):
                print(f"  {op:48s} {100 * spent / total:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
