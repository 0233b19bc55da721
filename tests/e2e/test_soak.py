"""A short soak: `python app.py` under every face's mixed load, one request in ten hostile; memory must not climb.

The same scenario as ``bench/load.py --scenario soak`` (``evaluation/soak.py``), cut to a minute and a half with a
small cross-encoder, 1 MiB caches (full within the warm-up, so what is left to see is a leak, not a cache filling) and
freed heap returned every second (so RSS follows what is live, not when the last release happened). It fails on a clear
upward slope of RSS: the least-squares slope of two samples a second over the last 60 s, not one reading. RSS swings by
~10 MiB from one sample to the next with the requests in flight, and on an AMD EPYC the allocator's pools still grew
in steps of a few MiB: fitted over the last 45 s that read +15.9 MiB/min, over the last 60 s +10.2, so the window is
a minute (the slope's standard error there is ~2 MiB/min)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from evaluation import load, soak

SECONDS, WARM_UP = 90.0, 30.0  # the caches fill within seconds; the fit's minute sees past the pools' steps
MAX_SLOPE_MIB_PER_MIN = 15.0  # a leak of 6 KiB a request at this load (~44 requests/s) climbs ~15 MiB/min


def _stop_while_serving(proc, url: str) -> tuple[int, float]:
    """SIGTERM while a request is in flight (and the soak's Gradio clients are still connected): its status, and how
    long the process took to exit."""
    answer: dict = {}
    docs = [" ".join(f"word{i}" for i in range(150)) + f" {n}" for n in range(40)]

    def send() -> None:
        answer["status"] = httpx.post(f"{url}/v2/rerank", json={"query": "q", "documents": docs}, timeout=60).status_code

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    proc.terminate()
    proc.wait(60)
    thread.join(60)
    return answer.get("status", 0), time.monotonic() - started


def test_memory_threads_and_descriptors_stay_flat_under_a_short_soak(tmp_path, tiny_cross_encoder_dir):
    proc, url = load.start_app(tmp_path, RERANK_MODEL=str(tiny_cross_encoder_dir), RERANK_BACKEND="torch",
                               HF_HUB_OFFLINE="1", RERANK_CACHE_MB="1", RERANK_TOKEN_CACHE_MB="1",
                               RERANK_MEMORY_RELEASE_S="1")
    try:
        r = soak.soak_scenario(url, proc.pid, seconds=SECONDS, clients=4, warm_up=WARM_UP, sample_every=0.5)
        status, exit_s = _stop_while_serving(proc, url)
    finally:
        if proc.poll() is None:
            proc.kill()
    soak.print_soak(r, SECONDS)
    print(f"SIGTERM with a request in flight: answered {status}, exited after {exit_s:.1f} s")
    assert status == 200 and exit_s < 15  # graceful: the request finished, open streams did not hold the exit
    answered = sum(r["statuses"].values())
    assert not [s for s in r["statuses"] if s >= 500] and not r["errors"] and r["lost_rows"] == 0
    assert r["statuses"].get(200, 0) > 100 and answered > r["statuses"][200]  # hostile requests were refused
    print("RSS samples (s, MiB):", [(t, rss) for t, rss, _, _ in r["samples"]])
    assert r["slope"] < MAX_SLOPE_MIB_PER_MIN, f"RSS climbs {r['slope']:.2f} MiB/min after warm-up"
    assert r["threads"][1] <= r["threads"][0] + 2 and r["fds"][1] <= r["fds"][0] + 4


@pytest.mark.unit
def test_the_fitted_slope_sees_a_leak_through_the_swings_of_load_and_not_a_spike():
    import numpy as np

    rng = np.random.default_rng(0)
    t = np.arange(0.0, 45.0, 0.5)
    swings = lambda: rng.normal(0, 8)  # noqa: E731  requests in flight: ~8 MiB from one sample to the next
    flat = [(s, 940 + swings()) for s in t]
    spike = [(s, 940 + (60 if s >= 44 else 0)) for s in t]  # two high readings at the end
    leak = [(s, 940 + 0.5 * s + swings()) for s in t]  # 30 MiB a minute under the same swings
    assert abs(soak.fitted_slope(flat)) < MAX_SLOPE_MIB_PER_MIN and soak.fitted_slope(spike) < MAX_SLOPE_MIB_PER_MIN
    assert soak.fitted_slope(leak) > MAX_SLOPE_MIB_PER_MIN and soak.fitted_slope([(0, 1), (60, 2)]) == 0
