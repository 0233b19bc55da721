"""The packed (padding-free) GPU path, checked on the CPU: the same logits as transformers' padded forward pass.

The flash kernel itself needs a GPU (``bench/gpu.py`` compares it there); here each pair's span is
attended by PyTorch's SDPA, so everything else the packed path does is checked: packing, positions,
token types, layers, pooler and head, for both architectures' heads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoring.checkpoint import layout_of
from scoring.engines import packed
from scoring.engines.torch_engine import torch_engine, torch_model
from scoring.tokenizer import TextTokenizer, pack_rows


def _padded_logits(model, rows: list[list[int]], types: list[list[int]], pad: int) -> np.ndarray:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    kinds = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row, kind) in enumerate(zip(rows, types, strict=True)):
        ids[r, :len(row)], mask[r, :len(row)], kinds[r, :len(row)] = torch.tensor(row), 1, torch.tensor(kind)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=kinds).logits.numpy()


def _packed_logits(model, rows, types) -> np.ndarray:
    inputs = pack_rows(rows, types)
    encoder = packed.PackedEncoder(model, packed.span_attention)
    with torch.inference_mode():
        return encoder.logits(*(torch.from_numpy(inputs[k]) for k in ("input_ids", "token_type_ids", "position_ids",
                                                                          "starts")), int(inputs["longest"])).numpy()


@pytest.mark.parametrize("architecture", ["bert", "xlm-roberta"])
def test_packed_forward_equals_the_padded_one(architecture):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    shape = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 num_labels=1, max_position_embeddings=80)
    if architecture == "bert":
        model, pad = BertForSequenceClassification(BertConfig(**shape)).eval(), 0
    else:
        model, pad = XLMRobertaForSequenceClassification(XLMRobertaConfig(**shape, type_vocab_size=1)).eval(), 1
    rng = np.random.default_rng(1)
    lengths = [3, 17, 60, 9, 60, 1 + 2, 33]
    rows = [list(rng.integers(pad + 1, 120, size=n)) for n in lengths]
    types = [[0] * (n // 2) + [int(architecture == "bert")] * (n - n // 2) for n in lengths]
    expected = _padded_logits(model, rows, types, pad)
    got = _packed_logits(model, rows, types)
    assert got.shape == expected.shape == (len(lengths), 1)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)
    assert np.ptp(got) > 1e-3  # the pairs really differ: equal outputs would not show a mix-up


def test_packed_inputs_hold_each_pair_as_the_tokenizer_builds_it(tiny_cross_encoder_dir):
    tok = TextTokenizer.from_dir(tiny_cross_encoder_dir)
    query = tok.encode_plain(["what is a reranker"])[0]
    docs = tok.encode_plain(["a model that reads query and document together", "bread", "rerankers sort candidates"])
    batch = tok.packed_pairs([(query, d) for d in docs])
    padded = tok.pair_batch(query, docs)
    starts = batch["starts"].tolist()
    assert starts[0] == 0 and starts[-1] == len(batch["input_ids"]) == int(padded["attention_mask"].sum())
    for r in range(len(docs)):
        n = int(padded["attention_mask"][r].sum())
        a, b = starts[r], starts[r + 1]
        assert b - a == n
        assert batch["input_ids"][a:b].tolist() == padded["input_ids"][r, :n].tolist()
        assert batch["token_type_ids"][a:b].tolist() == padded["token_type_ids"][r, :n].tolist()
        assert batch["position_ids"][a:b].tolist() == list(range(n))
    assert int(batch["longest"]) == int(padded["attention_mask"].sum(axis=1).max())
    texts = tok.packed_texts([("what is a reranker", "bread " * 40)], max_length=16)
    assert texts["starts"].tolist() == [0, 16] and texts["position_ids"].tolist() == list(range(16))


def test_packed_engine_scores_as_the_padded_engine(tiny_cross_encoder_dir):
    """The engine end to end on the CPU (SDPA per span standing in for the flash kernel): from texts and from a
    request's tokens, the logits of the engine the CPU serves with."""
    layout = layout_of(tiny_cross_encoder_dir, "cross-encoder")
    tok = TextTokenizer.from_dir(tiny_cross_encoder_dir)
    model = torch_model(tiny_cross_encoder_dir, layout, False)
    padded = torch_engine(tiny_cross_encoder_dir, layout, tok.copy(), model=model)
    engine = packed.PackedEngine("packed-test", tok.copy(), layout, model, device="cpu", attention=packed.span_attention)
    docs = ["rerankers read the query with each document", "the weather is fine", "cross-encoders score pairs " * 30]
    expected = padded.score_pairs("what does a reranker do", docs)
    np.testing.assert_allclose(engine.score_pairs("what does a reranker do", docs), expected, atol=2e-5)
    query = tok.encode_plain(["what does a reranker do"])[0]
    encoded = tok.encode_plain(docs[:2])
    np.testing.assert_allclose(engine.score_encoded_pairs([(query, d) for d in encoded]),
                               padded.score_encoded_pairs([(query, d) for d in encoded]), atol=2e-5)
    assert engine.merges and not getattr(padded, "merges", False)


def test_which_models_run_packed_and_why_the_others_do_not(tiny_cross_encoder_dir):
    layout = layout_of(tiny_cross_encoder_dir, "cross-encoder")
    model = torch_model(tiny_cross_encoder_dir, layout, False)
    attention = packed.span_attention
    assert packed.unsupported(model, "fp16", attention) is None
    assert packed.unsupported(model, "bf16", attention) is None
    assert "fp16 and bf16, not fp32" in packed.unsupported(model, "fp32", attention)
    assert "no variable-length attention" in packed.unsupported(model, "fp16", None)
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(tiny_cross_encoder_dir))
    assert "BertModel is not one of the packed architectures" in packed.unsupported(encoder, "fp16", attention)
    model.config.position_embedding_type = "relative_key"
    assert "relative positions" in packed.unsupported(model, "fp16", attention)
    # this torch (2.13) has the kernel's Python face, which the GPU path calls
    assert packed.varlen_attention() is not None


def _packed_scorer(tiny_scorer, model_dir):
    """The tiny cross-encoder served as on a GPU (one packed replica, the GPU's batch limits, no cache), with SDPA
    per span standing in for the flash kernel."""
    from scoring.choice import Choice
    from scoring.pool import WorkerPool
    from scoring.scorer import Scorer

    layout = layout_of(model_dir, "cross-encoder")
    tok = TextTokenizer.from_dir(model_dir)
    engine = packed.PackedEngine("packed-test", tok.copy(), layout, torch_model(model_dir, layout, False), device="cpu",
                                 attention=packed.span_attention)
    return Scorer(tiny_scorer.info, WorkerPool([engine], tok, Choice("packed-test", "test")), cache_bytes=0,
                  token_budget=65_536, batch_size=1024)


def test_concurrent_requests_share_packed_passes_and_score_as_alone(tiny_scorer, tiny_cross_encoder_dir):
    """Requests waiting together run in one packed pass (as on a GPU); each gets exactly its own scores."""
    import threading

    scorer = _packed_scorer(tiny_scorer, tiny_cross_encoder_dir)
    worker_fills = []  # the worker lays filled batches end to end; filling is the requests' threads' work
    replica = scorer.pool.replicas[0]
    replica.tokenizer.packed_pairs = lambda pairs: worker_fills.append(len(pairs))
    requests = [(f"question {k} about rerankers", [f"document {k}.{j} " + "words " * (3 * j + k) for j in range(6)])
                for k in range(4)]
    alone = [tiny_scorer.score(q, d, raw=True) for q, d in requests]
    release = threading.Event()
    holder = scorer.pool.ticket("holder")
    threading.Thread(target=lambda: scorer.pool.run(holder, [(1, lambda r: release.wait(10))])).start()
    results: dict = {}
    threads = [threading.Thread(target=lambda k=k: results.update({k: scorer.score(*requests[k], raw=True)}))
               for k in range(len(requests))]
    for t in threads:
        t.start()
    for _ in range(1000):  # until every request's batch waits behind the held worker (at most 10 s)
        if sum(len(t.pending) for t in scorer.pool._open) >= len(requests):
            break
        threading.Event().wait(0.01)
    release.set()
    for t in threads:
        t.join(10)
    holder.__exit__(None, None, None)
    for k, expected in enumerate(alone):
        np.testing.assert_allclose(results[k], expected, atol=2e-5)
    assert scorer.pool.batches_shared == len(requests)
    assert worker_fills == []


def test_a_packed_pass_that_fails_here_is_found_before_serving(tiny_cross_encoder_dir):
    layout = layout_of(tiny_cross_encoder_dir, "cross-encoder")
    tok = TextTokenizer.from_dir(tiny_cross_encoder_dir)
    model = torch_model(tiny_cross_encoder_dir, layout, False)
    assert packed.PackedEngine("t", tok, layout, model, device="cpu", attention=packed.span_attention).failure() is None

    def broken(*args):
        raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.\nmore")

    engine = packed.PackedEngine("t", tok, layout, model, device="cpu", attention=broken)
    assert engine.failure() == "the packed pass failed here: FlashAttention only supports Ampere GPUs or newer."


def test_a_batch_grown_to_its_graph_bucket_scores_its_pairs_as_before():
    """CUDA graphs replay fixed shapes: a batch grows to its bucket with filler pairs, and its own pairs' logits
    stay what they were (checked here with SDPA per span; the graphs themselves need a GPU: bench/gpu.py)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=1,
                                                     max_position_embeddings=64)).eval()
    rng = np.random.default_rng(3)
    rows = [list(rng.integers(1, 120, size=n)) for n in (5, 64, 30, 2, 64, 17)]
    inputs = pack_rows(rows, [[0] * len(r) for r in rows])
    grown, real = packed.bucketed(inputs, step=256, window=64)
    sizes = np.diff(grown["starts"])
    assert real == len(rows) and len(sizes) == 16 and grown["starts"][-1] == 256 == len(grown["input_ids"])
    assert sizes.min() >= 1 and sizes.max() <= 64 and (grown["position_ids"] < 64).all()
    assert grown["input_ids"][: inputs["starts"][-1]].tolist() == inputs["input_ids"].tolist()
    encoder = packed.PackedEncoder(model, packed.span_attention)

    def logits(batch):
        with torch.inference_mode():
            return encoder.logits(*(torch.from_numpy(batch[k]) for k in ("input_ids", "token_type_ids", "position_ids",
                                                                         "starts")), int(batch["longest"])).numpy()

    np.testing.assert_allclose(logits(grown)[:real], logits(inputs), atol=1e-5)
    big, _ = packed.bucketed(pack_rows([[1] * 60] * 40, [[0] * 60] * 40), step=256, window=64)
    assert len(big["starts"]) - 1 == 64 and big["starts"][-1] % 256 == 0 and np.diff(big["starts"]).max() <= 64


def test_graphs_are_a_gpu_matter(tiny_cross_encoder_dir):
    layout = layout_of(tiny_cross_encoder_dir, "cross-encoder")
    model = torch_model(tiny_cross_encoder_dir, layout, False)
    engine = packed.PackedEngine("t", TextTokenizer.from_dir(tiny_cross_encoder_dir), layout, model, device="cpu",
                                 attention=packed.span_attention)
    assert engine.use_graphs() == "CUDA graphs need a GPU" and engine.graphs is None
    assert engine.how == "pairs packed end to end, variable-length flash attention"
    assert engine.use_graphs(False) is None and engine.graphs is None


def test_long_documents_score_packed_as_padded_in_both_modes(tiny_scorer, tiny_cross_encoder_dir):
    """Windows of a long document (chunked, or truncated from either end) go through the packed engine from the
    plan's tokens and score as the padded engine scores them."""
    scorer = _packed_scorer(tiny_scorer, tiny_cross_encoder_dir)
    long_doc = " ".join(f"sentence {i} about budgets, rerankers and the weather." for i in range(120))
    docs = ["a short one", long_doc, "rerankers " * 30]
    for options in ({"long_documents": "chunk"}, {"long_documents": "truncate"},
                    {"long_documents": "truncate", "truncate_left": True}, {"max_tokens_per_doc": 40}):
        plan = scorer.plan("what is a reranker", docs, **options)
        assert plan.encodings is not None and (plan.windows > 3 or options.get("long_documents") == "truncate"
                                               or "max_tokens_per_doc" in options)
        np.testing.assert_allclose(scorer.score("what is a reranker", docs, raw=True, **options),
                                   tiny_scorer.score("what is a reranker", docs, raw=True, **options), atol=2e-5)


def test_batches_filled_apart_merge_as_if_filled_together():
    from scoring.tokenizer import merge_packed

    rows = [[5, 6, 7], [8, 9], [1, 2, 3, 4, 5, 6], [7]]
    types = [[0, 0, 1], [0, 1], [0, 0, 0, 1, 1, 1], [0]]
    together = pack_rows(rows, types)
    merged = merge_packed([pack_rows(rows[:1], types[:1]), pack_rows(rows[1:3], types[1:3]), pack_rows(rows[3:], types[3:])])
    for key in ("input_ids", "token_type_ids", "position_ids", "starts", "longest"):
        np.testing.assert_array_equal(merged[key], together[key])
    assert merged["starts"].dtype == np.int32
