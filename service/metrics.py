"""Prometheus metrics for every face (HTTP, Gradio, MCP, evaluation), in a registry of the service's own."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.loop_lag import LoopLagMonitor


class ScorerCollector(Collector):
    """The scorers' caches and worker pools, read at scrape time, by model."""

    def __init__(self, scorers: Callable[[], Iterable]) -> None:
        self.scorers = scorers

    def collect(self):
        hits = CounterMetricFamily("rerank_cache_hits", "scores or embeddings served from cache", labels=["model"])
        misses = CounterMetricFamily("rerank_cache_misses", "scores or embeddings computed", labels=["model"])
        entries = GaugeMetricFamily("rerank_cache_entries", "items held in the cache", labels=["model"])
        held = GaugeMetricFamily("rerank_cache_bytes", "bytes held in the cache (RERANK_CACHE_MB bounds it)",
                                 labels=["model"])
        batches = CounterMetricFamily("rerank_batches", "forward-pass batches run by the worker pool", labels=["model"])
        dropped = CounterMetricFamily("rerank_batches_dropped", "batches dropped because their request was cancelled",
                                      labels=["model"])
        tokens = CounterMetricFamily("rerank_tokens", "padded token positions computed", labels=["model"])
        token_hits = CounterMetricFamily("rerank_token_cache_hits", "documents whose token ids came from the token cache",
                                         labels=["model"])
        token_held = GaugeMetricFamily("rerank_token_cache_bytes", "bytes held in the token cache "
                                       "(RERANK_TOKEN_CACHE_MB bounds it)", labels=["model"])
        seen_caches, seen_pools = set(), set()
        for scorer in self.scorers():
            name = [scorer.info.name]
            if id(scorer.cache) not in seen_caches:
                seen_caches.add(id(scorer.cache))
                hits.add_metric(name, scorer.cache.hits)
                misses.add_metric(name, scorer.cache.misses)
                entries.add_metric(name, len(scorer.cache))
                held.add_metric(name, scorer.cache.held())
            if id(scorer.pool) not in seen_pools:
                seen_pools.add(id(scorer.pool))
                batches.add_metric(name, scorer.pool.batches_run)
                dropped.add_metric(name, scorer.pool.batches_dropped)
                tokens.add_metric(name, scorer.pool.tokens_run)
                token_hits.add_metric(name, scorer.pool.tokens.hits)
                token_held.add_metric(name, scorer.pool.tokens.held())
        yield from (hits, misses, entries, held, batches, dropped, tokens, token_hits, token_held)


class ServiceMetrics:
    """Requests, documents, latency, errors, cost and work in flight, labelled by face and route."""

    def __init__(self, scorers: Callable[[], Iterable]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ScorerCollector(scorers))
        labels = ["face", "route"]
        self.requests = Counter("rerank_requests", "requests answered", [*labels, "status"], registry=self.registry)
        self.errors = Counter("rerank_errors", "requests answered with an error", [*labels, "status"],
                              registry=self.registry)
        self.documents = Counter("rerank_documents_scored", "documents scored", labels, registry=self.registry)
        self.latency = Histogram("rerank_request_duration_seconds", "request latency", labels, registry=self.registry,
                                 buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.cost = Histogram("rerank_request_tokens", "tokens the model read for a request", ["face"],
                              registry=self.registry, buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576))
        self.in_flight = Gauge("rerank_in_flight", "requests being served now (all faces)", registry=self.registry)
        self.loop_lag = LoopLagMonitor(self.registry)  # started by the web face, on its event loop

    def observe(self, face: str, route: str, status: int, seconds: float, documents: int = 0) -> None:
        """Count one answered request."""
        self.requests.labels(face, route, str(status)).inc()
        self.latency.labels(face, route).observe(seconds)
        if status >= 400:
            self.errors.labels(face, route, str(status)).inc()
        elif documents:
            self.documents.labels(face, route).inc(documents)

    def text(self) -> str:
        """The Prometheus exposition."""
        return generate_latest(self.registry).decode()
