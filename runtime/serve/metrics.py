"""The service's counters in Prometheus' text format (version 0.0.4), kept per replica.

Requests by status, errors by kind, samples, the queue (requests waiting for a batch or in
one), batch sizes and request latency as histograms. Each replica counts what it served
and labels it; with one replica that is the whole service.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip(self.buckets, self.counts):
            cumulative += count
            out.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {cumulative}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out += [f"{name}_sum{{{labels}}} {self.total:.6f}", f"{name}_count{{{labels}}} {self.count}"]
        return out


class Metrics:
    def __init__(self, replica: str):
        self.replica = replica
        self.lock = threading.Lock()
        self.requests: Counter[int] = Counter()     # by HTTP status
        self.errors: Counter[str] = Counter()       # by kind
        self.samples = 0
        self.queue_depth = 0
        self.batches = Histogram(BATCH_BUCKETS)
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.busy_s = 0.0                           # wall time inside engine calls

    def finished(self, status: int, seconds: float, samples: int = 0, kind: str | None = None) -> None:
        with self.lock:
            self.requests[status] += 1
            self.latency.observe(seconds)
            self.samples += samples
            if kind:
                self.errors[kind] += 1

    def batch(self, requests: int, seconds: float) -> None:
        with self.lock:
            self.batches.observe(requests)
            self.busy_s += seconds

    def queue(self, change: int) -> None:
        with self.lock:
            self.queue_depth += change

    def text(self) -> str:
        r = f'replica="{self.replica}"'
        with self.lock:
            lines = ["# HELP cvdvae_requests_total Sample requests answered, by HTTP status.",
                     "# TYPE cvdvae_requests_total counter"]
            lines += [f'cvdvae_requests_total{{{r},status="{s}"}} {c}' for s, c in sorted(self.requests.items())]
            lines += ["# HELP cvdvae_errors_total Failed sample requests, by kind.",
                      "# TYPE cvdvae_errors_total counter"]
            lines += [f'cvdvae_errors_total{{{r},kind="{k}"}} {c}' for k, c in sorted(self.errors.items())]
            lines += ["# HELP cvdvae_samples_total Samples returned.", "# TYPE cvdvae_samples_total counter",
                      f"cvdvae_samples_total{{{r}}} {self.samples}",
                      "# HELP cvdvae_queue_depth Requests waiting for or inside a batch.",
                      "# TYPE cvdvae_queue_depth gauge", f"cvdvae_queue_depth{{{r}}} {self.queue_depth}",
                      "# HELP cvdvae_engine_busy_seconds_total Wall time spent in engine calls.",
                      "# TYPE cvdvae_engine_busy_seconds_total counter",
                      f"cvdvae_engine_busy_seconds_total{{{r}}} {self.busy_s:.6f}",
                      "# HELP cvdvae_samples_per_second Samples per second of engine time.",
                      "# TYPE cvdvae_samples_per_second gauge",
                      f"cvdvae_samples_per_second{{{r}}} {self.samples / self.busy_s if self.busy_s else 0:.4f}",
                      "# HELP cvdvae_batch_requests Requests per engine batch.",
                      "# TYPE cvdvae_batch_requests histogram"]
            lines += self.batches.lines("cvdvae_batch_requests", r)
            lines += ["# HELP cvdvae_request_seconds Sample request latency.",
                      "# TYPE cvdvae_request_seconds histogram"]
            lines += self.latency.lines("cvdvae_request_seconds", r)
        return "\n".join(lines) + "\n"
