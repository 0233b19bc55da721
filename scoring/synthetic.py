"""Checkpoints built here from the packaged model's files, nothing downloaded: what the tests and benchmarks score
(a tiny BERT cross-encoder, a MiniLM-L6 cross-encoder on the packaged encoder, Qwen3-shaped causal-LM rerankers (tiny
or at the real 0.6B shape), a ColBERT-style model, a tiny LLaVA-layout vision reranker and a ColPali-style model).

A Qwen3-shaped causal-LM reranker gets a word-level tokenizer made from the packaged model's
vocabulary (with or without the "yes"/"no" tokens) and a Qwen3-Reranker-style chat template that
renders a (query, document) pair and takes the instruction as its system message.
"""

from __future__ import annotations

import json
from pathlib import Path

from scoring.checkpoint import packaged_model_path

QWEN3_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: "
    "{%- set ns = namespace(instruction='Given a web search query, retrieve relevant passages that answer the query') -%}"
    "{%- for m in messages if m.role == 'system' -%}{%- set ns.instruction = m.content -%}{%- endfor -%}"
    " {{ ns.instruction }}\n<Query>: {{ (messages | selectattr('role', 'eq', 'query') | first).content }}\n"
    "<Document>: {{ (messages | selectattr('role', 'eq', 'document') | first).content }}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]

# the shape of Qwen/Qwen3-Reranker-0.6B (its vocabulary is smaller here: the word-level one built below)
QWEN3_06B = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 3072}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
        "intermediate_size": 64}


def word_tokenizer(*, yes_no: bool = True, chat_template: str | None = QWEN3_RERANKER_TEMPLATE,
                   words_from: Path | None = None):
    """A fast word-level tokenizer over a WordPiece vocabulary's whole words (``words_from``: a folder with its
    tokenizer.json; default the packaged model's), left padding as causal rerankers use."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers  # lazy: tokenizers loads only on this path
    from transformers import PreTrainedTokenizerFast  # lazy: transformers loads only on this path

    source = Path(words_from) if words_from else packaged_model_path()
    bert = json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]
    words = [w for w in bert if w.isalpha() and (yes_no or w not in ("yes", "no"))]
    vocab = {t: i for i, t in enumerate(SPECIALS + list(":<>\"'.,?!()/-") + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", model_max_length=32768, padding_side="left")
    if chat_template:
        fast.chat_template = chat_template
    return fast


def build_causal_reranker(target: Path, *, yes_no: bool = True, layout: str = "plain", shape: dict | None = None,
                          seed: int = 0, words_from: Path | None = None) -> Path:
    """A Qwen3ForCausalLM with random weights saved as a plain checkpoint (``layout="plain"``) or as a
    sentence-transformers CrossEncoder module chain (``"st"``: Transformer + LogitScore)."""
    import torch  # lazy: torch loads only on this path
    from transformers import Qwen3Config, Qwen3ForCausalLM  # lazy: transformers loads only on this path

    tokenizer = word_tokenizer(yes_no=yes_no, words_from=words_from)
    config = Qwen3Config(vocab_size=len(tokenizer), max_position_embeddings=32768, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=2, **(shape or TINY))
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    target = Path(target)
    plain = target if layout == "plain" else target.with_name(target.name + "-plain")
    model.save_pretrained(str(plain))
    tokenizer.save_pretrained(str(plain))
    if layout == "st":
        from sentence_transformers import CrossEncoder  # lazy: sentence-transformers loads only on this path

        CrossEncoder(str(plain), device="cpu").save_pretrained(str(target))
    return target


def build_tiny_cross_encoder(target: Path, *, seed: int = 0) -> Path:
    """Save a small BERT cross-encoder (one-logit head, random weights) with the packaged model's tokenizer."""
    import torch  # lazy: torch loads only on this path
    from transformers import (  # lazy: transformers loads only on this path
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                        num_labels=1)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(target))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(target))
    return target


def build_minilm_cross_encoder(target: Path, *, seed: int = 0) -> Path:
    """The packaged all-MiniLM-L6-v2 encoder with a seeded one-logit head, saved as a BERT cross-encoder (the hub's
    layout, window 512): a trained encoder's activations and cost, the head untrained until a benchmark trains it."""
    import torch  # lazy: torch loads only on this path
    from transformers import AutoTokenizer, BertForSequenceClassification  # lazy: transformers loads only on this path

    torch.manual_seed(seed)
    source = packaged_model_path()
    model = BertForSequenceClassification.from_pretrained(str(source), num_labels=1)
    model.save_pretrained(str(target))
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(str(target))
    return target


def build_multi_vector(target: Path, *, dimension: int = 48, seed: int = 0, query_length: int | None = 32,
                       document_length: int = 128, prefixes: bool = True, skiplist: bool = True) -> Path:
    """A ColBERT/PyLate-style late-interaction model saved by sentence-transformers' ``MultiVectorEncoder``: the packaged
    MiniLM encoder, a seeded token-level projection to ``dimension``, the scoring mask (punctuation skipped in
    documents, as PyLate does) and unit-length vectors; ``[Q] ``/``[D] `` prefixes and its own query and document
    lengths, the knobs ColBERT checkpoints carry."""
    import string

    import torch  # lazy: torch loads only on this path
    from sentence_transformers import MultiVectorEncoder  # lazy: sentence-transformers loads only on this path
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    encoder = Transformer(str(packaged_model_path()), max_seq_length=document_length, query_length=query_length,
                          document_length=document_length)
    torch.manual_seed(seed)
    projection = Dense(in_features=encoder.get_embedding_dimension(), out_features=dimension, bias=False,
                       activation_function=torch.nn.Identity(), module_input_name="token_embeddings")
    mask = MultiVectorMask(skiplist_words=list(string.punctuation) if skiplist else [])
    model = MultiVectorEncoder(modules=[encoder, projection, mask, Normalize(module_input_name="token_embeddings")],
                               prompts={"query": "[Q] ", "document": "[D] "} if prefixes else None, device="cpu")
    model.save_pretrained(str(target))
    return Path(target)


# a Qwen3-VL-Reranker-style prompt over the roles sentence-transformers gives a pair: an image document is its
# processor's image token, which the processor expands to the image's patches
VISION_RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
    "{%- for m in messages if m.role in ('query', 'document') -%}"
    "{{ '<' ~ (m.role | capitalize) ~ '>: ' }}"
    "{%- if m.content is string -%}{{ m.content }}{%- else -%}{%- for c in m.content -%}"
    "{%- if c.type == 'image' -%}<image>{%- elif c.type == 'text' -%}{{ c.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}\n{%- endfor -%}<|im_end|>\n<|im_start|>assistant\n")


# any message's content in order, an image as the processor's image token: what a ColPali-style encoder reads
PLAIN_TEMPLATE = ("{%- for m in messages -%}{%- if m.content is string -%}{{ m.content }}{%- else -%}"
                  "{%- for c in m.content -%}{%- if c.type == 'image' -%}<image>{%- elif c.type == 'text' -%}{{ c.text }}"
                  "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endfor -%}")


def _tiny_llava(target: Path, *, seed: int, image_size: int) -> tuple[Path, object]:
    """A LLaVA-layout model (a CLIP vision tower, a projector, a Qwen3-shaped language model, random weights) saved
    with its processor (the word-level tokenizer plus an ``<image>`` token, a CLIP image processor at ``image_size``
    pixels) beside ``target``: the folder and the tokenizer."""
    import torch  # lazy: torch loads only on this path
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = word_tokenizer(chat_template=None)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    patch = image_size // 2
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer, chat_template=VISION_RERANKER_TEMPLATE, patch_size=patch,
        vision_feature_select_strategy="default", num_additional_image_tokens=1)
    text = {"model_type": "qwen3", "vocab_size": len(tokenizer), "max_position_embeddings": 4096,
            "tie_word_embeddings": True, **TINY}
    vision = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": image_size, "patch_size": patch, "projection_dim": 32}
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=True,
                         pad_token_id=0)
    torch.manual_seed(seed)
    plain = Path(target).with_name(Path(target).name + "-plain")
    LlavaForConditionalGeneration(config).eval().save_pretrained(str(plain))
    processor.save_pretrained(str(plain))
    return plain, tokenizer


def build_vision_reranker(target: Path, *, seed: int = 0, image_size: int = 28) -> Path:
    """A tiny multimodal reranker saved by sentence-transformers as the hub's vision rerankers are: the LLaVA-layout
    model (:func:`_tiny_llava`) behind an ``any-to-any`` Transformer with its processor, and a LogitScore head reading
    "yes" against "no"."""
    from sentence_transformers import CrossEncoder  # lazy: sentence-transformers loads only on this path
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore

    plain, tokenizer = _tiny_llava(target, seed=seed, image_size=image_size)
    head = LogitScore(true_token_id=tokenizer.convert_tokens_to_ids("yes"),
                      false_token_id=tokenizer.convert_tokens_to_ids("no"))
    CrossEncoder(modules=[Transformer(str(plain), transformer_task="any-to-any"), head],
                 device="cpu").save_pretrained(str(target))
    return Path(target)


def build_vision_multi_vector(target: Path, *, seed: int = 0, image_size: int = 28, dimension: int = 16) -> Path:
    """A tiny ColPali-style late-interaction model saved by sentence-transformers' ``MultiVectorEncoder``: the
    LLaVA-layout model's hidden states (a feature-extraction Transformer reading text and page images), a seeded
    token-level projection to ``dimension`` and unit-length vectors."""
    import torch  # lazy: torch loads only on this path
    from sentence_transformers import MultiVectorEncoder  # lazy: sentence-transformers loads only on this path
    from sentence_transformers.base.modules import Dense, Normalize, Transformer

    plain, _ = _tiny_llava(target, seed=seed, image_size=image_size)
    encoder = Transformer(str(plain), transformer_task="feature-extraction")
    encoder.processor.chat_template = PLAIN_TEMPLATE
    torch.manual_seed(seed)
    projection = Dense(in_features=TINY["hidden_size"], out_features=dimension, bias=False,
                       activation_function=torch.nn.Identity(), module_input_name="token_embeddings")
    model = MultiVectorEncoder(modules=[encoder, projection, Normalize(module_input_name="token_embeddings")],
                               device="cpu")
    model.save_pretrained(str(target))
    return Path(target)
