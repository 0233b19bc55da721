"""Inference backends: one checkpoint's forward pass on torch, ONNX Runtime or OpenVINO, and the choice between them.

Every backend tokenizes with the checkpoint's own fast tokenizer (the ``tokenizers`` library, the
same Rust code transformers calls), runs the encoder and pools the way sentence-transformers does,
so scores agree with ``CrossEncoder.predict`` / ``SentenceTransformer.encode`` within float
rounding. ONNX Runtime and OpenVINO run a graph exported once from the torch model and kept in the
cache folder; they import in well under a second where torch and transformers take several, which
is most of a cold start.

Which backend serves is measured, not assumed: :func:`choose` times every available candidate on a
fixed probe and keeps the fastest whose rankings agree with fp32 torch (Spearman >= 0.99).
Checkpoints with modules beyond Transformer + Pooling + Normalize are served by sentence-transformers
itself (torch only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

log = logging.getLogger("rag_augment.backends")

Mode = Literal["cross-encoder", "embedding"]
BACKENDS = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8")
REDUCED_PRECISION = ("torch-bf16", "openvino-bf16", "onnxruntime-int8")  # their own candidates behind the gate
ST_BACKEND = "torch (sentence-transformers)"
MIN_SPEARMAN = 0.99
MAX_DIFF_OF_SPREAD = 0.05  # and no score may move by more than 5% of the probe's score range
TIE = 0.05  # candidates within 5% of the fastest count as equally fast; the lighter start-up wins
_START_COST = {"onnxruntime": 0, "onnxruntime-int8": 1, "openvino": 2, "openvino-bf16": 3, "torch": 4, "torch-bf16": 5}
_EXPORT_LOCK = threading.RLock()


class BackendError(RuntimeError):
    """A backend cannot run this checkpoint here (not installed, no native support, export failed)."""


# --- tokenization --------------------------------------------------------------------------------

class TextTokenizer:
    """The checkpoint's fast tokenizer, producing model inputs as numpy arrays.

    Not safe to share between threads (truncation and padding are settings of the object): each
    engine and each request-side counter holds its own :meth:`copy`.
    """

    def __init__(self, tokenizer, pad_token: str | None) -> None:
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
        self._pad = (pad_id if pad_id is not None else 0, pad_token or "[PAD]")

    @classmethod
    def from_dir(cls, model_dir: Path) -> TextTokenizer:
        """Read ``tokenizer.json`` (or convert a slow tokenizer once through transformers)."""
        from tokenizers import Tokenizer

        config = _read_json(model_dir / "tokenizer_config.json")
        special = _read_json(model_dir / "special_tokens_map.json")
        pad = config.get("pad_token") or special.get("pad_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        if (model_dir / "tokenizer.json").is_file():
            return cls(Tokenizer.from_file(str(model_dir / "tokenizer.json")), pad)
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        if not getattr(hf, "is_fast", False):
            raise BackendError(f"{model_dir} has no fast tokenizer (tokenizer.json)")
        return cls(Tokenizer.from_str(hf.backend_tokenizer.to_str()), hf.pad_token)

    def copy(self) -> TextTokenizer:
        """An independent tokenizer with the same vocabulary and rules."""
        from tokenizers import Tokenizer

        return TextTokenizer(Tokenizer.from_str(self._tok.to_str()), self._pad[1])

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text, without special tokens and without truncation."""
        return [len(e.ids) for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character span of every token of each text (no special tokens, no truncation)."""
        return [e.offsets for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def batch(self, inputs: Sequence[str] | Sequence[tuple[str, str]], max_length: int) -> dict[str, np.ndarray]:
        """Model inputs for texts or (query, document) pairs: longest-first truncation, padded to the longest."""
        self._tok.enable_truncation(max_length, strategy="longest_first")
        self._tok.enable_padding(pad_id=self._pad[0], pad_token=self._pad[1])
        try:
            encodings = self._tok.encode_batch(list(inputs))
        finally:
            self._tok.no_truncation()
            self._tok.no_padding()
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


# --- what the checkpoint computes ----------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """How a checkpoint turns encoder outputs into a score or an embedding."""

    mode: Mode
    max_length: int
    pooling: Literal["mean", "cls", "max", "none"] = "none"
    normalize: bool = True
    query_prompt: str = ""
    document_prompt: str = ""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _window(model_dir: Path) -> int:
    """The longest input the checkpoint accepts: its tokenizer's limit, within its position table."""
    config = _read_json(model_dir / "config.json")
    positions = int(config.get("max_position_embeddings") or 512)
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # two positions are reserved for the padding offset
    limit = _read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    limit = int(limit) if isinstance(limit, (int, float)) and 0 < limit < 1_000_000 else positions
    return max(8, min(limit, positions))


def layout_of(model_dir: Path, mode: Mode) -> Layout | None:
    """The checkpoint's layout, or None when it needs sentence-transformers' own modules to run."""
    if mode == "cross-encoder":
        return Layout(mode=mode, max_length=_window(model_dir))
    modules = json.loads((model_dir / "modules.json").read_text()) if (model_dir / "modules.json").is_file() else None
    if modules is None:
        return Layout(mode=mode, max_length=_window(model_dir), pooling="mean")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    pooling_config = _read_json(model_dir / modules[1].get("path", "1_Pooling") / "config.json")
    chosen = [name for name, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                                     ("max", "pooling_mode_max_tokens")) if pooling_config.get(key)]
    other = [k for k, v in pooling_config.items() if k.startswith("pooling_mode_") and v and
             k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")]
    if len(chosen) != 1 or other:
        return None
    st_config = _read_json(model_dir / "sentence_bert_config.json")
    max_length = int(st_config.get("max_seq_length") or _window(model_dir))
    prompts = _read_json(model_dir / "config_sentence_transformers.json").get("prompts") or {}
    return Layout(mode=mode, max_length=min(max_length, _window(model_dir)), pooling=chosen[0],  # type: ignore[arg-type]
                  query_prompt=str(prompts.get("query", "")), document_prompt=str(prompts.get("document", "")))


def pool(hidden: np.ndarray, mask: np.ndarray, layout: Layout) -> np.ndarray:
    """Sentence embeddings from token states, as sentence-transformers' Pooling (+ Normalize) computes them."""
    mask = mask[..., None].astype(hidden.dtype)
    if layout.pooling == "cls":
        out = hidden[:, 0]
    elif layout.pooling == "max":
        out = np.where(mask > 0, hidden, -1e9).max(axis=1)
    else:
        out = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    out = out.astype(np.float32)
    if layout.normalize:
        out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out


# --- engines -------------------------------------------------------------------------------------

class Engine(Protocol):
    """One replica of a model on one backend; used by one thread at a time."""

    name: str

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw ranking logits of (query, document) pairs (cross-encoders)."""

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length embeddings, one row per text (embedding models)."""


class GraphEngine:
    """Tokenize, run a forward function, pool: shared by the torch, ONNX Runtime and OpenVINO engines."""

    name = "graph"

    def __init__(self, tokenizer: TextTokenizer, layout: Layout, forward: Callable[[dict], np.ndarray],
                 inputs: Sequence[str]) -> None:
        self.tokenizer, self.layout, self._forward, self._inputs = tokenizer, layout, forward, tuple(inputs)

    def _run(self, items) -> tuple[np.ndarray, np.ndarray]:
        batch = self.tokenizer.batch(items, self.layout.max_length)
        return self._forward({k: batch[k] for k in self._inputs}), batch["attention_mask"]

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        if not documents:
            return np.zeros(0, dtype=np.float32)
        logits, _ = self._run([(query, d) for d in documents])
        return np.asarray(logits, dtype=np.float32).reshape(len(documents), -1)[:, 0]

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        prompt = self.layout.query_prompt if query else self.layout.document_prompt
        hidden, mask = self._run([prompt + t for t in texts])
        return pool(np.asarray(hidden, dtype=np.float32), mask, self.layout)


def _model_inputs(model) -> list[str]:
    import inspect

    names = inspect.signature(model.forward).parameters
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in names]


def _torch_model(model_dir: Path, layout: Layout, trust_remote_code: bool):
    """The transformers model behind a checkpoint, in eval mode."""
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls = AutoModelForSequenceClassification if layout.mode == "cross-encoder" else AutoModel
    return cls.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code).eval()


def torch_engine(model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, bf16: bool = False,
                 trust_remote_code: bool = False, model=None) -> GraphEngine:
    """fp32 torch (``bf16``: bf16 autocast, only where the CPU computes bf16 natively)."""
    import torch

    model = model if model is not None else _torch_model(model_dir, layout, trust_remote_code)
    key = "logits" if layout.mode == "cross-encoder" else "last_hidden_state"

    def forward(batch: dict) -> np.ndarray:
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return getattr(model(**tensors), key).float().numpy()

    engine = GraphEngine(tokenizer, layout, forward, _model_inputs(model))
    engine.name = "torch-bf16" if bf16 else "torch"
    engine.model = model  # type: ignore[attr-defined]
    return engine


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def fingerprint(model_dir: Path, layout: Layout) -> str:
    """A short digest of the checkpoint files and the layout: cached exports never outlive their weights."""
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in model_dir.glob("*") if f.is_file())
    return hashlib.blake2b(repr((str(model_dir.resolve()), files, layout)).encode(), digest_size=8).hexdigest()


def onnx_path(model_dir: Path, layout: Layout, cache_dir: Path, *, int8: bool = False,
              trust_remote_code: bool = False) -> Path:
    """The checkpoint exported to ONNX (``int8``: dynamically quantized), exported once into ``cache_dir``."""
    folder = Path(cache_dir) / "backends" / fingerprint(model_dir, layout)
    target = folder / ("model-int8.onnx" if int8 else "model.onnx")
    with _EXPORT_LOCK:
        if target.is_file():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            fp32 = onnx_path(model_dir, layout, cache_dir, trust_remote_code=trust_remote_code)
            partial = folder / f"model-int8.{os.getpid()}.partial.onnx"  # processes sharing the cache never clobber
            logging.disable(logging.INFO)  # the quantizer logs a line per tensor
            try:
                quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8, per_channel=True)
            finally:
                logging.disable(logging.NOTSET)
        else:
            partial = folder / f"model.{os.getpid()}.partial.onnx"
            _export(model_dir, layout, partial, trust_remote_code)
        partial.replace(target)
        log.info("exported %s to %s", model_dir.name, target)
    return target


def _export(model_dir: Path, layout: Layout, target: Path, trust_remote_code: bool) -> None:
    """torch.onnx export with batch and sequence as dynamic axes."""
    import torch

    model = _torch_model(model_dir, layout, trust_remote_code)
    names = _model_inputs(model)
    output = "logits" if layout.mode == "cross-encoder" else "last_hidden_state"

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


def onnxruntime_engine(path: Path, layout: Layout, tokenizer: TextTokenizer, *, threads: int = 1) -> GraphEngine:
    """An ONNX Runtime session on the CPU with ``threads`` intra-op threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    engine = GraphEngine(tokenizer, layout, lambda batch: session.run(None, batch)[0], inputs)
    engine.name = "onnxruntime-int8" if "int8" in path.name else "onnxruntime"
    return engine


def openvino_engine(path: Path, layout: Layout, tokenizer: TextTokenizer, *, threads: int = 1,
                    bf16: bool = False) -> GraphEngine:
    """An OpenVINO compiled model on the CPU, in fp32 unless ``bf16`` (OpenVINO's own default is bf16 where the CPU has it)."""
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    precision = "bf16" if bf16 else "f32"
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
                                                 "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()
    inputs = [i.get_any_name() for i in model.inputs]

    def forward(batch: dict) -> np.ndarray:
        return np.array(request.infer(batch)[0])

    engine = GraphEngine(tokenizer, layout, forward, inputs)
    engine.name = "openvino-bf16" if bf16 else "openvino"
    return engine


def unavailable(name: str) -> str | None:
    """Why a backend cannot run on this machine, or None when it can."""
    import importlib.util

    if name not in BACKENDS:
        return f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or auto"
    needs = {"torch": "torch", "torch-bf16": "torch", "onnxruntime": "onnxruntime", "onnxruntime-int8": "onnxruntime",
             "openvino": "openvino", "openvino-bf16": "openvino"}[name]
    if importlib.util.find_spec(needs) is None:
        return f"{needs} is not installed"
    if name in ("torch-bf16", "openvino-bf16") and not cpu_has_native_bf16():
        return "this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 would be emulated"
    return None


def create(name: str, model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, cache_dir: Path | None,
           threads: int = 1, trust_remote_code: bool = False, model=None) -> GraphEngine:
    """One engine replica of ``name`` for a checkpoint (exporting to ``cache_dir`` first where needed)."""
    reason = unavailable(name)
    if reason:
        raise BackendError(f"backend {name!r} is unavailable: {reason}")
    if name in ("torch", "torch-bf16"):
        return torch_engine(model_dir, layout, tokenizer, bf16=name == "torch-bf16",
                            trust_remote_code=trust_remote_code, model=model)
    if cache_dir is None:
        raise BackendError(f"backend {name!r} needs a cache folder for its exported graph")
    try:
        path = onnx_path(model_dir, layout, cache_dir, int8=name == "onnxruntime-int8", trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise BackendError(f"cannot export {model_dir.name} for {name}: {exc}") from exc
    try:
        if name.startswith("onnxruntime"):
            return onnxruntime_engine(path, layout, tokenizer, threads=threads)
        return openvino_engine(path, layout, tokenizer, threads=threads, bf16=name == "openvino-bf16")
    except Exception as exc:  # a damaged cached graph: remove it, so the next measurement exports it again
        with contextlib.suppress(OSError):
            path.unlink()
        raise BackendError(f"cannot run {path} on {name} ({str(exc).splitlines()[0][:200]}); removed it") from exc


def replicas(name: str, model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, cache_dir: Path | None,
             workers: int, trust_remote_code: bool = False, model=None) -> list[GraphEngine]:
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


class SentenceTransformersEngine:
    """sentence-transformers itself, for checkpoints with modules the graph engines do not run."""

    name = ST_BACKEND

    def __init__(self, model, layout: Layout) -> None:
        self.model, self.layout = model, layout

    def score_pairs(self, query: str, documents: Sequence[str]) -> np.ndarray:
        import torch

        return np.asarray(self.model.predict([(query, d) for d in documents], batch_size=max(1, len(documents)),
                                             show_progress_bar=False, activation_fn=torch.nn.Identity()),
                          dtype=np.float32).reshape(len(documents))

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        method = self.model.encode_query if query else self.model.encode_document
        return np.asarray(method(list(texts), batch_size=max(1, len(texts)), normalize_embeddings=True,
                                 show_progress_bar=False), dtype=np.float32)


# --- measuring and choosing ----------------------------------------------------------------------

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
)


def probe_documents(n: int = 24) -> list[str]:
    """A fixed set of documents of 20 to ~300 tokens, some on the probe query's topic, some not."""
    docs = []
    for i in range(n):
        count = 1 + (i * 7) % 13
        docs.append(" ".join(_PROBE_SENTENCES[(i + j * 5) % len(_PROBE_SENTENCES)] for j in range(count)))
    return docs


def probe_scores(replicas: Sequence, layout: Layout, documents: Sequence[str], batch: int = 4) -> np.ndarray:
    """The probe's scores (logits or cosines) on one backend, its replicas working side by side as the scorer runs them."""
    from concurrent.futures import ThreadPoolExecutor

    order = sorted(range(len(documents)), key=lambda i: -len(documents[i]))
    chunks = [order[i:i + batch] for i in range(0, len(order), batch)]
    query = replicas[0].embed([PROBE_QUERY], query=True)[0] if layout.mode == "embedding" else None
    out = np.zeros(len(documents), dtype=np.float64)

    def work(n: int) -> None:
        engine = replicas[n]
        for chunk in chunks[n::len(replicas)]:
            texts = [documents[i] for i in chunk]
            out[chunk] = engine.score_pairs(PROBE_QUERY, texts) if query is None else engine.embed(texts) @ query

    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(work, range(len(replicas))))
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score lists."""
    import pandas as pd

    value = pd.Series(a).corr(pd.Series(b), method="spearman")
    return float(value) if np.isfinite(value) else 0.0


@dataclass
class Measurement:
    """One candidate on the probe: time per probe, agreement with fp32 torch, or why it was skipped."""

    backend: str
    seconds: float | None = None
    spearman: float | None = None
    max_abs_diff: float | None = None
    note: str = ""


@dataclass
class Choice:
    """The backend in use and how it was chosen, for /info, the UI and the logs."""

    backend: str
    how: str
    measurements: list[Measurement] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.backend} ({self.how})"

    def as_dict(self) -> dict:
        return {"backend": self.backend, "how": self.how, "measurements": [asdict(m) for m in self.measurements]}


def measure(reference: list, candidates: dict[str, Callable[[], list]], layout: Layout, *,
            rounds: int = 3) -> tuple[list[Measurement], list[Measurement]]:
    """Time fp32 torch and each candidate's replicas on the probe.

    Candidates are built and dropped one at a time (memory stays at two copies of the model beside the
    serving one), and each is timed in rounds alternating with torch so background load hits both alike.
    Returns the measurements and the candidates that could not be built.
    """
    documents = probe_documents()
    expected = probe_scores(reference, layout, documents)
    torch_times: list[float] = []
    measured, skipped = [], []

    def timed(replicas: list) -> float:
        started = time.perf_counter()
        probe_scores(replicas, layout, documents)
        return time.perf_counter() - started

    for name, build in candidates.items():
        try:
            replicas = build()
        except Exception as exc:
            skipped.append(Measurement(backend=name, note=str(exc).splitlines()[0][:200]))
            continue
        scores = probe_scores(replicas, layout, documents)  # also the warm-up
        times = []
        for _ in range(rounds):
            torch_times.append(timed(reference))
            times.append(timed(replicas))
        measured.append(Measurement(backend=name, seconds=float(np.median(times)), spearman=spearman(scores, expected),
                                    max_abs_diff=float(np.max(np.abs(scores - expected)))))
        del replicas
    if not torch_times:
        torch_times = [timed(reference) for _ in range(rounds)]
    return [Measurement(backend="torch", seconds=float(np.median(torch_times)), spearman=1.0, max_abs_diff=0.0),
            *measured], skipped


def pick(measurements: Sequence[Measurement]) -> str:
    """The fastest faithful backend; within 5% of the fastest, the one that starts quickest."""
    faithful = [m for m in measurements if m.seconds is not None and (m.spearman or 0) >= MIN_SPEARMAN]
    if not faithful:
        return "torch"
    best = min(m.seconds for m in faithful)  # type: ignore[type-var]
    close = [m for m in faithful if m.seconds <= best * (1 + TIE)]  # type: ignore[operator]
    return min(close, key=lambda m: _START_COST.get(m.backend, 9)).backend


def choose(model_dir: Path, layout: Layout, tokenizer: TextTokenizer, *, cache_dir: Path, reference_model=None,
           trust_remote_code: bool = False, workers: int = 1) -> Choice:
    """Measure every backend available here on the probe, ``workers`` replicas each, and pick one; cached on disk."""
    reference = replicas("torch", model_dir, layout, tokenizer, cache_dir=cache_dir, workers=workers,
                         trust_remote_code=trust_remote_code, model=reference_model)
    candidates: dict[str, Callable[[], list]] = {}
    unavailable_here = []
    for name in BACKENDS[1:]:
        reason = unavailable(name)
        if reason:
            unavailable_here.append(Measurement(backend=name, note=reason))
            continue
        candidates[name] = lambda name=name: replicas(name, model_dir, layout, tokenizer, cache_dir=cache_dir,
                                                      workers=workers, trust_remote_code=trust_remote_code)
    measured, skipped = measure(reference, candidates, layout)
    measurements = measured + skipped + unavailable_here
    for m in measurements:
        if m.seconds is not None and (m.spearman or 0) < MIN_SPEARMAN:
            m.note = f"rankings drift from fp32 torch (Spearman {m.spearman:.3f} < {MIN_SPEARMAN})"
    chosen = pick(measurements)
    choice = Choice(chosen, "measured fastest with faithful rankings on this CPU", measurements)
    save_choice(model_dir, layout, cache_dir, choice)
    return choice


def _choice_file(model_dir: Path, layout: Layout, cache_dir: Path) -> Path:
    return Path(cache_dir) / "backends" / fingerprint(model_dir, layout) / "choice.json"


def _machine() -> str:
    """What a measured choice depends on besides the weights: CPU, core count and backend versions."""
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
    return hashlib.blake2b(f"{cpu}|{os.cpu_count()}|{'|'.join(versions)}".encode(), digest_size=8).hexdigest()


def save_choice(model_dir: Path, layout: Layout, cache_dir: Path, choice: Choice) -> None:
    """Remember a measured choice for this checkpoint on this machine (best effort)."""
    try:
        target = _choice_file(model_dir, layout, cache_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({"machine": _machine(), **choice.as_dict()}, indent=1))
    except OSError as exc:
        log.warning("cannot remember the backend choice in %s: %s", cache_dir, exc)


def load_choice(model_dir: Path, layout: Layout, cache_dir: Path) -> Choice | None:
    """A choice measured earlier for this checkpoint on this machine, or None."""
    data = _read_json(_choice_file(model_dir, layout, cache_dir))
    if data.get("machine") != _machine() or data.get("backend") not in BACKENDS:
        return None
    try:
        measurements = [Measurement(**m) for m in data.get("measurements", [])]
    except TypeError:
        return None
    return Choice(data["backend"], "measured on this machine at an earlier start", measurements)
