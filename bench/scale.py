"""rag-augment on Ray Serve on this machine: fixed replica counts, and the autoscaling config under a ramp of load.

``python bench/scale.py [--clients 8] [--seconds 30] [--docs 20]`` starts a local Ray head with
``scale_out.up`` for each configuration (a MiniLM-L6-shaped cross-encoder built from the packaged
weights, torch): 1 and 2 replicas, @serve.batch on and off; it sends fresh 20-document /v2/rerank
requests from ``--clients`` threads for ``--seconds``, prints pairs/s and p50/p95, then stops the cluster.

``python bench/scale.py --ramp [--phase-seconds 40] [--steps 1,2,4,8,4,2,1]`` deploys
``serve_config.yaml`` as shipped (its ``autoscaling_config``; max_replicas capped to this machine's CPUs) and
drives it through phases of that many concurrent clients, then waits with no load until the count has
come back down: per phase, the replicas Serve ran, p50/p95, requests and failures (no client retries); the
seconds from the first phase that overloaded one replica to a second replica's first answer; a trace of
the replica count. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import latency
import numpy as np
import yaml

from deploy import scale_out
from evaluation import ramp
from evaluation.load import make_documents
from scoring.synthetic import build_minilm_cross_encoder

ROOT = Path(__file__).resolve().parents[1]


def drive(url: str, clients: int, seconds: float, docs: int) -> dict:
    """``clients`` threads sending fresh requests for ``seconds``: pairs/s, p50, p95, errors."""
    lat: list[float] = []
    counts = {"errors": 0, "pairs": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        rng = random.Random(k)
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                batch = make_documents(rng, docs)
                started = time.perf_counter()
                response = http.post(f"{url}/v2/rerank", json={"query": latency.QUERY, "documents": batch})
                with lock:
                    if response.status_code == 200:
                        lat.append(time.perf_counter() - started)
                        counts["pairs"] += len(batch)
                    else:
                        counts["errors"] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"pairs_s": counts["pairs"] / wall, "p50": float(np.median(lat)), "p95": float(np.percentile(lat, 95)),
            "requests": len(lat), "errors": counts["errors"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--ramp", action="store_true", help="the shipped autoscaling config under a ramp of clients")
    parser.add_argument("--phase-seconds", type=float, default=40.0)
    parser.add_argument("--steps", default="1,2,4,8,4,2,1", help="ramp: concurrent clients in each phase")
    parser.add_argument("--backend", default="torch", help="RERANK_BACKEND of the replicas (auto: the first replica on "
                        "the node measures, later ones reuse its choice)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_minilm_cross_encoder(Path(tmp) / "ce")
        os.environ.update(RERANK_MODEL=str(model), RERANK_BACKEND=args.backend,
                          RAG_AUGMENT_CACHE=str(Path(tmp) / "cache"), HF_HUB_OFFLINE="1")
        scale_out.STATE = Path(tmp) / "state.json"
        if args.ramp:
            return ramp_main([int(n) for n in args.steps.split(",")], args.phase_seconds, args.docs, args.backend)
        return fixed_main(args)


def ramp_main(steps: list[int], phase_seconds: float, docs: int, backend: str) -> int:
    """The shipped autoscaling config through a ramp of clients (see the module docstring)."""
    port = scale_out._free_port()
    started = time.perf_counter()
    state = scale_out.up(port, scale_out.CONFIG, cpus=os.cpu_count())
    up_s = time.perf_counter() - started
    deployed = yaml.safe_load(scale_out.STATE.with_suffix(".serve.yaml").read_text())
    scaling = deployed["applications"][0]["deployments"][0]["autoscaling_config"]
    try:
        url = f"http://127.0.0.1:{port}"
        states = lambda: scale_out.replica_states(state)  # noqa: E731
        result = ramp.run_ramp(url, steps, phase_seconds=phase_seconds, states=states, docs=docs,
                               settled=scaling["min_replicas"], settle_seconds=scaling["downscale_delay_s"] + 120,
                               target=scaling["target_ongoing_requests"])
    finally:
        scale_out.down()
    print(f"Ray Serve autoscaling on {os.cpu_count()} cores (serve_config.yaml as shipped, max_replicas capped to "
          f"{scaling['max_replicas']}: {scaling}); MiniLM-L6-shaped cross-encoder, backend {backend}, {docs}-document requests, "
          f"{phase_seconds:.0f} s a phase; up in {up_s:.0f} s")
    ramp.print_ramp(result, target=scaling["target_ongoing_requests"])
    return 1 if result["failures"] else 0


def fixed_main(args) -> int:
    """Throughput and latency with 1 and 2 replicas, batching on and off."""
    rows = []
    for replicas, batch in ((1, 1), (1, 16), (2, 1), (2, 16)):
        port = scale_out._free_port()
        started = time.perf_counter()
        scale_out.up(port, scale_out.CONFIG, cpus=os.cpu_count(), replicas=replicas, max_batch_size=batch)
        up_s = time.perf_counter() - started
        try:
            url = f"http://127.0.0.1:{port}"
            drive(url, args.clients, 5, args.docs)  # warm-up
            rows.append((replicas, batch, up_s, drive(url, args.clients, args.seconds, args.docs)))
        finally:
            scale_out.down()
    print(f"Ray Serve on {os.cpu_count()} cores, {args.clients} clients, {args.docs}-document requests, "
          f"MiniLM-L6-shaped cross-encoder on torch, {args.seconds:.0f} s each")
    print(f"{'replicas':>8}{'@serve.batch':>14}{'up s':>7}{'pairs/s':>9}{'p50 s':>8}{'p95 s':>8}{'requests':>9}{'errors':>7}")
    for replicas, batch, up_s, r in rows:
        print(f"{replicas:>8}{('max ' + str(batch)) if batch > 1 else 'off':>14}{up_s:>7.1f}{r['pairs_s']:>9.1f}"
              f"{r['p50']:>8.2f}{r['p95']:>8.2f}{r['requests']:>9}{r['errors']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
