"""The Ray Serve application: one ``Ingress`` (the HTTP routes) in front of ``replicas`` copies
of ``Sampler`` (the model), and the deployment settings both ``build_app`` and the config for
``serve deploy`` use.

The ingress is a single replica with no CPU reserved: it only reads, checks, forwards and
streams, and being one it counts every request (``/metrics``). The model replicas each hold an
engine; ``max_queued_requests`` bounds the requests waiting for them (beyond it, 503 with
``Retry-After``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ray import serve
from ray.serve.schema import ProxyStatus

from .ingress import Ingress
from .options import ServeOptions
from .sampler import Sampler

log = logging.getLogger(__name__)
PROXY_START_S = 300.0  # how long Serve's HTTP proxies may take to start; Ray's own wait is 60 s


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


def start_serve(http_options: dict[str, Any], patience_s: float = PROXY_START_S, **settings: Any) -> None:
    """``serve.start``, patient with HTTP proxies slow to start (a machine busy with other work). Ray
    waits 60 s for them and then raises, while they go on starting; Serve is then started again,
    which connects to the controller left running, and its proxies are waited for here."""
    deadline = time.monotonic() + patience_s
    try:
        serve.start(http_options=http_options, **settings)
        return
    except TimeoutError as err:
        log.warning("%s Waiting for them up to %g s in all", err, patience_s)
    serve.start(http_options=http_options, **settings)
    while not all(status == ProxyStatus.HEALTHY for status in serve.status().proxies.values()):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Serve's HTTP proxies did not start within {patience_s:g} s")
        time.sleep(0.5)
