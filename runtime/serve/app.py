"""The Ray Serve application: one ``Ingress`` (the HTTP routes) in front of ``replicas`` copies
of ``Sampler`` (the model), and the deployment settings both ``build_app`` and the config for
``serve deploy`` use.

The ingress is a single replica with no CPU reserved: it only reads, checks, forwards and
streams, and being one it counts every request (``/metrics``). The model replicas each hold an
engine; ``max_queued_requests`` bounds the requests waiting for them (beyond it, 503 with
``Retry-After``).
"""

from __future__ import annotations

from typing import Any

from .ingress import Ingress
from .options import ServeOptions
from .sampler import Sampler


def deployment_settings(options: ServeOptions, replicas: int = 1, cpus_per_replica: float = 1.0,
                        gpus_per_replica: float = 0.0) -> dict[str, dict[str, Any]]:
    """Per deployment, its Ray Serve settings."""
    limits = options.limits
    return {
        "Ingress": {"num_replicas": 1, "max_ongoing_requests": limits.max_requests,
                    "max_queued_requests": limits.max_queued, "ray_actor_options": {"num_cpus": 0}},
        "Sampler": {"num_replicas": replicas, "max_ongoing_requests": max(16, 4 * options.max_batch_size),
                    "max_queued_requests": limits.max_queued,
                    "ray_actor_options": {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}},
    }


def build_app(options: ServeOptions, replicas: int = 1, cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0,
              sampler: Any = None):
    """The application; ``sampler`` replaces the model replicas' deployment (tests drive the ingress
    with a recording fake)."""
    settings = deployment_settings(options, replicas, cpus_per_replica, gpus_per_replica)
    model = sampler if sampler is not None else Sampler.options(**settings["Sampler"]).bind(options)
    return Ingress.options(**settings["Ingress"]).bind(model, options)


def app_builder(args: dict[str, Any]):
    """``serve deploy`` entry point (``import_path: runtime.serve.app:app_builder``): ``args`` are
    ``ServeOptions``; the config's ``deployments`` set the replicas and their resources."""
    return build_app(ServeOptions.from_args(args))
