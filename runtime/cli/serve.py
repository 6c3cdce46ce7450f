"""``cvdvae serve`` (alias ``cvdvae-serve``): the runtime as an HTTP service on Ray Serve, on this machine
or a Ray cluster (``runtime.serve``)."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, List, Optional, Sequence

import typer

from cvdvae.fileio import atomic_path

from ..backends import GRAPH_CHOICES, PRECISION_CHOICES
from ..model_files import locate
from .command import EXIT_INTERRUPTED, EXIT_OK, command_app, examples, run_app
from .common import Precision, check_choice

TOKEN_ENV = "CVDVAE_SERVE_TOKEN"
PROXY_GRACE_S = 10.0

app = command_app("Serve a model over HTTP on Ray Serve: a JSON/multipart API with dynamic batching, Prometheus "
                  "metrics and a web page at /.")


@app.command("serve", epilog=examples(
    "cvdvae serve engines/demo-x4-fp32                     # http://127.0.0.1:8000/",
    "CVDVAE_SERVE_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \\",
    "    cvdvae serve engines/x4-fp16 --host 0.0.0.0 --replicas 2 --gpus-per-replica 1 --max-batch-size 16",
    "cvdvae serve engines/x4-fp32 --config-out serve.yaml && serve deploy serve.yaml   # on a Ray cluster"))
def serve_command(
    model: Annotated[Path, typer.Argument(exists=True, metavar="MODEL", show_default=False,
                                          help="an engine.plan, a model.onnx or an export folder")],
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface; needs a token)")] =
        "127.0.0.1",
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
    max_response_mp: Annotated[float, typer.Option(min=0.001, help="megapixels one answer may hold (n x (photo + "
                                                                   "faces))")] = 256.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds a request may take, first byte to last")] = 120.0,
    body_timeout: Annotated[float, typer.Option(min=0.1, help="seconds a client may take to send its body "
                                                              "(then 408)")] = 30.0,
    max_queued: Annotated[int, typer.Option(min=1, help="requests waiting for a model replica (beyond: 503 "
                                                        "with Retry-After)")] = 64,
    threads: Annotated[int, typer.Option(min=0, help="engine threads per replica (0: the backend's default)")] = 0,
    precision: Precision = "auto",
    token: Annotated[Optional[str], typer.Option(help=f"require 'Authorization: Bearer TOKEN' (better: set "
                                                      f"${TOKEN_ENV}; a flag shows in `ps`)",
                                                 show_default=False)] = None,
    insecure_no_token: Annotated[bool, typer.Option("--insecure-no-token", help="listen beyond this machine "
                                                                                 "without a token")] = False,
    cors_origin: Annotated[Optional[List[str]], typer.Option(help="a web origin (https://host:port) whose pages may "
                                                                  "call the API; repeat for more, '*' for any "
                                                                  "(default: the service's own only)",
                                                             show_default=False)] = None,
    allowed_host: Annotated[Optional[List[str]], typer.Option(help="a host name clients may reach the service by, "
                                                                   "besides its address and this machine's names "
                                                                   "(repeat for more; '*' for any: no DNS-rebinding "
                                                                   "guard)", show_default=False)] = None,
    ray_address: Annotated[Optional[str], typer.Option(help="join this Ray cluster (default: $RAY_ADDRESS, else "
                                                                 "start Ray here)")] = None,
    num_cpus: Annotated[Optional[int], typer.Option(min=1, help="CPUs of the local Ray (default: all)")] = None,
    config_out: Annotated[Optional[Path], typer.Option(help="write the Ray Serve config for `serve deploy` and "
                                                            "exit")] = None,
) -> int:
    from ..serve.options import Limits, ServeOptions

    check_choice(backend, GRAPH_CHOICES, "--backend")
    check_choice(precision, PRECISION_CHOICES, "--precision")
    locate(model)  # a bad folder is one line now, not a replica failing later
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host) and not insecure_no_token:
        raise typer.BadParameter(f"{host} is reachable from other machines: set a token (${TOKEN_ENV} or --token), "
                                 "or pass --insecure-no-token", param_hint="'--host'")
    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_response_pixels=int(max_response_mp * 1e6),
                    max_n=max_n, timeout_s=timeout, body_timeout_s=body_timeout, max_queued=max_queued)
    options = ServeOptions(str(model.resolve()), backend, max_batch_size, batch_wait_ms / 1000, max_batch, None,
                           threads, TOKEN_ENV if token else None, tuple(cors_origin or ()), host,
                           tuple(allowed_host or ()), limits, precision)
    if config_out is not None:
        write_config(config_out, options, host, port, replicas, cpus_per_replica, gpus_per_replica)
        print(f"wrote {config_out}: `serve deploy {config_out}` on a Ray cluster"
              + (f" (set ${TOKEN_ENV} on every node)" if token else ""))
        return EXIT_OK
    if token:
        os.environ[TOKEN_ENV] = token  # the processes Ray starts here inherit it; no config holds it
    return run_locally(options, host, port, replicas, cpus_per_replica, gpus_per_replica, ray_address, num_cpus,
                       insecure_no_token)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def http_options(options, host: str, port: int) -> dict:
    """Ray's HTTP proxy: its own end-to-end limit, a little past the requests' own deadline."""
    return {"host": host, "port": port, "request_timeout_s": options.limits.timeout_s + PROXY_GRACE_S}


def live_proxy() -> tuple[str, int] | None:
    """(host, port) of the HTTP proxy Ray Serve already runs on the connected cluster (None: none).
    Its settings are the cluster's: ``serve.start`` on a running Serve keeps them, whatever it asks."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    config = ray.get(client._controller.get_http_config.remote())
    return config.host, config.port


def check_live_proxy(options, port: int, insecure_no_token: bool):
    """``options`` with the host the application will really be reached at, and its port: a Serve
    already running on the cluster keeps its proxy, and a proxy beyond this machine needs a token
    (or the flag)."""
    from dataclasses import replace

    live = live_proxy()
    if live is None:
        return options, port
    live_host, live_port = live
    if options.token_env is None and not is_loopback(live_host) and not insecure_no_token:
        raise typer.BadParameter(f"Ray Serve on that cluster already listens on {live_host}:{live_port}, reachable from "
                                 f"other machines: set a token (${TOKEN_ENV} or --token), or pass --insecure-no-token",
                                 param_hint="'--ray-address'")
    return replace(options, host=live_host), live_port


def run_locally(options, host: str, port: int, replicas: int, cpus: float, gpus: float, ray_address: str | None,
                num_cpus: int | None, insecure_no_token: bool = False) -> int:
    """Start Ray (or join it), run the application, print the URL, and serve until SIGINT/SIGTERM."""
    import ray
    from ray import serve

    from ..ray_session import start_or_join
    from ..serve.app import build_app, start_serve

    stop = threading.Event()
    stopped_by: list[int] = []

    def on_signal(number, _frame):
        stopped_by.append(number)
        stop.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)
    start_or_join(ray_address, num_cpus=num_cpus)
    try:
        options, port = check_live_proxy(options, port, insecure_no_token)
        start_serve(http_options(options, host, port))
        serve.run(build_app(options, replicas, cpus, gpus), name="cvdvae", route_prefix="/", blocking=False)
        print(f"serving {options.model} at http://{options.host}:{port}/ (API: POST /v1/samples, docs: /docs"
              f"{'; token required' if options.token_env else ''}); Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return EXIT_INTERRUPTED if signal.SIGINT in stopped_by else EXIT_OK


def write_config(path: Path, options, host: str, port: int, replicas: int, cpus: float, gpus: float) -> None:
    """The Ray Serve config (``ServeDeploySchema``) that deploys the same application. It names the
    token's environment variable, never the token."""
    import yaml

    from ..serve.app import deployment_settings

    settings = deployment_settings(options, replicas, cpus, gpus)
    config = {
        "proxy_location": "EveryNode",
        "http_options": http_options(options, host, port),
        "applications": [{
            "name": "cvdvae", "route_prefix": "/", "import_path": "runtime.serve.app:app_builder",
            "args": options.to_args(),
            "deployments": [{"name": name, **values} for name, values in settings.items()],
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
