"""``cvdvae serve`` (alias ``cvdvae-serve``): the runtime as an HTTP service on Ray Serve, on this machine
or a Ray cluster (``runtime.serve``)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from cvdvae.fileio import atomic_path

from ..backends import GRAPH_CHOICES
from ..model_files import locate
from ..serve.requests import Limits
from .common import EXIT_INTERRUPTED, EXIT_OK, Debug, check_choice, command_app, examples, run_app

TOKEN_ENV = "CVDVAE_SERVE_TOKEN"

app = command_app("Serve a model over HTTP on Ray Serve: a JSON/multipart API with dynamic batching, Prometheus "
                  "metrics and a web page at /.")


@app.command("serve", epilog=examples(
    "cvdvae serve engines/demo-x4-fp32                     # http://127.0.0.1:8000/",
    "cvdvae serve engines/x4-fp16 --replicas 2 --gpus-per-replica 1 --max-batch-size 16",
    "cvdvae serve engines/x4-fp32 --config-out serve.yaml && serve deploy serve.yaml   # on a Ray cluster"))
def serve_command(
    model: Annotated[Path, typer.Argument(exists=True, metavar="MODEL", show_default=False,
                                          help="an engine.plan, a model.onnx or an export folder")],
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="copies of the model, each with its own engine")] = 1,
    cpus_per_replica: Annotated[float, typer.Option(min=0.0, help="CPUs Ray reserves per replica")] = 1.0,
    gpus_per_replica: Annotated[float, typer.Option(min=0.0, help="GPUs Ray reserves per replica")] = 0.0,
    backend: Annotated[str, typer.Option(help=", ".join(GRAPH_CHOICES))] = "auto",
    max_batch_size: Annotated[int, typer.Option(min=1, help="requests gathered into one batch")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(min=0.0, help="how long a batch waits to fill")] = 10.0,
    max_batch: Annotated[Optional[int], typer.Option(min=1, help="images per engine call (default: the "
                                                                 "backend's own limit)")] = None,
    max_n: Annotated[int, typer.Option(min=1, help="samples a request may ask for")] = 16,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="largest request body")] = 8.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds a request may take")] = 120.0,
    threads: Annotated[int, typer.Option(min=0, help="engine threads per replica (0: the backend's default)")] = 0,
    token: Annotated[Optional[str], typer.Option(help=f"require 'Authorization: Bearer TOKEN' (or set ${TOKEN_ENV})",
                                                 show_default=False)] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="join this Ray cluster (default: start Ray here)")] = None,
    num_cpus: Annotated[Optional[int], typer.Option(min=1, help="CPUs of the local Ray (default: all)")] = None,
    config_out: Annotated[Optional[Path], typer.Option(help="write the Ray Serve config for `serve deploy` and "
                                                            "exit")] = None,
    debug: Debug = False,
) -> int:
    from ..serve.app import ServeOptions

    check_choice(backend, GRAPH_CHOICES, "--backend")
    locate(model)  # a bad folder is one line now, not a replica failing later
    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_n=max_n, timeout_s=timeout)
    options = ServeOptions(str(model.resolve()), backend, max_batch_size, batch_wait_ms / 1000, max_batch,
                           None, threads, token or os.environ.get(TOKEN_ENV) or None, limits)
    if config_out is not None:
        write_config(config_out, options, host, port, replicas, cpus_per_replica, gpus_per_replica)
        print(f"wrote {config_out}: `serve deploy {config_out}` on a Ray cluster")
        return EXIT_OK
    return run_locally(options, host, port, replicas, cpus_per_replica, gpus_per_replica, ray_address, num_cpus)


def run_locally(options, host: str, port: int, replicas: int, cpus: float, gpus: float, ray_address: str | None,
                num_cpus: int | None) -> int:
    """Start Ray (or join it), run the application, print the URL, and serve until SIGINT/SIGTERM."""
    import ray
    from ray import serve

    from ..serve.app import build_app

    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(number, _frame):
        stopped_by.append(number)
        stop.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)
    ray.init(address=ray_address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(options, replicas, cpus, gpus), name="cvdvae", route_prefix="/", blocking=False)
        print(f"serving {options.model} at http://{host}:{port}/ (API: POST /v1/samples, docs: /docs); "
              "Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return EXIT_INTERRUPTED if signal.SIGINT in stopped_by else EXIT_OK


def write_config(path: Path, options, host: str, port: int, replicas: int, cpus: float, gpus: float) -> None:
    """The Ray Serve config (``ServeDeploySchema``) that deploys the same application."""
    import yaml

    from ..serve.app import max_ongoing_requests

    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": "cvdvae", "route_prefix": "/", "import_path": "runtime.serve.app:app_builder",
            "args": options.to_args(),
            "deployments": [{"name": "Sampler", "num_replicas": replicas,
                             "max_ongoing_requests": max_ongoing_requests(options),
                             "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus}}],
        }],
    }
    if path.exists():
        raise typer.BadParameter(f"{path} exists", param_hint="'--config-out'")
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-serve")


if __name__ == "__main__":
    sys.exit(main())
