"""A ramp of load on a deployment that scales: phases of N concurrent clients, and the replica count all along.

Each phase runs ``steps[i]`` clients for ``phase_seconds``; every client sends fresh /v2/rerank requests one after
another and never retries, so a request that a replica being added or removed dropped shows up as a failure. A
sampler asks ``states()`` (replicas by state, as the platform's controller reports them) twice a second. After the
last phase the load stops and the ramp waits, up to ``settle_seconds``, for the count to come back to ``settled``.
``bench/scale.py --ramp`` prints it; the e2e tier runs a short one.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from evaluation.load import make_documents

QUERY = "which passage says how the service scales?"


@dataclass
class Phase:
    """One phase's clients and what they saw."""

    clients: int
    started: float = 0.0
    ended: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self, trace: list[tuple[float, dict[str, int]]]) -> dict:
        running = [s.get("RUNNING", 0) for t, s in trace if self.started <= t <= self.ended] or [0]
        lat = self.latencies or [float("nan")]
        return {"clients": self.clients, "seconds": round(self.ended - self.started, 1), "requests": len(self.latencies),
                "failures": len(self.failures), "p50": float(np.median(lat)), "p95": float(np.percentile(lat, 95)),
                "replicas": (min(running), max(running))}


def run_ramp(url: str, steps: list[int], *, phase_seconds: float, states: Callable[[], dict[str, int]],
             docs: int = 20, settled: int = 1, settle_seconds: float = 180.0, headers: dict | None = None,
             target: float = 1.0) -> dict:
    """Drive ``url`` through ``steps`` (clients per phase); the phases, the replica trace, and when a new replica first
    answered after the first phase with more clients than one replica's ``target`` began (``first_new_replica_s``)."""
    phases = [Phase(n) for n in steps]
    trace: list[tuple[float, dict[str, int]]] = []
    origin = time.monotonic()
    seen: dict[str, float] = {}  # replica id -> when it first answered
    lock = threading.Lock()
    current = [0]
    done = threading.Event()

    health: dict[str, dict] = {}  # replica id -> its /health (how long it took to start, how its backend was chosen)

    def sample() -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not done.is_set():
                try:
                    trace.append((time.monotonic() - origin, states()))
                    answer = http.get("/health")
                    health.setdefault(answer.headers.get("x-rerank-replica", "?"), answer.json())
                except Exception:  # the controller or a replica is busy for a moment: the trace has a gap
                    pass
                done.wait(0.5)

    def client(k: int) -> None:
        rng = random.Random(k)
        with httpx.Client(base_url=url, timeout=300, headers=headers or {}) as http:
            while not done.is_set():
                phase = current[0]
                if phase >= len(phases) or k >= phases[phase].clients:
                    time.sleep(0.05)
                    continue
                started = time.monotonic()
                try:
                    response = http.post("/v2/rerank", json={"query": QUERY, "documents": make_documents(rng, docs)})
                    ok = response.status_code == 200
                    why = f"{response.status_code}: {response.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, why, response = False, f"{type(exc).__name__}: {exc}", None
                with lock:
                    if ok:
                        phases[phase].latencies.append(time.monotonic() - started)
                        seen.setdefault(response.headers.get("x-rerank-replica", "?"), time.monotonic() - origin)
                    else:
                        phases[phase].failures.append(why)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    workers = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(max(steps))]
    for w in workers:
        w.start()
    for i, phase in enumerate(phases):
        phase.started = time.monotonic() - origin
        current[0] = i
        time.sleep(phase_seconds)
        phase.ended = time.monotonic() - origin
    current[0] = len(phases)  # load stops; requests in flight finish
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline and not (trace and trace[-1][1].get("RUNNING", 0) == settled
                                               and len(trace[-1][1]) == 1):
        time.sleep(0.5)
    done.set()
    for w in workers:
        w.join(300)
    sampler.join(10)
    return _report(phases, trace, seen, health, time.monotonic() - origin, target)


def _report(phases: list[Phase], trace: list, seen: dict[str, float], health: dict[str, dict], total: float,
            target: float) -> dict:
    first = min(seen.values(), default=0.0)
    rise = next((p for p in phases if p.clients > target), None)  # the first phase that overloads one replica
    new = sorted(t for t in seen.values() if t > first + 1e-9 and rise is not None and t >= rise.started)
    return {"phases": [p.summary(trace) for p in phases], "trace": [(round(t, 1), s) for t, s in trace],
            "replicas_seen": len(seen), "failures": sum(len(p.failures) for p in phases),
            "failure_examples": [f for p in phases for f in p.failures][:5],
            "first_new_replica_s": (new[0] - rise.started) if new else None,
            "max_running": max((s.get("RUNNING", 0) for _, s in trace), default=0),
            "final": trace[-1][1] if trace else {}, "seconds": round(total, 1),
            "started": {replica: (h.get("started_in_s"), (h.get("backend") or {}).get("how")) for replica, h in health.items()}}


def print_ramp(r: dict, *, target: float | None = None) -> None:
    """The ramp's table and the replica trace, condensed to its changes."""
    print(f"{'phase':>5}{'clients':>8}{'replicas':>10}{'requests':>9}{'failed':>7}{'p50 s':>8}{'p95 s':>8}")
    for i, p in enumerate(r["phases"], 1):
        lo, hi = p["replicas"]
        print(f"{i:>5}{p['clients']:>8}{(f'{lo}' if lo == hi else f'{lo}-{hi}'):>10}{p['requests']:>9}"
              f"{p['failures']:>7}{p['p50']:>8.2f}{p['p95']:>8.2f}")
    changes, last = [], None
    for t, s in r["trace"]:
        key = tuple(sorted(s.items()))
        if key != last:
            changes.append(f"{t:.0f}s " + ",".join(f"{k.lower()} {v}" for k, v in sorted(s.items())))
            last = key
    print("replicas over time: " + "; ".join(changes))
    new = r["first_new_replica_s"]
    print(f"failed requests (no client retry): {r['failures']}; replicas that answered: {r['replicas_seen']}; a new "
          f"replica first answered {'-' if new is None else f'{new:.1f} s'} after the load first overloaded one"
          + (f" (target {target:g} ongoing requests a replica)" if target else "") + f"; after the ramp: {r['final']}")
    for replica, (seconds, how) in r["started"].items():
        print(f"replica {replica}: built its service in {seconds} s; backend {how}")
    for f in r["failure_examples"]:
        print("failure:", f)
