"""The service's metrics, kept by ``prometheus_client`` in the ingress that every request passes.

One ingress fronts every model replica, so what it counts is the whole service's: requests by
status, errors by kind, samples (a photo's are its faces x n), requests in flight, the size
of the engine batches and the engine time (the replicas report, with each job's samples, its
batch's size and its share of the engine time), request latency and retries. ``text()`` is
Prometheus' exposition format (``CONTENT_TYPE_LATEST``), written by the library.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("cvdvae_requests", "Sample requests answered, by HTTP status.", ["status"],
                                registry=registry)
        self.errors = Counter("cvdvae_errors", "Failed sample requests, by kind.", ["kind"], registry=registry)
        self.samples = Counter("cvdvae_samples", "Samples returned (a photo's: its faces x n).", registry=registry)
        self.in_flight = Gauge("cvdvae_queue_depth", "Requests being read, waiting for a model replica or in one.",
                               registry=registry)
        self.body_bytes = Gauge("cvdvae_body_bytes_in_flight", "Bytes of request bodies held (reserved when "
                                "their reading starts, given back when their answers end).", registry=registry)
        self.engine = Counter("cvdvae_engine_busy_seconds", "Wall time spent in engine calls.", registry=registry)
        self.batches = Histogram("cvdvae_batch_size", "Jobs (one image's samples) in the engine batch each job "
                                 "ran in, observed per job.", buckets=BATCH_BUCKETS, registry=registry)
        self.latency = Histogram("cvdvae_request_seconds", "Sample request latency.", buckets=LATENCY_BUCKETS_S,
                                 registry=registry)
        self.retries = Counter("cvdvae_retries", "Requests run again after their model replica died.",
                               registry=registry)

    def finished(self, status: int, seconds: float, samples: int = 0, kind: str | None = None) -> None:
        self.requests.labels(status=str(status)).inc()
        self.latency.observe(seconds)
        self.samples.inc(samples)
        if kind:
            self.errors.labels(kind=kind).inc()

    def batch(self, size: int, seconds: float) -> None:
        self.batches.observe(size)
        self.engine.inc(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
