"""What the fidelity gate's thresholds are worth: its probe verdict beside the nDCG@10 lost on labelled queries.

``python bench/gate.py --model DIR [--depth 50] [--limit N] [--scores-cache DIR] [--variants A,B] [--models ...]``

For the trained cross-encoder (``bench/train_reranker.py --out DIR``) and the embedded default, every reduced-precision
engine that runs here, and fp32 with seeded noise added to its scores (a stand-in for engines that drift further),
are compared with fp32 twice: on the fidelity probe (:mod:`scoring.fidelity`: nDCG@10 with fp32's scores as gains,
top-10 agreement) and on the dev collections' judged queries (nDCG@10 on their own labels, reranking the BM25 top
``--depth``). Rows are printed for the development half of the queries (where the thresholds were set) and the
held-out half (where they are checked); the last lines say whether every engine the gate admits lost at most 0.005
nDCG@10 on every collection. An int8 variant named with ``:w7`` or ``:w8`` gets 7- or 8-bit weights whatever this CPU
is (the app gives 7 bits to CPUs whose int8 sums saturate, AVX2 without VNNI, and 8 elsewhere), so one machine shows
what the other bit width costs. Needs ../shared/eval.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import dev_sets
import numpy as np

import rerank
from scoring import engines, fidelity
from scoring.probe import fidelity_probe

NOISE = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)  # noise added to fp32's scores, times each query's score spread (std)
TOLERANCE = 0.005
REDUCED = ("onnxruntime-int8", "onnxruntime-int8-static", "openvino-int8", "torch-bf16", "openvino-bf16")
WEIGHT_BITS = {"w7": False, "w8": True}  # a variant's suffix -> whether its int8 graphs are made as for an int8 dot


def noisy(scores: np.ndarray, level: float, key: str) -> np.ndarray:
    """``scores`` plus Gaussian noise of ``level`` times their standard deviation, seeded by ``key`` (the same noise
    for the same query every run)."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    spread = float(np.std(scores)) or 1.0
    return scores + np.random.default_rng(seed).normal(0.0, level * spread, len(scores))


def as_logits(scores: np.ndarray) -> np.ndarray:
    """A cross-encoder's sigmoid scores back as the logits the probe reads, so noise has the same size on both."""
    clipped = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(clipped / (1 - clipped))


def probe_scores(scorer) -> list[np.ndarray]:
    """The model's scores of each fidelity-probe question, as the gate reads them (logits or cosines)."""
    return [np.asarray(scorer.score(q.query, list(q.documents), raw=True, long_documents="truncate"), dtype=np.float64)
            for q in fidelity_probe()]


def parts(variant: str) -> tuple[str, str]:
    """A variant's backend and its forced weight width (``"w7"``, ``"w8"`` or ``""``: as the app picks here)."""
    backend, _, bits = variant.partition(":")
    return backend, bits


def variants(model: str, cache: Path, chosen: list[str] | None = None) -> dict[str, Callable[[], object]]:
    """fp32 and each reduced-precision engine that runs here (or the ``chosen`` ones, ``backend[:w7|:w8]``), as scorers
    to build on demand."""
    names = ["onnxruntime", *[n for n in (chosen or REDUCED) if engines.unavailable(parts(n)[0]) is None]]
    return {name: (lambda name=name: _load(model, name, cache)) for name in names}


def _load(model: str, variant: str, cache: Path):
    """The scorer of ``variant``: a backend, its int8 weights' width forced where the name says."""
    backend, bits = parts(variant)
    forced = (mock.patch.object(engines, "cpu_has_int8_dot", lambda: WEIGHT_BITS[bits]) if bits
              else contextlib.nullcontext())
    with forced:
        return rerank.load_scorer(model, allow_fallback=False, backend=backend, cache_dir=cache)


def measure_model(label: str, model: str, halves: list[tuple[dev_sets.Pools, dev_sets.Pools]], cache: Path,
                  scores_cache: Path, chosen: list[str] | None = None) -> list[dict]:
    """Rows for one model: each engine and noise level, probe agreement and nDCG@10 lost per collection and half."""
    rows, reference = [], None
    for name, build in variants(model, cache, chosen).items():
        scorer = build()
        if scorer.backend.backend != parts(name)[0]:
            print(f"{label}: {name} does not run here ({scorer.backend.how})", file=sys.stderr)
            continue
        service = dev_sets.uncached_service(scorer)
        probe = probe_scores(scorer)
        key = f"{label}-{dev_sets.fingerprint(model)}-{name}"
        dev = [[dev_sets.cached_scores(scores_cache, f"{key}-{pools.name}-{part}-{pools.pairs}",
                                       lambda pools=pools, service=service: dev_sets.score_pools(service, pools))
                for part, pools in zip(("dev", "held"), pair, strict=True)] for pair in halves]
        if reference is None:
            reference = (probe, dev)
            space = as_logits if scorer.info.mode == "cross-encoder" else np.asarray
            for level in NOISE:
                rows.append(_row(label, f"fp32 + noise {level:g} sd",
                                 [noisy(s, level, f"probe{n}") for n, s in enumerate(probe)],
                                 [[{q: noisy(space(s), level, q) for q, s in part.items()} for part in pair]
                                  for pair in dev], reference, halves))
        rows.append(_row(label, name, probe, dev, reference, halves))
        print(f"{label}: {name} measured", file=sys.stderr, flush=True)
    return rows


def _row(label, name, probe, dev, reference, halves) -> dict:
    agreement = fidelity.compare(probe, reference[0])
    lost, pooled = {}, {"dev": [], "held": []}
    for pair, mine, theirs in zip(halves, dev, reference[1], strict=True):
        for part, pools, m, t in zip(("dev", "held"), pair, mine, theirs, strict=True):
            ours, fp32 = pools.per_query(m), pools.per_query(t)
            lost[(pools.name, part)] = float(np.mean([fp32[q] - ours[q] for q in ours]))
            pooled[part] += [fp32[q] - ours[q] for q in ours]
    return {"model": label, "variant": name, "agreement": agreement, "lost": lost,
            "pooled": {part: (float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v)))) for part, v in pooled.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    dev_sets.judged_model_arguments(parser, limit="queries of each half and collection")
    parser.add_argument("--variants", help="comma-separated engines to compare with fp32, BACKEND[:w7|:w8] "
                        f"(default: {','.join(REDUCED)})")
    parser.add_argument("--models", default="trained,default", help="the trained cross-encoder and/or the embedded default")
    parsed = dev_sets.parse(parser)
    if parsed is None:
        return 0
    args, folders, _ = parsed
    halves = [dev_sets.split_pools(f, depth=args.depth, limit=args.limit) for f in folders]
    rows, chosen = [], args.variants.split(",") if args.variants else None
    wanted = args.models.split(",")
    if not set(wanted) <= {"trained", "default"}:
        parser.error(f"--models takes trained and/or default, comma-separated; got {args.models!r}")
    if chosen and (bad := [v for v in chosen if parts(v)[0] not in REDUCED or parts(v)[1] not in ("", *WEIGHT_BITS)]):
        parser.error(f"--variants takes {', '.join(REDUCED)}, each optionally with :w7 or :w8; got {', '.join(bad)}")
    with tempfile.TemporaryDirectory() as tmp:
        for key, label, model in (("trained", "trained cross-encoder", args.model),
                                  ("default", "embedded default", str(rerank.packaged_model_path()))):
            if key in wanted:
                rows += measure_model(label, model, halves, Path(tmp), Path(args.scores_cache), chosen)
    names = [pair[0].name for pair in halves]
    print(f"gate: admitted at probe nDCG@10 >= {fidelity.MIN_NDCG} and top-10 agreement >= {fidelity.MIN_TOP10}; "
          f"nDCG@10 lost against fp32 on each collection's judged queries (development half / held-out half), "
          f"BM25 top {args.depth} reranked")
    print(f"{'model':<22}{'variant':<26}{'probe nDCG':>11}{'top-10':>8}{'gate':>10}"
          + "".join(f"{n[:18]:>22}" for n in names) + f"{'all queries (mean +- s.e.)':>36}")
    for r in rows:
        a, p = r["agreement"], r["pooled"]
        print(f"{r['model']:<22}{r['variant']:<26}{a.ndcg:>11.4f}{a.top10:>8.2f}{'admits' if a.admitted else 'rejects':>10}"
              + "".join(f"{r['lost'][(n, 'dev')]:>+11.4f} /{r['lost'][(n, 'held')]:>+8.4f}" for n in names)
              + f"{p['dev'][0]:>+11.4f} +-{p['dev'][1]:.4f} /{p['held'][0]:>+8.4f} +-{p['held'][1]:.4f}")
    admitted = [r for r in rows if r["agreement"].admitted]
    worst = max((v for r in admitted for (_, part), v in r["lost"].items() if part == "held"), default=0.0)
    pooled = max((r["pooled"]["held"][0] for r in admitted), default=0.0)
    print(f"over all held-out queries at once, the most any admitted variant lost: {pooled:+.4f}")
    over = [r for r in rows if max(r["lost"].values()) > TOLERANCE]
    print(f"admitted variants: {len(admitted)} of {len(rows)}; the most nDCG@10 any of them lost on a held-out half: "
          f"{worst:+.4f} (tolerance {TOLERANCE})")
    print(f"variants that lost more than {TOLERANCE} somewhere: {len(over)}, of which the gate admitted "
          f"{sum(r['agreement'].admitted for r in over)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
