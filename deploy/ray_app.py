"""The Ray Serve face: the same service as ``python app.py``, as replicas behind one address.

Each replica builds the one service (``service.assembly.build``: the same configuration variables, models, key,
limits and ranking) and serves the same HTTP routes (Cohere v1/v2, Jina, TEI, /health, /info,
/metrics; the Gradio app and its MCP tools with ``gradio: true``). Ray Serve routes requests to the
replicas; inside a replica, ``@serve.batch`` hands concurrent requests to the scoring core together,
so their pairs share forward passes. ``serve_config.yaml`` deploys it (``make ray-up`` locally, or
``serve deploy serve_config.yaml`` on any Ray cluster); the README's "Scale out" section says how.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os

from ray import serve

log = logging.getLogger("rag_augment.serve")


def assigned_cpus() -> int:
    """The CPUs Ray gave this replica (``ray_actor_options.num_cpus``): one scoring worker each."""
    import ray  # lazy: ray loads only on this path

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") or 1
    return max(1, int(cpus))


@serve.deployment(name="Reranker", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=8,
                  graceful_shutdown_wait_loop_s=1, graceful_shutdown_timeout_s=120)  # replicas: serve_config.yaml
@serve.ingress()
class Reranker:
    """One replica: the configured model on this replica's CPUs (or GPU share), the service, the HTTP app."""

    def __init__(self, gradio: bool = False, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005) -> None:
        from service import assembly, memory
        from service.settings import Settings

        self.settings = Settings.from_env()
        memory.keep_flat(memory.AllocatorPolicy(interval=self.settings.memory_release_s))  # before the models load
        self.gradio = gradio
        self.batching = max_batch_size > 1
        # the one assembly, as `python app.py` builds it: every configured model, the embedder, the limits and key;
        # the retriever where the Gradio app (which searches) is served
        self.service = assembly.build(self.settings, workers=assigned_cpus(), index=gradio)
        self.scorer = self.service.models.default
        self.score_batch.set_max_batch_size(max(1, max_batch_size))
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id if context else str(os.getpid())
        gc.freeze()  # what loading built stays out of the collector's scans: the releasing thread's passes stay short
        log.info("replica %s ready in %.1f s, serving %s (backend %s)", self.replica, self.service.started_in_s,
                 self.scorer.describe(), self.scorer.backend.how)

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose scoring workers have all stopped is replaced."""
        if not self.scorer.pool.alive():
            raise RuntimeError(f"replica {self.replica}: no scoring worker is running")

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score_batch(self, prepared: list) -> list:
        """Concurrent requests of this replica scored together (their pairs share forward passes)."""
        from scoring.ranking import complete_many

        return await asyncio.get_running_loop().run_in_executor(None, complete_many, prepared)

    def __serve_build_asgi_app__(self):
        """The app ``python app.py`` serves, on this replica's service; each answer names the replica."""
        from web.http import create_api

        service = self.service
        if self.batching:
            service.batcher = self.score_batch
        if self.gradio:
            import app

            server = app.build_server(self.settings, self.scorer, service=service)
        else:
            server = create_api(service)
        replica = self.replica

        @server.middleware("http")
        async def name_the_replica(request, call_next):
            response = await call_next(request)
            response.headers["X-Rerank-Replica"] = replica
            return response

        return server


def app_builder(args: dict):
    """The application a Serve config names (``import_path: deploy.ray_app:app_builder``); ``args`` as in
    ``serve_config.yaml``: ``gradio`` (bool), ``max_batch_size`` (1 turns batching off), ``batch_wait_timeout_s``."""
    return Reranker.bind(gradio=bool(args.get("gradio", False)), max_batch_size=int(args.get("max_batch_size", 16)),
                         batch_wait_timeout_s=float(args.get("batch_wait_timeout_s", 0.005)))
