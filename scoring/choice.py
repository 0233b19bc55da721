"""Which engine serves here: measured on fixed probes, admitted by a fidelity gate, remembered per machine.

:func:`choose` times every available candidate on the timing probe, one replica per worker as the pool runs
them, and keeps the fastest that ranks the fidelity probe's questions as fp32 torch does
(:mod:`scoring.fidelity`: nDCG@10 with fp32's scores as gains, and top-10 agreement; reduced precision is
admitted only by measurement, never assumed). Each candidate is timed in rounds alternating with the reference and
judged by its time relative to the reference's in the same rounds, so a machine that slows down or speeds up over
the minutes of measuring (other load, clocks) moves both alike. Among candidates within 5% of the fastest (more
where those relative times were noisier), the one that starts quickest wins.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scoring import engines
from scoring.batching import batching_for, plan_batches, spread_budget
from scoring.checkpoint import Layout, digest, read_json
from scoring.engines.onnx_engines import export_folder
from scoring.fidelity import Agreement, compare
from scoring.probe import PROBE_QUERY, fidelity_probe, probe_documents
from scoring.tokenizer import TextTokenizer

log = logging.getLogger("rag_augment.choice")

TIE = 0.05  # candidates within 5% of the fastest count as equally fast; the lighter start-up wins
_START_COST = {"onnxruntime": 0, "onnxruntime-int8": 1, "onnxruntime-int8-static": 2, "openvino": 3, "openvino-bf16": 4,
               "openvino-int8": 5, "torch": 6, "torch-bf16": 7, "cuda-fp32": 8, "cuda-bf16": 9, "cuda-fp16": 10}
REDUCED_PRECISION = engines.REDUCED_PRECISION  # admitted only through the gate
# the order candidates are measured in, most promising first, so a spent budget skips the least likely winners; with
# int8 dot products (VNNI, AMX) OpenVINO's calibrated int8 led on every model measured, with AVX2 alone it came last
_FIRST = ("onnxruntime-int8", "onnxruntime", "torch-bf16", "openvino-bf16", "onnxruntime-int8-static", "openvino",
          "openvino-int8")
_FIRST_WITH_INT8_DOT = ("openvino-int8", *_FIRST[:-1])


def measuring_order(names: Sequence[str], *, int8_dot: bool | None = None) -> tuple[str, ...]:
    """The device's backends with its fp32 reference first, then the CPU's most promising candidates first (``int8_dot``:
    whether the CPU has int8 dot-product instructions; read from the CPU when not given)."""
    fast_int8 = engines.cpu_has_int8_dot() if int8_dot is None else int8_dot
    rank = {name: n for n, name in enumerate(_FIRST_WITH_INT8_DOT if fast_int8 else _FIRST)}
    return (names[0], *sorted(names[1:], key=lambda name: rank.get(name, len(rank))))


def probe_scores(replicas: Sequence, layout: Layout, documents: Sequence[str], device: str = "cpu", *,
                 query: str = PROBE_QUERY) -> np.ndarray:
    """Scores (logits or cosines) of ``documents`` for ``query`` on one backend, run as the scorer runs one request of
    these documents: batched by its own plan for this many workers on this device (:mod:`scoring.batching`), each free
    worker taking the next batch, so the timing probe times what a request costs with this shape."""
    limits = batching_for(device)
    lengths = [len(query.split()) + len(d.split()) * 4 // 3 + 3 for d in documents]  # about their tokens
    budget = spread_budget(lengths, limits["token_budget"], len(replicas), limits["batch_size"])
    batches: queue.SimpleQueue = queue.SimpleQueue()
    for batch in plan_batches(lengths, budget, limits["batch_size"]):
        batches.put(batch)
    vector = replicas[0].embed([query], query=True)[0] if layout.mode == "embedding" else None
    out = np.zeros(len(documents), dtype=np.float64)

    def work(n: int) -> None:
        engine = replicas[n]
        while True:
            try:
                chunk = batches.get_nowait()
            except queue.Empty:
                return
            texts = [documents[i] for i in chunk]
            out[chunk] = engine.score_pairs(query, texts) if vector is None else engine.embed(texts) @ vector

    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(work, range(len(replicas))))
    return out


def fidelity_scores(replicas: Sequence, layout: Layout, device: str = "cpu") -> list[np.ndarray]:
    """One backend's scores for each question of the fidelity probe (:func:`scoring.probe.fidelity_probe`)."""
    return [probe_scores(replicas, layout, q.documents, device, query=q.query) for q in fidelity_probe()]


@dataclass
class Measurement:
    """One candidate: seconds per timing probe, how it ranks the fidelity probe against fp32, or why it was skipped."""

    backend: str
    seconds: float | None = None
    ndcg: float | None = None  # mean nDCG@10 with fp32's scores as gains (scoring.fidelity)
    top10: float | None = None  # mean share of fp32's top 10 kept
    worst_ndcg: float | None = None
    spearman: float | None = None  # reported, not gated
    max_diff_of_range: float | None = None  # reported, not gated
    note: str = ""
    relative: float | None = None  # median over rounds of its time / the reference's time in the same round

    @classmethod
    def of(cls, backend: str, seconds: float, relative: float, agreement: Agreement | None) -> Measurement:
        """A timed candidate and, where judged, its agreement with fp32 on the fidelity probe."""
        if agreement is None:
            return cls(backend, seconds, relative=relative)
        return cls(backend, seconds, agreement.ndcg, agreement.top10, agreement.worst_ndcg, agreement.spearman,
                   agreement.max_diff_of_range, relative=relative)

    @property
    def speed(self) -> float | None:
        """What candidates are compared by: the time relative to the reference where measured so, else seconds."""
        return self.relative if self.relative is not None else self.seconds

    @property
    def agreement(self) -> Agreement | None:
        if self.ndcg is None or self.top10 is None:
            return None
        return Agreement(self.ndcg, self.top10, self.worst_ndcg if self.worst_ndcg is not None else self.ndcg,
                         self.spearman or 0.0, self.max_diff_of_range or 0.0)

    @property
    def faithful(self) -> bool:
        """Measured, and it keeps the top of fp32's ranking on the fidelity probe (:mod:`scoring.fidelity`)."""
        agreement = self.agreement
        return self.seconds is not None and agreement is not None and agreement.admitted

    def verdict(self) -> str:
        """What the gate found, in numbers."""
        agreement = self.agreement
        return agreement.verdict() if agreement else (self.note or "not measured")


@dataclass
class Choice:
    """The backend in use and how it was chosen, for /info, the UI and the logs."""

    backend: str
    how: str
    measurements: list[Measurement] = field(default_factory=list)
    device: str = "cpu"
    workers: int | None = None  # None: one per core (the default shape)
    threads: int = 1
    shapes: list[dict] = field(default_factory=list)  # workers x threads measured on the chosen backend
    provisional: bool = False  # the default, served until the backends have been measured on this machine

    @property
    def precision(self) -> str:
        """The arithmetic the backend computes in."""
        return engines.PRECISION.get(self.backend, "fp32")

    def describe(self) -> str:
        shape = f", {self.workers} workers x {self.threads} threads" if self.workers else ""
        return f"{self.backend} on {self.device} in {self.precision}{shape} ({self.how})"

    def as_dict(self) -> dict:
        return {"backend": self.backend, "device": self.device, "precision": self.precision, "how": self.how,
                "workers": self.workers, "threads": self.threads, "shapes": self.shapes,
                "measurements": [asdict(m) for m in self.measurements]}


def measure(reference: list, candidates: dict[str, Callable[[], list]], layout: Layout, *, rounds: int = 3,
            reference_name: str = "torch", budget_s: float | None = None, device: str = "cpu",
            judge: bool = True) -> tuple[list[Measurement], list[Measurement], float]:
    """Time the fp32 reference and each candidate's replicas on the timing probe; with ``judge``, first compare each
    candidate's ranking of the fidelity probe with the reference's (one that fails is timed once, not in rounds).

    Candidates are built and dropped one at a time (memory stays at two copies of the model beside the
    serving one), and each is timed in rounds alternating with the reference so background load hits both alike;
    its ``relative`` time is the median of its round-by-round ratios to the reference. Returns the measurements, the
    candidates that could not be built (or were not reached within ``budget_s`` seconds) and the noise of those
    ratios (:func:`ratio_noise`).
    """
    started = time.perf_counter()
    documents = probe_documents()
    expected = fidelity_scores(reference, layout, device) if judge else None
    reference_times: list[float] = []
    ratios: list[list[float]] = []
    measured, skipped = [], []

    def timed(replicas: list) -> float:
        started = time.perf_counter()
        probe_scores(replicas, layout, documents, device)
        return time.perf_counter() - started

    for name, build in candidates.items():
        if budget_s is not None and time.perf_counter() - started > budget_s:
            skipped.append(Measurement(backend=name, note=f"not measured: the {budget_s:g} s measuring budget was spent"))
            continue
        try:
            replicas = build()
        except Exception as exc:
            skipped.append(Measurement(backend=name, note=str(exc).splitlines()[0][:200]))
            continue
        agreement = compare(fidelity_scores(replicas, layout, device), expected) if expected is not None else None
        probe_scores(replicas, layout, documents, device)  # the warm-up
        times, paired = [], []
        for _ in range(rounds if agreement is None or agreement.admitted else 1):
            reference_times.append(timed(reference))
            times.append(timed(replicas))
            paired.append(times[-1] / reference_times[-1])
        ratios.append(paired)
        measured.append(Measurement.of(name, float(np.median(times)), float(np.median(paired)), agreement))
        del replicas
    if not reference_times:
        reference_times = [timed(reference) for _ in range(rounds)]
    seconds = float(np.median(reference_times))
    first = (Measurement(reference_name, seconds, 1.0, 1.0, 1.0, 1.0, 0.0, relative=1.0) if judge
             else Measurement(reference_name, seconds, relative=1.0))
    return [first, *measured], skipped, ratio_noise(ratios) if ratios else noise(reference_times)


def pick(measurements: Sequence[Measurement], *, margin: float = TIE) -> str:
    """The fastest faithful backend; within ``margin`` of the fastest (at least 5%, more where the run-to-run
    noise was larger), the one that starts quickest. The first measurement is the fp32 reference."""
    faithful = [m for m in measurements if m.faithful]
    if not faithful:  # the fp32 reference of the device measured
        return "cuda-fp32" if any(m.backend in engines.CUDA_BACKENDS for m in measurements) else "torch"
    best = min(m.speed for m in faithful)  # type: ignore[type-var]
    close = [m for m in faithful if m.speed <= best * (1 + max(TIE, margin))]  # type: ignore[operator]
    return min(close, key=lambda m: _START_COST.get(m.backend, 9)).backend


def noise(times: Sequence[float]) -> float:
    """Run-to-run spread of repeated timings of one thing, relative to their median: the middle half's spread
    (interquartile range) where there are enough timings, so one stray timing does not make every candidate a tie
    (on 16 cores one slow round put the full range at 111% and kept fp32 over a bf16 1.7x faster); the full range
    of fewer than five."""
    if len(times) < 2:
        return 0.0
    if len(times) < 5:
        return float((max(times) - min(times)) / np.median(times))
    low, high = np.percentile(times, [25, 75])
    return float((high - low) / np.median(times))


def ratio_noise(ratios: Sequence[Sequence[float]]) -> float:
    """How far one comparison with the reference can be trusted: the median over candidates of the spread of each one's
    round-by-round ratios (:func:`noise`). A machine that drifts between candidates adds nothing (each ratio's two
    timings are seconds apart); a round disturbed by other work widens the margin."""
    spreads = [noise(r) for r in ratios if len(r) > 1]
    return float(np.median(spreads)) if spreads else 0.0


def choose(model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, cache_dir: Path, reference_model=None,
           trust_remote_code: bool = False, workers: int = 1, device: str = "cpu", budget_s: float | None = None,
           names: Sequence[str] | None = None, build: Callable[[str], list] | None = None,
           reference: list | None = None, shape_build: Callable[[str, int, int], list] | None = None) -> Choice:
    """Measure every backend available on ``device`` on the probe, ``workers`` replicas each, and pick one;
    cached on disk. ``budget_s`` bounds the time spent (candidates not reached are skipped, saying so).
    ``names``/``build``: other candidates and how to build a backend's replicas (causal-LM rerankers run through
    sentence-transformers); ``reference``: fp32 replicas already loaded (the first of ``names``); ``shape_build``:
    how to build a backend as ``workers`` x ``threads`` (then the chosen backend's shapes are measured too)."""
    started = time.perf_counter()
    names = tuple(names or measuring_order(engines.backends_for(device)))
    build = build or (lambda name: engines.replicas(name, model_dir, layout, tokenizer, cache_dir=cache_dir,
                                                    workers=workers, trust_remote_code=trust_remote_code, device=device,
                                                    model=reference_model if name == names[0] else None))
    reference = reference or build(names[0])
    candidates: dict[str, Callable[[], list]] = {}
    unavailable_here = []
    for name in names[1:]:
        reason = engines.unavailable(name, device)
        if reason:
            unavailable_here.append(Measurement(backend=name, note=reason))
            continue
        candidates[name] = lambda name=name: build(name)
    measured, skipped, spread = measure(reference, candidates, layout, reference_name=names[0], budget_s=budget_s,
                                        device=device)
    measurements = measured + skipped + unavailable_here
    for m in measurements:
        if m.seconds is not None:
            m.note = m.verdict()
    margin = max(TIE, spread)
    choice = Choice(pick(measurements, margin=margin),
                    f"measured fastest keeping fp32's ranking on this machine (ties within {margin:.0%})",
                    measurements, device)
    if device == "cpu" and shape_build is not None and workers > 1:
        left = None if budget_s is None else budget_s - (time.perf_counter() - started)
        default = reference if choice.backend == names[0] else None
        choice.workers, choice.threads, choice.shapes = choose_shape(
            lambda w, t: shape_build(choice.backend, w, t), layout, workers, default=default, budget_s=left, margin=margin)
    save_choice(model_dir, layout, cache_dir, choice, device=device)
    return choice


def shapes_for(cores: int) -> list[tuple[int, int]]:
    """Workers x threads that use every core: one thread per worker (the default) first, then fewer, wider workers."""
    return [(cores // t, t) for t in (1, 2, 4, 8, 16) if t <= cores and cores % t == 0]


def choose_shape(build: Callable[[int, int], list], layout: Layout, cores: int, *, default: list | None = None,
                 budget_s: float | None = None, margin: float = TIE) -> tuple[int | None, int, list[dict]]:
    """Measure each workers x threads shape of one backend on the probe (alternating with the default, one thread per
    worker); a shape replaces the default only when faster by more than ``margin``. Returns (workers or None for the
    default, threads, what was measured)."""
    shapes = shapes_for(cores)
    if len(shapes) < 2 or (budget_s is not None and budget_s <= 0):
        return None, 1, []
    baseline = default or build(*shapes[0])
    candidates = {f"{w}x{t}": (lambda w=w, t=t: build(w, t)) for w, t in shapes[1:]}
    measured, skipped, spread = measure(baseline, candidates, layout, reference_name=f"{cores}x1", budget_s=budget_s,
                                        judge=False)
    rows = [{"shape": m.backend, "seconds": m.seconds, "note": m.note} for m in measured + skipped]
    best = min((m for m in measured if m.speed is not None), key=lambda m: m.speed)
    workers, threads = None, 1
    if best.backend != f"{cores}x1" and best.speed < 1 / (1 + max(margin, spread)):
        workers, threads = (int(x) for x in best.backend.split("x"))
    engines.set_torch_threads(threads)  # torch's thread count is one per process: leave it as the chosen shape runs
    return workers, threads, rows


def _choice_file(model_dir: Path, layout: Layout, cache_dir: Path, device: str = "cpu") -> Path:
    suffix = "" if device == "cpu" else "-" + device.replace(":", "")
    return export_folder(model_dir, layout, cache_dir) / f"choice{suffix}.json"


def machine_key(device: str = "cpu") -> str:
    """What a measured choice depends on besides the weights: CPU, core count, GPU and backend versions."""
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for package in ("torch", "onnxruntime", "openvino"):
        try:
            versions.append(f"{package}={version(package)}")
        except PackageNotFoundError:
            versions.append(f"{package}=none")
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    gpu = ""
    if device != "cpu":
        import torch  # lazy: torch loads only on this path

        gpu = f"{torch.cuda.get_device_name(device)}|{torch.version.cuda}"
    return digest(cpu, os.cpu_count(), versions, gpu)


def save_choice(model_dir: Path, layout: Layout, cache_dir: Path, choice: Choice, *, device: str = "cpu") -> None:
    """Remember a measured choice for this checkpoint on this machine and device (best effort)."""
    target = _choice_file(model_dir, layout, cache_dir, device)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:  # written whole or not at all: a full disk leaves the previous file (or none), never half a file
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"machine": machine_key(device), **choice.as_dict()}, indent=1))
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        log.warning("cannot remember the backend choice in %s (%s); it will be measured again at the next start",
                    cache_dir, exc)


def load_choice(model_dir: Path, layout: Layout, cache_dir: Path, *, device: str = "cpu") -> Choice | None:
    """A choice measured earlier for this checkpoint on this machine and device, or None."""
    path = _choice_file(model_dir, layout, cache_dir, device)
    data = read_json(path)
    if not data and path.is_file():
        log.warning("the remembered backend choice %s is unreadable; measuring again", path)
    if data.get("machine") != machine_key(device) or data.get("backend") not in engines.backends_for(device):
        return None
    try:
        measurements = [Measurement(**m) for m in data.get("measurements", [])]
        workers, threads = data.get("workers"), int(data.get("threads") or 1)
    except (TypeError, ValueError):
        log.warning("the remembered backend choice %s is damaged; measuring again", path)
        return None
    if workers is not None and (not isinstance(workers, int) or workers < 1 or threads < 1
                                or workers * threads > (os.cpu_count() or 1)):
        workers, threads = None, 1
    return Choice(data["backend"], "measured on this machine at an earlier start", measurements, device, workers,
                  int(threads), list(data.get("shapes") or []))
