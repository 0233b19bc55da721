"""Reranking on a CUDA GPU (and the same machine's CPU cores): the seed's way against ours, in one run.

``python bench/gpu.py [--device cuda] [--tokenizer DIR] [--texts FILE.jsonl] [--weights DIR] [--reps 20] [--cpu-reps 3]
[--cpu-only] [--causal [--shape 0.6b|tiny]]`` (``--causal``: a causal-LM reranker, see ``bench/gpu_causal.py``)

Runs where a GPU machine has only torch, transformers, sentence-transformers, numpy, pandas and
onnxruntime (no gradio, fastapi or duckdb): it imports the scoring core alone. It builds a
MiniLM-L6-shaped cross-encoder itself (random weights: speed and fidelity, not quality) with the
tokenizer found in ``--tokenizer`` (default: the packaged all-MiniLM-L6-v2's, where installed), takes
documents from ``--texts`` (one JSON object with a ``text`` per line, e.g. SciFact abstracts; default:
the standard library's docstrings) and prints one table (long documents truncated as the seed does, so
both sides compute the same pairs): the seed's way (``CrossEncoder.predict``,
batch 32, fp32) and ours per precision (fp16 also padded, and with two GPU workers): p50 for a 50-document
request, pairs/s on 1,000 pairs (20 requests of 50 in turn, and one request of 1,000), with 8 concurrent
requests, Spearman and max |diff| vs the seed's fp32 scores, peak GPU memory; then what
``RERANK_BACKEND=auto`` picks there, and the CPU rows (the seed's way on every core vs ours).
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import rerank
from scoring import engines
from scoring.fidelity import spearman

ROOT = Path(__file__).resolve().parents[1]

QUERIES = ["Which treatments reduce the risk of heart disease?", "How do bacteria become resistant to antibiotics?",
           "What causes inflammation in the brain?", "Does exercise change gene expression in muscle?",
           "How is insulin resistance linked to obesity?", "Which proteins control cell division?"]
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def build_cross_encoder(target: Path, tokenizer_dir: Path, weights: Path | None = None) -> Path:
    """A cross-encoder of all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads): random weights, or ``weights``'
    trained encoder (e.g. all-MiniLM-L6-v2's, in any precision) with a seeded one-logit head, whose activations
    and score spread are those of a trained model (random weights put reduced precision's noise at its worst)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    if weights is not None:
        model = BertForSequenceClassification.from_pretrained(str(weights), num_labels=1, dtype=torch.float32)
        model.eval().save_pretrained(str(target))
    else:
        vocab = sum(1 for _ in open(tokenizer_dir / "vocab.txt", encoding="utf-8"))
        config = BertConfig(vocab_size=vocab, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536, max_position_embeddings=512, num_labels=1)
        BertForSequenceClassification(config).eval().save_pretrained(str(target))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, target / name)
    settings = json.loads((target / "tokenizer_config.json").read_text())
    settings["model_max_length"] = 512
    (target / "tokenizer_config.json").write_text(json.dumps(settings))
    return target


def load_texts(path: str | None, minimum: int) -> list[str]:
    """Documents for the requests: the given JSONL's ``text`` fields, or the standard library's docstrings."""
    if path:
        with open(path, encoding="utf-8") as handle:
            texts = [json.loads(line)["text"] for line in handle if line.strip()]
    else:
        from retrieval import corpus

        texts = [p.text for p in corpus.builtin_passages()]
    texts = [t for t in dict.fromkeys(texts) if len(t) > 200]
    if len(texts) < minimum:
        raise SystemExit(f"need {minimum} distinct documents, found {len(texts)}")
    return texts


def requests(texts: list[str], n: int, docs: int, offset: int = 0) -> list[tuple[str, list[str]]]:
    """``n`` requests of ``docs`` fresh documents each (no document twice, so no cache can help)."""
    return [(QUERIES[i % len(QUERIES)], texts[offset + i * docs: offset + (i + 1) * docs]) for i in range(n)]


def sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def timed(fn, reqs, device: str) -> tuple[list[float], list[np.ndarray]]:
    """Latency of each request after one warm-up request, and the scores."""
    fn(*reqs[0])
    sync(device)
    out, scores = [], []
    for query, docs in reqs[1:]:
        started = time.perf_counter()
        scores.append(np.asarray(fn(query, docs), dtype=np.float64))
        sync(device)
        out.append(time.perf_counter() - started)
    return out, scores


def throughput(fn, reqs, clients: int) -> float:
    """Pairs/s with ``clients`` threads sending their requests at once (one each when clients=1, in turn)."""
    started = time.perf_counter()
    if clients == 1:
        for query, docs in reqs:
            fn(query, docs)
    else:
        threads = [threading.Thread(target=lambda part=part: [fn(q, d) for q, d in part])
                   for part in (reqs[k::clients] for k in range(clients))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(len(d) for _, d in reqs) / (time.perf_counter() - started)


def median_rate(fn, reqs, runs: int = 3) -> float:
    """Pairs/s of the requests sent in turn, the median of ``runs`` runs (one large request is a short, noisy run)."""
    return float(np.median([throughput(fn, reqs, 1) for _ in range(runs)]))


def agreement(scores: list[np.ndarray], reference: list[np.ndarray]) -> tuple[float, float]:
    """Mean Spearman and the largest absolute difference against the seed's fp32 scores, request by request."""
    rho = float(np.mean([spearman(a, b) for a, b in zip(scores, reference, strict=True)]))
    return rho, float(max(np.max(np.abs(a - b)) for a, b in zip(scores, reference, strict=True)))


def peak_memory_reset(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: str) -> float:
    if device == "cpu":
        return float("nan")
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokenizer", help="folder with tokenizer.json/vocab.txt (default: the packaged model's)")
    parser.add_argument("--texts", help="JSONL of documents ({'text': ...} per line)")
    parser.add_argument("--weights", help="folder of a trained BERT encoder of that shape (default: random weights)")
    parser.add_argument("--reps", type=int, default=20, help="50-document requests per variant")
    parser.add_argument("--docs", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--backends", help="comma-separated (default: every backend of the device)")
    parser.add_argument("--cpu-reps", type=int, default=3, help="50-document requests for the CPU rows (0: none)")
    parser.add_argument("--diagnose", action="store_true", help="only time forward passes per precision and attention")
    parser.add_argument("--breakdown", action="store_true", help="only time the stages of a request in fp16")
    parser.add_argument("--tokenize", action="store_true", help="only time tokenizing 50 and 1,000 documents: the "
                                                                  "tokenizer's threads, Python threads, processes")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU rows (with RERANK_BACKEND=auto's measured "
                                                                 "backend and workers x threads)")
    parser.add_argument("--causal", action="store_true", help="a Qwen3-Reranker-shaped causal LM instead: padded "
                                                               "CrossEncoder.predict against the packed pass, with MFU "
                                                               "(bench/gpu_causal.py)")
    parser.add_argument("--shape", choices=["0.6b", "tiny"], default="0.6b", help="with --causal: the model's shape")
    args = parser.parse_args()
    if args.causal:
        import gpu_causal

        args.device = engines.resolve_device(args.device)
        return gpu_causal.run(args)
    import torch
    from sentence_transformers import CrossEncoder

    device = engines.resolve_device(args.device)
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else rerank.packaged_model_path()
    n_pairs = args.pairs // args.docs
    texts = load_texts(args.texts, args.docs * (args.reps + 1 + 2 * n_pairs + 2 * args.clients))
    gpu = torch.cuda.get_device_name(device) if device != "cpu" else "none"
    print(f"device {device} ({gpu}); torch {torch.__version__}; {os.cpu_count()} CPU cores; {len(texts)} documents")
    with tempfile.TemporaryDirectory() as tmp:
        ce_dir = build_cross_encoder(Path(tmp) / "ce", tokenizer_dir, Path(args.weights) if args.weights else None)
        print(f"weights: {args.weights or 'random'}")
        reqs = requests(texts, args.reps + 1, args.docs)
        if args.diagnose:
            diagnose(ce_dir, reqs, device)
            return 0
        if args.tokenize:
            tokenize_rates(ce_dir, texts[:1000])
            return 0
        if args.breakdown:
            breakdown(ce_dir, reqs[:10], device, Path(tmp) / "cache")
            breakdown(ce_dir, requests(texts, 3, 1000), device, Path(tmp) / "cache")
            return 0
        if args.cpu_only:
            cpu_rows(ce_dir, requests(texts, max(2, args.cpu_reps) + 1, args.docs), Path(tmp) / "cache", measured=True)
            return 0
        bulk = requests(texts, n_pairs, args.docs, offset=(args.reps + 1) * args.docs)
        conc = requests(texts, 2 * args.clients, args.docs, offset=(args.reps + 1 + n_pairs) * args.docs)
        seed = CrossEncoder(str(ce_dir), device=device, max_length=512)
        seed_fn = lambda q, d, m=seed: m.predict([(q, x) for x in d], batch_size=32,  # noqa: E731
                                                 show_progress_bar=False, activation_fn=torch.nn.Identity())
        lengths = [len(seed.tokenizer(q, x, truncation=True, max_length=512)["input_ids"]) for q, d in reqs for x in d]
        print(f"requests: {args.docs} documents, tokens per pair median {np.median(lengths):.0f} "
              f"(mean {np.mean(lengths):.0f}, max {max(lengths)})")
        rows = []
        peak_memory_reset(device)
        lat, reference = timed(seed_fn, reqs, device)
        one = [(QUERIES[0], [d for _, docs in bulk for d in docs])]
        rows.append(("seed: CrossEncoder.predict bs=32 fp32", lat, throughput(seed_fn, bulk, 1), median_rate(seed_fn, one),
                     throughput(seed_fn, conc, args.clients), 1.0, 0.0, peak_memory(device)))
        del seed, seed_fn  # its weights leave the GPU before ours are measured
        if device != "cpu":
            half = CrossEncoder(str(ce_dir), device=device, max_length=512, model_kwargs={"dtype": torch.float16})
            half_fn = lambda q, d, m=half: m.predict([(q, x) for x in d], batch_size=64,  # noqa: E731
                                                     show_progress_bar=False, activation_fn=torch.nn.Identity())
            peak_memory_reset(device)
            lat, scores = timed(half_fn, reqs, device)
            rows.append(("seed, fp16 weights, bs=64 (for reference)", lat, throughput(half_fn, bulk, 1),
                         median_rate(half_fn, one), throughput(half_fn, conc, args.clients),
                         *agreement(scores, reference), peak_memory(device)))
            del half, half_fn
        names = args.backends.split(",") if args.backends else [b for b in engines.backends_for(device)
                                                                 if engines.unavailable(b, device) is None]
        variants = [(name, True, 1, True) for name in names]
        if "cuda-fp16" in names:  # what packing, graphs and more workers each add, on the precision auto usually picks
            variants += [("cuda-fp16", True, 1, False), ("cuda-fp16", False, 1, False), ("cuda-fp16", False, 2, False),
                         ("cuda-fp16", True, 2, True), ("cuda-fp16", True, 2, False)]
        one = [(QUERIES[0], [d for _, docs in bulk for d in docs])]  # the same 1,000 documents as one request
        for name, packed, workers, graphs in variants:
            peak_memory_reset(device)
            started = time.perf_counter()
            scorer = our_scorer(ce_dir, name, device, Path(tmp) / "cache", packed=packed, workers=workers)
            print(f"  {name} loaded in {time.perf_counter() - started:.1f} s", flush=True)
            for replica in scorer.pool.replicas if not graphs else []:
                replica.graphs = None  # the packed pass launched kernel by kernel
            fn = lambda q, d, s=scorer: rerank.rank(q, d, scorer=s, raw=True, long_documents="truncate").scores()  # noqa: E731
            lat, scores = timed(fn, reqs, device)
            first = scorer.pool.replicas[0]
            how = ("padded" if type(first).__name__ != "PackedEngine" else
                   "packed + CUDA graphs" if first.graphs is not None else "packed")
            label = f"ours: {name} {how}, {workers} worker{'s' if workers > 1 else ''}"
            throughput(fn, conc, args.clients)  # warm-up: shapes first seen with concurrent requests (merged batches)
            rows.append((label, lat, throughput(fn, bulk, 1), median_rate(fn, one), throughput(fn, conc, args.clients),
                         *agreement(scores, reference), peak_memory(device)))
            started = time.perf_counter()
            scorer.plan(*one[0], long_documents="truncate")
            print(f"  {label}: planning the 1,000-document request {(time.perf_counter() - started) * 1000:.0f} ms; "
                  f"batches shared with another request's {scorer.pool.batches_shared} of {scorer.pool.batches_run}",
                  flush=True)
            del scorer
        base = float(np.median(rows[0][1]))
        print(f"{'variant':<50}{'p50 ms':>8}{'p95 ms':>8}{'x seed':>8}{'20x50/s':>9}{'1x1000/s':>9}{'x seed':>8}"
              f"{f'{args.clients} clients':>11}{'spearman':>10}{'max|diff|':>10}{'peak GiB':>9}")
        for name, lat, bulk_tp, one_tp, conc_tp, rho, diff, mem in rows:
            p50 = float(np.median(lat))
            print(f"{name:<50}{p50 * 1000:>8.1f}{np.percentile(lat, 95) * 1000:>8.1f}{base / p50:>8.2f}{bulk_tp:>9.0f}"
                  f"{one_tp:>9.0f}{one_tp / rows[0][3]:>8.2f}{conc_tp:>11.0f}{rho:>10.4f}{diff:>10.4f}{mem:>9.2f}")
        auto = rerank.load_scorer(str(ce_dir), allow_fallback=False, backend="auto", device=device,
                                cache_dir=Path(tmp) / "cache")
        started = time.perf_counter()
        chosen = auto.tune(budget_s=120)
        print(f"RERANK_BACKEND=auto on {device} picks {chosen.backend} ({time.perf_counter() - started:.1f} s to measure): "
              + "; ".join(f"{m.backend} {m.seconds * 1000:.1f} ms rho {m.spearman:.4f}" if m.seconds is not None
                          else f"{m.backend}: {m.note}" for m in chosen.measurements))
        del auto
        if args.cpu_reps and device != "cpu":
            cpu_rows(ce_dir, reqs[: args.cpu_reps + 1], Path(tmp) / "cache")
    return 0


def our_scorer(ce_dir: Path, name: str, device: str, cache: Path, *, packed: bool = True, workers: int = 1):
    """This project's scorer on one backend with no cache (every pair computed); ``packed=False`` swaps in padded
    replicas where the packed engine would serve."""
    loaded = rerank.load_scorer(str(ce_dir), allow_fallback=False, backend=name, device=device, cache_dir=cache,
                              workers=workers)
    if not packed:
        source = loaded.pool.source
        loaded.pool.swap(engines.replicas(name, source.path, source.layout, loaded.pool.tokenizer, cache_dir=cache,
                                          workers=workers, device=device, packed=False), loaded.backend)
    return rerank.Scorer(loaded.info, loaded, cache_bytes=0, token_budget=loaded._token_budget,
                       batch_size=loaded._batch_size)


def diagnose(ce_dir: Path, reqs, device: str, reps: int = 10) -> None:
    """Forward passes alone on one 50-document request's pairs: by precision, attention kernel, load path and threads."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from scoring.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(ce_dir)
    query, docs = reqs[1]
    encoded = tok.encode_plain([query, *docs])
    for e in encoded[1:]:
        e.truncate(512 - len(encoded[0].ids) - 3)
    full = tok.pair_batch(encoded[0], encoded[1:], pad_to_multiple_of=8)
    quarters = [tok.pair_batch(encoded[0], encoded[1 + k::4], pad_to_multiple_of=8) for k in range(4)]

    def run(model, batch) -> None:
        with torch.inference_mode():
            model(**{k: torch.from_numpy(v).to(device) for k, v in batch.items()}).logits.float().cpu()

    def clock(fn) -> float:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        return float(np.median(times)) * 1000

    print(f"diagnose: one request, batch {full['input_ids'].shape}")
    for dtype in ("float32", "float16", "bfloat16"):
        for attn in ("sdpa", "eager"):
            for how in ("to", "dtype="):
                kwargs = {"attn_implementation": attn} | ({"dtype": getattr(torch, dtype)} if how == "dtype=" else {})
                model = AutoModelForSequenceClassification.from_pretrained(str(ce_dir), **kwargs)
                model = model.to(device=device, dtype=getattr(torch, dtype)).eval()
                one = clock(lambda m=model: run(m, full))

                def threaded(m=model) -> None:
                    threads = [threading.Thread(target=run, args=(m, q)) for q in quarters]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()

                four = clock(threaded)
                serial = clock(lambda m=model: [run(m, q) for q in quarters])
                print(f"{dtype:<9} {attn:<6} load {how:<7} one batch {one:7.2f} ms; 4 quarters serial {serial:7.2f} ms; "
                      f"4 threads {four:7.2f} ms")
                del model
    model = AutoModelForSequenceClassification.from_pretrained(str(ce_dir), attn_implementation="sdpa")
    model = model.to(device=device, dtype=torch.float16).eval()
    run(model, full)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        run(model, full)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))


def tokenize_rates(ce_dir: Path, docs: list[str]) -> None:
    """Tokenizing 50 and 1,000 documents into id arrays, as planning does (no character spans): one call of the
    Rust tokenizer's own thread pool, the same on one thread, in chunks on Python threads with their own copies,
    and in chunks on worker processes that send arrays back (the shape a tokenization pool outside Python's
    objects would have): what a move of planning off the serving process could gain."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from scoring.tokenizer import TextTokenizer

    base = TextTokenizer.from_dir(ce_dir)

    def rate(fn, texts) -> float:
        fn(texts)
        times = []
        for _ in range(7):
            started = time.perf_counter()
            fn(texts)
            times.append(time.perf_counter() - started)
        return float(np.median(times)) * 1000

    for n in (50, len(docs)):
        texts = docs[:n]
        rows = [f"one call {rate(lambda t: [e.ids for e in base.encode_plain(t, spans=False)], texts):.1f} ms"]
        for threads in (4, 16):
            copies = [base.copy() for _ in range(threads)]
            with ThreadPoolExecutor(threads) as pool:
                ms = rate(lambda t, c=copies, p=pool, k=threads: list(p.map(
                    lambda a: [e.ids for e in a[0].encode_plain(a[1], spans=False)],
                    zip(c, [t[i::k] for i in range(k)], strict=True))), texts)
            rows.append(f"{threads} threads {ms:.1f} ms")
        for procs in (4, 8, 16):
            with ProcessPoolExecutor(procs, initializer=_tokenizer_process, initargs=(str(ce_dir),)) as pool:
                ms = rate(lambda t, p=pool, k=procs: list(p.map(_tokenize_to_arrays, [t[i::k] for i in range(k)])), texts)
            rows.append(f"{procs} processes {ms:.1f} ms")
        print(f"tokenizing {n} documents into arrays: " + ", ".join(rows), flush=True)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # read when the Rust pool first starts: a fresh process shows it
    import subprocess

    code = ("import json,sys,time;from tokenizers import Tokenizer;t=Tokenizer.from_file(sys.argv[1]);"
            "d=[json.loads(l) for l in sys.stdin];t.encode_batch_fast(d);s=time.perf_counter();"
            "[e.ids for e in t.encode_batch_fast(d,add_special_tokens=False)];print(f'{(time.perf_counter()-s)*1000:.1f}')")
    out = subprocess.run([sys.executable, "-c", code, str(ce_dir / "tokenizer.json")], capture_output=True, text=True,
                         input="\n".join(json.dumps(d) for d in docs))
    print(f"tokenizing {len(docs)} documents on one thread (TOKENIZERS_PARALLELISM=false): {out.stdout.strip()} ms "
          f"{out.stderr.strip()[-200:]}")


_PROCESS_TOKENIZER = None


def _tokenizer_process(model_dir: str) -> None:
    global _PROCESS_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _PROCESS_TOKENIZER = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))


def _tokenize_to_arrays(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encodings = _PROCESS_TOKENIZER.encode_batch_fast(texts, add_special_tokens=False)
    lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32, count=int(lengths.sum()))
    return ids, lengths


def breakdown(ce_dir: Path, reqs, device: str, cache: Path, workers: int = 1) -> None:
    """Where a request's time goes on the GPU (the packed fp16 engine, graphs on and off): planning (tokenizing),
    filling the packed inputs, the engine's pass (bucketing, copies, replay, the logits back), the GPU's own time
    for the pass (CUDA events), scoring through the worker pool, and ``rank`` end to end; medians over the requests."""
    import torch

    scorer = our_scorer(ce_dir, "cuda-fp16", device, cache, workers=workers)
    engine = scorer.pool.replicas[0]
    graphs = engine.graphs
    for label, use in (("graphs", graphs), ("no graphs", None)):
        for replica in scorer.pool.replicas:
            replica.graphs = use
        stages: dict[str, list[float]] = {k: [] for k in ("plan", "fill", "pass", "gpu", "score", "rank")}
        for n, (query, docs) in enumerate(reqs * 2):
            clock = time.perf_counter
            t0 = clock()
            plan = scorer.plan(query, docs, long_documents="truncate")
            t1 = clock()
            packed = engine.tokenizer.packed_pairs([(plan.query_encoding, e) for e in plan.encodings])
            t2 = clock()
            engine._forward(packed)
            t3 = clock()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            engine._forward(packed)
            end.record()
            end.synchronize()
            t4 = clock()
            scorer.score_plan(plan, raw=True)
            t5 = clock()
            rerank.rank(query, docs, scorer=scorer, raw=True, long_documents="truncate").scores()
            t6 = clock()
            if n >= len(reqs):  # the second round: every shape seen once
                for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, begin.elapsed_time(end) / 1000, t5 - t4,
                                               t6 - t5), strict=True):
                    stages[key].append(value)
        print(f"{len(reqs[0][1])} documents, cuda-fp16 packed, {label}, {workers} worker(s): "
              + ", ".join(f"{k} {np.median(v) * 1000:.2f} ms" for k, v in stages.items()), flush=True)


def cpu_rows(ce_dir: Path, reqs, cache: Path, *, measured: bool = False) -> None:
    """The same machine without its GPU: the seed's way on every core (torch's threads) vs ours (one worker a core;
    ``measured``: also the backend and workers x threads that ``RERANK_BACKEND=auto`` measures and picks here)."""
    import torch
    from sentence_transformers import CrossEncoder

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    seed = CrossEncoder(str(ce_dir), device="cpu", max_length=512)
    seed_lat, _ = timed(lambda q, d, m=seed: m.predict([(q, x) for x in d], batch_size=32, show_progress_bar=False),
                        reqs, "cpu")
    ours = rerank.load_scorer(str(ce_dir), allow_fallback=False, backend="torch", device="cpu", cache_dir=cache)
    ours = rerank.Scorer(ours.info, ours, cache_bytes=0)
    our_lat, _ = timed(lambda q, d: rerank.rank(q, d, scorer=ours, raw=True, long_documents="truncate").scores(), reqs, "cpu")
    s, o = float(np.median(seed_lat)), float(np.median(our_lat))
    print(f"CPU only, {cores} cores, {len(reqs) - 1} requests of {len(reqs[0][1])} documents: seed p50 {s * 1000:.0f} ms "
          f"(torch, {cores} threads); ours (torch fp32, {ours.workers} workers x 1 thread) p50 {o * 1000:.0f} ms = "
          f"{s / o:.2f}x")
    if measured:
        started = time.perf_counter()
        auto = rerank.load_scorer(str(ce_dir), allow_fallback=False, backend="auto", device="cpu", cache_dir=cache)
        chosen = auto.tune(budget_s=150)
        print(f"  measured in {time.perf_counter() - started:.0f} s: {chosen.describe()}; shapes "
              + ", ".join(f"{r['shape']} {r['seconds']:.3f}s" if r["seconds"] else f"{r['shape']} ({r['note']})"
                          for r in chosen.shapes)
              + "; backends " + ", ".join(f"{m.backend} {m.seconds:.3f}s {m.spearman:.4f}" for m in chosen.measurements
                                          if m.seconds is not None))
        auto = rerank.Scorer(auto.info, auto, cache_bytes=0)
        torch.set_num_threads(cores)
        seed_lat, _ = timed(lambda q, d, m=seed: m.predict([(q, x) for x in d], batch_size=32,
                                                            show_progress_bar=False), reqs, "cpu")
        torch.set_num_threads(chosen.threads)
        auto_lat, _ = timed(lambda q, d: rerank.rank(q, d, scorer=auto, raw=True, long_documents="truncate").scores(),
                            reqs, "cpu")
        s, a = float(np.median(seed_lat)), float(np.median(auto_lat))
        print(f"  seed p50 {s * 1000:.0f} ms; ours as measured ({chosen.backend}, {auto.workers} workers x "
              f"{chosen.threads} threads) p50 {a * 1000:.0f} ms = {s / a:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
