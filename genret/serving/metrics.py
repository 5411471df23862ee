"""The server's Prometheus metrics, on a registry of its own (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """Request count, errors and latency per endpoint; histories and requests per decoded batch; reloads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("genret_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=self.registry)
        self.errors = Counter("genret_request_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("genret_request_latency_seconds", "Time from request to answer, by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_histories = Histogram("genret_batch_histories", "Histories decoded together in one batch",
                                         buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("genret_batch_requests", "HTTP requests merged into one batch",
                                        buckets=BATCH_BUCKETS, registry=self.registry)
        self.reloads = Counter("genret_reloads", "Checkpoint reloads, by outcome", ["outcome"], registry=self.registry)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(self, n_requests: int, n_histories: int) -> None:
        self.batch_requests.observe(n_requests)
        self.batch_histories.observe(n_histories)

    def render(self) -> tuple[bytes, str]:
        """(Prometheus text exposition, its content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
