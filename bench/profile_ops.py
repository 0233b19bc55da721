"""Where a 50-document request's time goes: torch profiler over the fp32 torch backend, grouped by operator.

``python bench/profile_ops.py`` scores one fresh 50-document request (the workload of
``bench/latency.py``) on one worker thread under ``torch.profiler`` and prints the operators' share of
the CPU time, the matmul share against the measured matmul throughput, and what the rest is.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import latency

import rerank
from scoring.batching import plan_batches
from scoring.synthetic import build_minilm_cross_encoder

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        ce_dir = build_minilm_cross_encoder(Path(tmp) / "ce")
        scorer = rerank.load_scorer(str(ce_dir), allow_fallback=False, backend="torch", workers=1)
        engine = scorer.pool.replicas[0]
        torch.set_num_threads(1)
        from transformers import AutoTokenizer

        docs = latency.make_requests(2, 50, AutoTokenizer.from_pretrained(str(ce_dir)))
        scorer.score(latency.QUERY, docs[0])
        groups = plan_batches(scorer.plan(latency.QUERY, docs[1]).lengths, 1024, 32)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for group in groups:
                engine.score_pairs(latency.QUERY, [docs[1][j] for j in group])
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"{'operator':<40}{'self CPU ms':>12}{'share':>8}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
        print(f"{e.key:<40}{e.self_cpu_time_total / 1000:>12.1f}{e.self_cpu_time_total / total:>8.1%}")
    linear = sum(e.self_cpu_time_total for e in events if e.key in ("aten::addmm", "aten::mm", "aten::linear"))
    attention = sum(e.self_cpu_time_total for e in events if "attention" in e.key or e.key in ("aten::bmm", "aten::baddbmm"))
    print(f"total {total / 1e6:.2f} s on one thread: linear layers (dense fp32 matmul) {linear / total:.0%}, attention "
          f"{attention / total:.0%}, everything else {1 - (linear + attention) / total:.0%} (GELU, layer norm, copies)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
