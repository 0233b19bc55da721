"""Start and stop rag-augment on a local Ray Serve cluster: ``python scale_out.py up|down|status``.

``up`` starts a Ray head on 127.0.0.1 (its processes inherit this environment, so the replicas read
the same variables as ``python app.py``), deploys ``serve_config.yaml`` with its HTTP port set to
``--port`` (``RAY_SERVE_PORT`` in the Makefile) and waits until every replica answers. It refuses,
changing nothing, when a cluster it started is still up or the port is taken; if anything fails
half-way it stops what it started. ``down`` stops exactly what ``up`` started. ``make ray-up`` and
``make ray-down`` call these.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]  # the checkout the local workers import from
CONFIG = Path(__file__).resolve().parent / "serve_config.yaml"
STATE = Path(os.environ.get("RAG_AUGMENT_RAY_STATE") or Path(tempfile.gettempdir()) / "rag-augment-ray.json")


class ScaleError(RuntimeError):
    """Why the cluster cannot be brought up or down (the message says what to do)."""


def _port_taken(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tool(name: str) -> str:
    """A Ray CLI next to this Python (the project's venv), else on PATH."""
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise ScaleError(f"`{name}` is not installed: pip install -r requirements-scale.txt")
    return found


def _run(*command: str, timeout: float = 300) -> str:
    # Ray's token authentication stays on; the CLI tools are told so, and read the token Ray keeps in ~/.ray
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ScaleError(f"`{' '.join(command[:3])} …` failed: " + " | ".join(tail))
    return done.stdout


def config_for(port: int, config: Path, replicas: int | None = None, max_batch_size: int | None = None, *,
               cpus: int | None = None, autoscaling: dict | None = None) -> Path:
    """The config with its HTTP port set, written beside the state file; optionally a fixed replica count, batching,
    autoscaling settings (merged over the config's), and ``cpus`` (the local head's): ``max_replicas`` is capped to the
    replicas those CPUs can hold, so a replica that could never be placed is not asked for."""
    data = yaml.safe_load(config.read_text())
    data.setdefault("http_options", {})["port"] = port
    for app in data.get("applications", []):
        app.setdefault("runtime_env", {}).setdefault("env_vars", {})["PYTHONPATH"] = str(ROOT)  # this checkout
        if max_batch_size is not None:
            app.setdefault("args", {})["max_batch_size"] = max_batch_size
        for deployment in app.get("deployments", []):
            if replicas is not None:
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = replicas
            elif autoscaling:
                deployment.pop("num_replicas", None)
                deployment["autoscaling_config"] = {**deployment.get("autoscaling_config", {}), **autoscaling}
            scaling = deployment.get("autoscaling_config")
            if scaling and cpus:
                per_replica = deployment.get("ray_actor_options", {}).get("num_cpus", 1) or 1
                fits = max(1, int(cpus // per_replica))
                scaling["max_replicas"] = min(scaling.get("max_replicas", 1), fits)
                scaling["min_replicas"] = min(scaling.get("min_replicas", 1), scaling["max_replicas"])
    target = STATE.with_suffix(".serve.yaml")
    target.write_text(yaml.safe_dump(data))
    return target


def _initial_replicas(config: Path) -> int:
    """Replicas a deployed config starts with (``num_replicas``, else autoscaling's initial or minimum count)."""
    total = 0
    for app in yaml.safe_load(config.read_text())["applications"]:
        for deployment in app.get("deployments", []):
            scaling = deployment.get("autoscaling_config")
            total += (scaling.get("initial_replicas") or scaling.get("min_replicas", 1)) if scaling \
                else deployment.get("num_replicas", 1)
    return max(1, total)


def _wait_ready(port: int, replicas: int, timeout: float) -> None:
    """Until /health answers and every replica has answered at least once (each names itself in a header)."""
    import httpx  # lazy: httpx loads only on this path

    deadline, seen = time.monotonic() + timeout, set()
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            if response.status_code == 200:
                seen.add(response.headers.get("x-rerank-replica"))
                if len(seen) >= replicas:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise ScaleError(f"the application did not answer on port {port} within {timeout:.0f} s ({len(seen)} replica(s) seen)")


def up(port: int, config: Path, *, cpus: int | None = None, replicas: int | None = None,
       max_batch_size: int | None = None, autoscaling: dict | None = None, timeout: float = 900) -> dict:
    """Start a local head and deploy; on any failure stop what was started. Returns the state written. ``timeout``:
    the first replica on a fresh node exports and measures the backends before it answers (276 s on one AVX2 core)."""
    if STATE.exists():
        state = json.loads(STATE.read_text())
        raise ScaleError(f"a rag-augment Ray cluster is already up (HTTP port {state.get('port')}, started by "
                         f"this machine at {state.get('started')}): run `make ray-down` first")
    if _port_taken(port):
        raise ScaleError(f"port {port} is taken by another program: choose another with RAY_SERVE_PORT=...")
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").exists()):
        _run(_tool("ray"), "get-auth-token", "--generate", timeout=60)  # Ray's token auth needs one for the CLI too
    gcs, dashboard = _free_port(), _free_port()
    state = {"port": port, "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}",
             "cpus": cpus or os.cpu_count() or 1, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    _run(_tool("ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--num-cpus={state['cpus']}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--disable-usage-stats", timeout=180)
    STATE.write_text(json.dumps(state))
    try:
        deployed = config_for(port, config, replicas, max_batch_size, cpus=cpus or os.cpu_count(),
                              autoscaling=autoscaling)
        _deploy_when_dashboard_answers(deployed, state["dashboard"])
        _wait_ready(port, _initial_replicas(deployed), timeout)
    except BaseException:
        down()
        raise
    return state


def _deploy_when_dashboard_answers(config: Path, dashboard: str, timeout: float = 120) -> None:
    """``serve deploy`` once the head's dashboard (which takes the config) answers."""
    import httpx  # lazy: httpx loads only on this path

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{dashboard}/api/version", timeout=5).status_code < 500:  # 401: up, token auth on
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ScaleError(f"the Ray dashboard at {dashboard} did not answer within {timeout:.0f} s")
        time.sleep(0.5)
    _run(_tool("serve"), "deploy", str(config), "--address", dashboard, timeout=120)


def redeploy(state: dict, config: Path, *, replicas: int | None = None, autoscaling: dict | None = None) -> None:
    """Update the running application in place (Serve keeps the replicas it can and scales to the new setting)."""
    cpus = state.get("cpus")
    deployed = config_for(state["port"], config, replicas, cpus=cpus, autoscaling=autoscaling)
    _deploy_when_dashboard_answers(deployed, state["dashboard"])


def _auth_headers() -> dict[str, str]:
    """Ray's token for its dashboard's REST API (from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        token = path.read_text().strip() if path.exists() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def replica_states(state: dict, deployment: str = "Reranker") -> dict[str, int]:
    """How many of the deployment's replicas are in each state now (RUNNING, STARTING, STOPPING, ...), as Serve's
    controller reports them through the dashboard."""
    import httpx  # lazy: httpx loads only on this path

    response = httpx.get(f"{state['dashboard']}/api/serve/applications/", headers=_auth_headers(), timeout=10)
    response.raise_for_status()
    counts: dict[str, int] = {}
    for app in response.json().get("applications", {}).values():
        for replica in app.get("deployments", {}).get(deployment, {}).get("replicas", []):
            counts[replica["state"]] = counts.get(replica["state"], 0) + 1
    return counts


def down() -> bool:
    """Stop the cluster ``up`` started (its Ray processes on this machine). False when none was up."""
    if not STATE.exists():
        return False
    try:
        _run(_tool("ray"), "stop", "--force", timeout=120)
    finally:
        STATE.unlink(missing_ok=True)
        STATE.with_suffix(".serve.yaml").unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scale_out.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("RAY_SERVE_PORT") or 8000))
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--replicas", type=int, help="override num_replicas of the config")
    parser.add_argument("--cpus", type=int, help="CPUs the local head offers (default: every core)")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            state = up(args.port, Path(args.config), cpus=args.cpus, replicas=args.replicas)
            print(f"rag-augment on Ray Serve: http://127.0.0.1:{state['port']}/ (Ray dashboard {state['dashboard']}); "
                  "`make ray-down` stops it")
        elif args.command == "down":
            print("stopped the local Ray cluster" if down() else "no rag-augment Ray cluster was up")
        else:
            print(STATE.read_text() if STATE.exists() else "no rag-augment Ray cluster is up")
    except ScaleError as exc:
        print(f"scale_out.py {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
