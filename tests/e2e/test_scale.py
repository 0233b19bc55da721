"""rag-augment on a local Ray Serve cluster (2 CPUs, 2 replicas) on loopback: the same service as `python app.py`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import cohere
import httpx
import pytest

from evaluation import load, ramp

pytest.importorskip("ray.serve", reason="pip install -r requirements-scale.txt (make test does)")
from deploy import scale_out  # noqa: E402

KEY = "ray-key-7"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUERY = "What is the future of AI?"
DOCS = ["Knead the dough and let the bread rise.",
        "Artificial intelligence will transform medicine and science in the coming decade.",
        "The football match ended in a draw.",
        "Researchers expect future AI systems to reason and plan much better."]
ENV = {"RERANK_API_KEY": KEY, "RERANK_BACKEND": "torch", "HF_HUB_OFFLINE": "1", "RERANK_MAX_DOCUMENTS": "20",
       "RERANK_MAX_REQUEST_TOKENS": "100000", "RERANK_INSTRUCTION": "Find passages about what comes next in AI"}


def _raylets() -> int:
    return subprocess.run(["pgrep", "-c", "-f", "raylet"], capture_output=True, text=True).stdout.strip() or "0"


@pytest.fixture(scope="module")
def env(tiny_cross_encoder_dir) -> dict[str, str]:
    """The one environment both deployments read: an extra model, the key, limits, the default instruction."""
    return {**ENV, "RERANK_EXTRA_MODELS": str(tiny_cross_encoder_dir)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, env):
    """`make ray-up`'s code path: a head on 127.0.0.1 with 2 CPUs, serve_config.yaml with 2 replicas."""
    tmp = tmp_path_factory.mktemp("ray")
    saved = {k: os.environ.get(k) for k in [*env, "RAG_AUGMENT_CACHE"]}
    os.environ.update(env, RAG_AUGMENT_CACHE=str(tmp / "cache"))
    state_before = scale_out.STATE
    scale_out.STATE = tmp / "state.json"
    port = scale_out._free_port()
    try:
        state = scale_out.up(port, scale_out.CONFIG, cpus=2, replicas=2, timeout=240)
        yield f"http://127.0.0.1:{port}", state
    finally:
        scale_out.down()
        scale_out.STATE = state_before
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert _raylets() == "0"  # torn down: no Ray process is left


@pytest.fixture(scope="module")
def single(tmp_path_factory, env):
    """`python app.py` with the same environment, for comparison."""
    proc, url = load.start_app(tmp_path_factory.mktemp("single"), **env)
    yield url
    proc.terminate()
    proc.wait(30)


def test_app_and_replica_are_the_same_service(cluster, single, tiny_cross_encoder_dir):
    url, _ = cluster
    ray_info = httpx.get(f"{url}/info", headers=AUTH, timeout=60).json()
    app_info = httpx.get(f"{single}/info", headers=AUTH, timeout=60).json()
    for key in ("models", "limits", "scoring", "instruction", "model_id", "fusion", "auth", "max_input_length"):
        assert ray_info[key] == app_info[key], key
    assert ray_info["backend"]["backend"] == app_info["backend"]["backend"] == "torch"
    assert tiny_cross_encoder_dir.name in ray_info["models"] and ray_info["limits"]["max_request_tokens"] == 100_000
    for model in (None, tiny_cross_encoder_dir.name):  # the default model and the extra one, picked by name
        body = {"query": QUERY, "documents": DOCS, **({"model": model} if model else {})}
        got = httpx.post(f"{url}/v2/rerank", json=body, headers=AUTH, timeout=60).json()
        want = httpx.post(f"{single}/v2/rerank", json=body, headers=AUTH, timeout=60).json()
        assert got["model"] == want["model"] and got["meta"]["instruction"] == want["meta"]["instruction"]
        assert [r["index"] for r in got["results"]] == [r["index"] for r in want["results"]]
        assert [r["relevance_score"] for r in got["results"]] == pytest.approx(
            [r["relevance_score"] for r in want["results"]], abs=1e-5)


def test_both_replicas_answer_like_the_single_process(cluster, single):
    url, _ = cluster
    co = cohere.ClientV2(api_key=KEY, base_url=url)
    expected = cohere.ClientV2(api_key=KEY, base_url=single).rerank(model="m", query=QUERY, documents=DOCS)
    replicas = set()
    for _ in range(12):
        got = co.rerank(model="m", query=QUERY, documents=DOCS)
        assert [r.index for r in got.results] == [r.index for r in expected.results]
        assert [r.relevance_score for r in got.results] == pytest.approx([r.relevance_score for r in expected.results],
                                                                          abs=1e-5)
        replicas.add(httpx.get(f"{url}/health").headers["x-rerank-replica"])
        if len(replicas) == 2:
            break
    assert len(replicas) == 2  # Serve spread the requests over both replicas
    tei = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": DOCS}, headers=AUTH, timeout=60).json()
    local = httpx.post(f"{single}/rerank", json={"query": QUERY, "texts": DOCS}, headers=AUTH, timeout=60).json()
    assert [o["index"] for o in tei] == [o["index"] for o in local]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"query": " ", "documents": ["a"]}, 422, "query is empty"),
    ({"query": "q", "documents": ["x"] * 21}, 413, "limit is 20 (RERANK_MAX_DOCUMENTS)"),
    ({"documents": ["a"]}, 422, "query: Field required")])
def test_the_same_errors_as_the_single_process(cluster, single, body, status, message):
    url, _ = cluster
    for base in (url, single):
        response = httpx.post(f"{base}/v2/rerank", json=body, headers=AUTH, timeout=60)
        assert response.status_code == status and message in response.json()["message"]
    assert httpx.post(f"{url}/v2/rerank", json={"query": "q", "documents": ["a"]}).status_code == 401  # the same key
    assert httpx.get(f"{url}/info", headers=AUTH).json()["auth"] is True


def test_up_twice_or_with_the_port_taken_changes_nothing(cluster, tmp_path):
    url, state = cluster
    with pytest.raises(scale_out.ScaleError, match="already up"):
        scale_out.up(state["port"], scale_out.CONFIG)
    raylets = _raylets()
    saved = scale_out.STATE
    scale_out.STATE = tmp_path / "other.json"
    try:
        with pytest.raises(scale_out.ScaleError, match=f"port {state['port']} is taken"):
            scale_out.up(state["port"], scale_out.CONFIG)
        assert not scale_out.STATE.exists() and _raylets() == raylets  # nothing half-started
    finally:
        scale_out.STATE = saved
    assert httpx.get(f"{url}/health").status_code == 200


def _kill_one_replica(gcs: str) -> str:
    """Kill one replica actor the way a crash would, through Ray's own API; returns its name."""
    code = (f"import ray; from ray.util.state import list_actors; ray.init(address={gcs!r}, namespace='serve', "
            "log_to_driver=False); a = [x for x in list_actors(filters=[('state', '=', 'ALIVE')]) "
            "if 'Reranker' in x.class_name][0]; ray.kill(ray.get_actor(a.name, namespace='serve'), no_restart=True); "
            "print(a.name)")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(scale_out.ROOT)).stdout.strip().splitlines()[-1]


def test_a_replica_killed_under_load_is_replaced_and_clients_lose_nothing_after_one_retry(cluster):
    url, state = cluster
    stop, outcomes, lock = threading.Event(), {"ok": 0, "retried": 0, "failed": 0}, threading.Lock()

    def client() -> None:
        with httpx.Client(headers=AUTH, timeout=60) as http:
            while not stop.is_set():
                for attempt in range(2):
                    try:
                        response = http.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCS})
                        if response.status_code == 200:
                            with lock:
                                outcomes["ok" if attempt == 0 else "retried"] += 1
                            break
                    except httpx.HTTPError:
                        pass
                else:
                    with lock:
                        outcomes["failed"] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    killed = _kill_one_replica(state["gcs"])
    started = time.monotonic()
    seen = set()
    while time.monotonic() - started < 120 and len(seen) < 2:  # recovered: two replicas answer, one of them new
        try:
            seen.add(httpx.get(f"{url}/health", timeout=5).headers.get("x-rerank-replica"))
        except httpx.HTTPError:
            pass
        seen.discard(None)
        time.sleep(0.2)
    recovery = time.monotonic() - started
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(60)
    print(f"killed {killed}; recovered in {recovery:.1f} s; client outcomes {outcomes}")
    assert "Reranker" in killed and len(seen) == 2
    assert outcomes["failed"] == 0 and outcomes["ok"] > 0


def _settle(states, want: dict[str, int], timeout: float) -> dict[str, int]:
    deadline, now = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        now = states()
        if now == want:
            break
        time.sleep(0.5)
    return now


def test_autoscaling_adds_a_replica_under_load_and_drains_one_after_without_a_failed_request(cluster):
    """The shipped config's autoscaling (delays cut to seconds): one client, four, one again; no client retries."""
    url, state = cluster
    fast = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 1,
            "downscale_delay_s": 4, "look_back_period_s": 2}
    scale_out.redeploy(state, scale_out.CONFIG, autoscaling=fast)
    states = lambda: scale_out.replica_states(state)  # noqa: E731
    assert _settle(states, {"RUNNING": 1}, 90) == {"RUNNING": 1}  # idle: down to the minimum
    result = ramp.run_ramp(url, [1, 4, 1], phase_seconds=20, states=states, docs=10, headers=AUTH, settled=1,
                           settle_seconds=60, target=1)
    ramp.print_ramp(result, target=1)
    assert result["failures"] == 0, result["failure_examples"]
    assert result["max_running"] == 2 and result["replicas_seen"] >= 2 and result["first_new_replica_s"] is not None
    assert result["final"] == {"RUNNING": 1}  # drained back to one, every request answered
    health = httpx.get(f"{url}/health", timeout=10).json()
    assert health["ready"] is True and health["started_in_s"] > 0
