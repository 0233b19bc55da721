"""Which engine serves here: measured on a fixed probe, admitted by a fidelity gate, remembered per machine.

:func:`choose` times every available candidate on the probe, one replica per worker as the pool
runs them, and keeps the fastest whose scores agree with fp32 torch: Spearman >= 0.99 *and* no
score moved by more than 5% of the probe's score range (reduced precision is admitted only by
measurement, never assumed). Among candidates within 5% of the fastest, the one that starts
quickest wins.
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
from scoring.tokenizer import TextTokenizer

log = logging.getLogger("rag_augment.choice")

MIN_SPEARMAN = 0.99
MAX_DIFF_OF_RANGE = 0.05
REDUCED_PRECISION = ("torch-bf16", "openvino-bf16", "onnxruntime-int8")  # admitted only through the gate
TIE = 0.05  # candidates within 5% of the fastest count as equally fast; the lighter start-up wins
_START_COST = {"onnxruntime": 0, "onnxruntime-int8": 1, "openvino": 2, "openvino-bf16": 3, "torch": 4, "torch-bf16": 5,
               "cuda-fp32": 6, "cuda-bf16": 7, "cuda-fp16": 8}

PROBE_QUERY = "how do transformers rank documents for a search query"
_PROBE_SENTENCES = (
    "A cross-encoder reads the query and the document together and outputs one relevance score.",
    "Bread dough rises when yeast ferments the sugars in the flour and releases carbon dioxide.",
    "Search engines first retrieve candidates with a fast index, then rerank them with a slower model.",
    "The football season ended with a close final decided by a penalty shoot-out.",
    "Transformer encoders use self-attention so that every token can look at every other token.",
    "Tulips bloom in spring and come in many colours, from deep purple to bright yellow.",
    "BM25 scores documents by term frequency, inverse document frequency and document length.",
    "The museum reopened after renovation with a new wing devoted to modern sculpture.",
    "Dense retrieval embeds queries and documents into vectors and compares them by cosine similarity.",
    "Interest rates rose again this quarter as the central bank tried to curb inflation.",
    "Ranking quality is measured with metrics such as nDCG and mean reciprocal rank on judged queries.",
    "The recipe calls for two eggs, a cup of milk and a pinch of salt.",
    "Glaciers carve deep valleys as they slide slowly downhill under their own weight.",
    "The committee approved the budget after a long debate about road maintenance.",
    "Vaccines train the immune system to recognise a pathogen before an infection happens.",
    "A violin's tone depends on the wood, the varnish and the shape of its body.",
    "Rerankers trade latency for precision: they read every candidate with the query.",
    "The train to the coast leaves every hour from the second platform.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "Tokenizers split words into sub-word pieces so that rare words still get representations.",
    "The marathon route crosses five bridges and finishes in the old town square.",
    "Quantised models store weights in eight bits, which saves memory but can shift scores.",
    "Coral reefs shelter a quarter of marine species while covering a tiny share of the ocean floor.",
    "An index maps each term to the documents that contain it, so lookups avoid a full scan.",
)


def probe_documents(n: int = 32) -> list[str]:
    """A fixed set of varied documents of ~100 to ~420 tokens (passages as retrievers return them: SciFact's pairs
    have a median of 316 tokens), some on the probe query's topic, some not: each mixes its own selection of
    sentences, so scores spread out as they do on real candidates."""
    docs = []
    pool = len(_PROBE_SENTENCES)
    for i in range(n):
        count = 6 + (i * 7) % 19
        docs.append(" ".join(_PROBE_SENTENCES[(i * 5 + j * (1 + i % 7)) % pool] for j in range(count)))
    return docs


def probe_scores(replicas: Sequence, layout: Layout, documents: Sequence[str], device: str = "cpu") -> np.ndarray:
    """The probe's scores (logits or cosines) on one backend, run as the scorer runs one request of these documents:
    batched by its own plan for this many workers on this device (:mod:`scoring.batching`), each free worker
    taking the next batch, so the probe times what a request costs with this shape."""
    limits = batching_for(device)
    lengths = [len(PROBE_QUERY.split()) + len(d.split()) * 4 // 3 + 3 for d in documents]  # about their tokens
    budget = spread_budget(lengths, limits["token_budget"], len(replicas), limits["batch_size"])
    batches: queue.SimpleQueue = queue.SimpleQueue()
    for batch in plan_batches(lengths, budget, limits["batch_size"]):
        batches.put(batch)
    query = replicas[0].embed([PROBE_QUERY], query=True)[0] if layout.mode == "embedding" else None
    out = np.zeros(len(documents), dtype=np.float64)

    def work(n: int) -> None:
        engine = replicas[n]
        while True:
            try:
                chunk = batches.get_nowait()
            except queue.Empty:
                return
            texts = [documents[i] for i in chunk]
            out[chunk] = engine.score_pairs(PROBE_QUERY, texts) if query is None else engine.embed(texts) @ query

    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(work, range(len(replicas))))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score lists (0 where it is undefined, e.g. a constant list)."""
    from scipy.stats import spearmanr  # lazy: scipy loads only on this path

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    value = spearmanr(a, b).statistic
    return float(value) if np.isfinite(value) else 0.0


@dataclass
class Measurement:
    """One candidate on the probe: time per probe, agreement with fp32 torch, or why it was skipped."""

    backend: str
    seconds: float | None = None
    spearman: float | None = None
    max_abs_diff: float | None = None
    note: str = ""
    score_range: float | None = None

    @property
    def faithful(self) -> bool:
        """Measured, ranks like fp32 (Spearman) and scores like it (no score moved by 5% of the range)."""
        if self.seconds is None or (self.spearman or 0) < MIN_SPEARMAN:
            return False
        if self.max_abs_diff is None or not self.score_range:
            return True
        return self.max_abs_diff <= MAX_DIFF_OF_RANGE * self.score_range

    def verdict(self) -> str:
        """Why an unfaithful measurement was rejected."""
        if (self.spearman or 0) < MIN_SPEARMAN:
            return f"rankings drift from fp32 torch (Spearman {self.spearman:.3f} < {MIN_SPEARMAN})"
        return (f"scores drift from fp32 torch (max difference {self.max_abs_diff:.4f} > {MAX_DIFF_OF_RANGE:.0%} "
                f"of the probe's range {self.score_range:.4f})")


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
            reference_name: str = "torch", budget_s: float | None = None,
            device: str = "cpu") -> tuple[list[Measurement], list[Measurement], float]:
    """Time fp32 torch and each candidate's replicas on the probe.

    Candidates are built and dropped one at a time (memory stays at two copies of the model beside the
    serving one), and each is timed in rounds alternating with torch so background load hits both alike.
    Returns the measurements, the candidates that could not be built (or were not reached within
    ``budget_s`` seconds) and the reference's run-to-run noise.
    """
    started = time.perf_counter()
    documents = probe_documents()
    expected = probe_scores(reference, layout, documents, device)
    spread = float(expected.max() - expected.min())
    torch_times: list[float] = []
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
        scores = probe_scores(replicas, layout, documents, device)  # also the warm-up
        times = []
        for _ in range(rounds):
            torch_times.append(timed(reference))
            times.append(timed(replicas))
        measured.append(Measurement(backend=name, seconds=float(np.median(times)), spearman=spearman(scores, expected),
                                    max_abs_diff=float(np.max(np.abs(scores - expected))), score_range=spread))
        del replicas
    if not torch_times:
        torch_times = [timed(reference) for _ in range(rounds)]
    return [Measurement(backend=reference_name, seconds=float(np.median(torch_times)), spearman=1.0, max_abs_diff=0.0,
                        score_range=spread), *measured], skipped, noise(torch_times)


def pick(measurements: Sequence[Measurement], *, margin: float = TIE) -> str:
    """The fastest faithful backend; within ``margin`` of the fastest (at least 5%, more where the run-to-run
    noise was larger), the one that starts quickest. The first measurement is the fp32 reference."""
    faithful = [m for m in measurements if m.faithful]
    if not faithful:  # the fp32 reference of the device measured
        return "cuda-fp32" if any(m.backend in engines.CUDA_BACKENDS for m in measurements) else "torch"
    best = min(m.seconds for m in faithful)  # type: ignore[type-var]
    close = [m for m in faithful if m.seconds <= best * (1 + max(TIE, margin))]  # type: ignore[operator]
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
    names = tuple(names or engines.backends_for(device))
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
        if m.seconds is not None and not m.faithful:
            m.note = m.verdict()
    margin = max(TIE, spread)
    choice = Choice(pick(measurements, margin=margin),
                    f"measured fastest with faithful scores on this machine (ties within {margin:.0%})",
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
    measured, skipped, spread = measure(baseline, candidates, layout, reference_name=f"{cores}x1", budget_s=budget_s)
    rows = [{"shape": m.backend, "seconds": m.seconds, "note": m.note} for m in measured + skipped]
    best = min((m for m in measured if m.seconds is not None), key=lambda m: m.seconds)
    base = measured[0].seconds or 0.0
    workers, threads = None, 1
    if best.backend != f"{cores}x1" and best.seconds < base / (1 + max(margin, spread)):
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
