"""A causal-LM reranker on a GPU, side by side: sentence-transformers' padded ``CrossEncoder.predict`` (fp32, fp16) and
this project's packed pass (``python bench/gpu.py --causal``; see :mod:`scoring.engines.causal`).

The checkpoint has the Qwen3-Reranker-0.6B layout (28 layers, hidden 1024, 16 query / 8 key-value heads of 128, q/k
norms, tied embeddings) with random weights and a word-level vocabulary built here; realistic passages of 40-120 words
(or ``--texts``). Printed: p50 per ``--docs``-document request (fresh documents each time), pairs/s on one
``--pairs``-document request and with ``--clients`` clients, Spearman and the largest difference against fp32
``CrossEncoder.predict``, peak GPU memory, and MFU: the FLOPs the pairs need over the GPU's measured bf16 matmul rate.
On the CPU (``--device cpu --shape tiny``) the same rows run with the packed pass's per-pair attention: a check that the
script runs, not a figure.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from causal import QUERY, documents

import rerank
from scoring.choice import Choice
from scoring.fidelity import spearman
from scoring.synthetic import QWEN3_06B, TINY, build_causal_reranker


def matmul_rate(device: str, size: int = 8192, reps: int = 20) -> float:
    """The device's measured bf16 matmul rate in FLOP/s (the MFU's denominator)."""
    import torch

    if device == "cpu":
        size, reps = 1024, 3
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - started)


def pass_flops(config, lengths: list[int]) -> float:
    """FLOPs of the packed pass over pairs of these token lengths: every linear layer on every token, causal attention
    within each pair (half the square), the one-row head on each pair's last token."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv = config.num_attention_heads * head, config.num_key_value_heads * head
    per_token = layers * 2 * (hidden * (q + 2 * kv) + q * hidden + 3 * hidden * config.intermediate_size)
    attention = layers * 2 * 2 * config.num_attention_heads * head * sum(n * (n + 1) / 2 for n in lengths)
    return per_token * sum(lengths) + attention + 2 * hidden * len(lengths)


def _sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def _p50(fn, reqs) -> tuple[float, list]:
    fn(reqs[0])
    out, times = [], []
    for docs in reqs[1:]:
        started = time.perf_counter()
        out.append(np.asarray(fn(docs), dtype=np.float64))
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def _rate(fn, reqs, clients: int) -> float:
    import threading

    started = time.perf_counter()
    threads = [threading.Thread(target=lambda part=part: [fn(d) for d in part]) for part in
               (reqs[k::clients] for k in range(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(len(d) for d in reqs) / (time.perf_counter() - started)


def packed_scorer(path: Path, device: str):
    """This project's scorer in bf16 on the GPU (the packed pass where it runs), no score cache; on the CPU the packed
    pass in fp32 with per-pair attention."""
    from scoring.engines.causal import PackedCausalEngine, causal_span_attention

    backend = "cuda-bf16" if device != "cpu" else "torch"
    loaded = rerank.load_scorer(str(path), allow_fallback=False, backend=backend, device=device)
    if device == "cpu":
        replica = loaded.pool.replicas[0]
        engine = PackedCausalEngine(replica.model, replica.layout, "torch", device="cpu", attention=causal_span_attention)
        loaded.pool.swap([engine], Choice("torch", "packed on the CPU (a check of the script)"))
    return rerank.Scorer(loaded.info, loaded, cache_bytes=0, token_budget=loaded._token_budget,
                         batch_size=loaded._batch_size)


def run(args) -> int:
    """The side-by-side table (``args``: bench/gpu.py's, with ``--shape``)."""
    import torch
    from sentence_transformers import CrossEncoder

    device = args.device
    with tempfile.TemporaryDirectory() as folder:
        path = build_causal_reranker(Path(folder) / "qwen3-reranker", shape=QWEN3_06B if args.shape == "0.6b" else TINY,
                                     words_from=args.tokenizer)
        reference = CrossEncoder(str(path), device=device)
        half = CrossEncoder(str(path), device=device, model_kwargs={"dtype": torch.float16}) if device != "cpu" else None
        ours = packed_scorer(path, device)
        print(f"{args.shape}-shaped Qwen3ForCausalLM on {device}; ours: {ours.backend.describe()}")
        reqs = [documents(args.docs, seed) for seed in range(args.reps + 1)]
        lengths = [n for docs in reqs[1:] for n in ours.plan(QUERY, docs).lengths]
        rows = {"CrossEncoder.predict fp32": lambda d: reference.predict([(QUERY, x) for x in d], batch_size=32,
                                                                         activation_fn=torch.nn.Identity())}
        if half is not None:
            rows["CrossEncoder.predict fp16"] = lambda d: half.predict([(QUERY, x) for x in d], batch_size=32,
                                                                       activation_fn=torch.nn.Identity())
        rows["this project, packed"] = lambda d: rerank.rank(QUERY, d, scorer=ours, raw=True).scores(len(d))
        rate = matmul_rate(device)
        flops = pass_flops(reference.model.config, lengths) / len(reqs[1:])
        big = documents(args.pairs, 10_000)
        many = [documents(args.docs, 20_000 + k) for k in range(args.clients * 4)]
        print(f"{args.docs} documents a request, {statistics.mean(lengths) * args.docs:,.0f} tokens; bf16 matmul "
              f"{rate / 1e12:.1f} TFLOP/s measured")
        print(f"way | p50 / request | pairs/s, one request of {args.pairs} | pairs/s, {args.clients} clients | "
              "Spearman vs fp32 | max |diff| | peak GiB | MFU")
        base = None
        for name, fn in rows.items():
            if device != "cpu":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            p50, scores = _p50(fn, reqs)
            base = base or scores
            one = _rate(fn, [big], 1)
            clients = _rate(fn, many, args.clients)
            rho = float(np.mean([spearman(a, b) for a, b in zip(scores, base, strict=True)]))
            diff = max(float(np.abs(a - b).max()) for a, b in zip(scores, base, strict=True))
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device != "cpu" else float("nan")
            print(f"{name} | {p50 * 1e3:.1f} ms | {one:,.0f} | {clients:,.0f} | {rho:.4f} | {diff:.2e} | {peak:.2f} | "
                  f"{flops / p50 / rate:.1%}")
    return 0
