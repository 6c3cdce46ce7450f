"""The HTTP routes (FastAPI) and the Ray Serve deployment that owns one backend per replica.

Requests reach ``Sampler.samples``; each becomes a ``Job`` handed to ``run_batch``, which Ray
Serve's ``@serve.batch`` calls with the jobs that arrived together (up to
``max_batch_size``, waiting at most ``batch_wait_s`` for more). The engine runs on one
worker thread per replica, so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from ray import serve

from runtime import outputs
from runtime.backends import open_backend
from runtime.consistency import project
from runtime.model_files import locate

from .batching import Job, run_jobs
from .metrics import Metrics
from .requests import Limits, ModelShape, RequestError, SampleRequest, bad, parse_fields

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServeOptions:
    model: str
    backend: str = "auto"
    max_batch_size: int = 8         # requests Ray Serve gathers into one batch
    batch_wait_s: float = 0.01      # how long a batch waits to fill
    max_batch: int | None = None    # images per engine call (default: the backend's own limit)
    max_n: int | None = None        # samples per image per engine call
    threads: int = 0
    token: str | None = None
    limits: Limits = field(default_factory=Limits)

    def to_args(self) -> dict[str, Any]:
        """JSON-able, for ``serve deploy``'s config (``app_builder`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> "ServeOptions":
        return cls(**{**args, "limits": Limits(**args.get("limits", {}))})


def png_bytes(hwc: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(hwc).save(buffer, format="PNG")
    return buffer.getvalue()


def zipped(pngs: list[bytes], summary: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for k, png in enumerate(pngs):
            archive.writestr(f"sample_s{summary['seed']}_{k:02d}.png", png)
        archive.writestr("request.json", json.dumps(summary, indent=2))
    return buffer.getvalue()


def _replica_name() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (tests)
        return "local"


# Helpers above the deployment: Ray captures the class with the module's names defined so far.
api = FastAPI(title="cvdvae", description="Seeded, diverse super-resolution of faces (CVDVAE)",
              version="1", docs_url="/docs", openapi_url="/openapi.json")


@serve.deployment(name="Sampler")
@serve.ingress(api)
class Sampler:
    def __init__(self, options: ServeOptions):
        self.options = options
        files = locate(options.model)
        self.backend, _ = open_backend(files, options.backend, max_batch=options.max_batch, max_n=options.max_n,
                                       threads=options.threads)
        self.model = ModelShape(files.conditional, files.lr_size, files.hr_size, files.scale)
        self.model_id = f"cvdvae-{files.meta.get('onnx_sha256', 'model')[:12]}"
        self.metrics = Metrics(_replica_name())
        self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvdvae-engine")
        self.run_batch.set_max_batch_size(options.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(options.batch_wait_s)

    # ---------------------------------------------------------------- routes
    @api.post("/v1/samples", summary="n seeded samples of one LR face (multipart upload or JSON with base64)")
    async def samples(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            self._check_token(request)
            sample_request = await self._read(request)
            samples = await self._sample(sample_request)
            response = self._respond(request, sample_request, samples, time.perf_counter() - start)
        except RequestError as err:
            self.metrics.finished(err.status, time.perf_counter() - start, kind=err.kind)
            return JSONResponse({"error": err.message, "kind": err.kind}, status_code=err.status)
        except Exception as err:  # noqa: BLE001 - a bug or an engine failure: one line, counted, the service goes on
            self.metrics.finished(500, time.perf_counter() - start, kind="internal")
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            return JSONResponse({"error": message, "kind": "internal"}, status_code=500)
        self.metrics.finished(200, time.perf_counter() - start, samples=len(samples))
        return response

    @api.get("/healthz", summary="the replica's process is up")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="the model is loaded: what it takes and gives")
    async def readyz(self) -> dict:
        return {"ready": True, "model": self.model_id, "conditional": self.model.conditional,
                "lr_size": self.model.lr_size, "hr_size": self.model.hr_size, "scale": self.model.scale,
                "max_n": self.options.limits.max_n, "backend": self.backend.name}

    @api.get("/metrics", summary="Prometheus text format", response_class=PlainTextResponse)
    async def metrics_text(self, request: Request) -> Response:
        try:
            self._check_token(request)
        except RequestError as err:
            return JSONResponse({"error": err.message, "kind": err.kind}, status_code=err.status)
        return PlainTextResponse(self.metrics.text(), media_type="text/plain; version=0.0.4")

    @api.get("/", include_in_schema=False)
    async def page(self) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return JSONResponse({"error": f"no such file: {name}", "kind": "not_found"}, status_code=404)
        return FileResponse(path)

    # ---------------------------------------------------------------- batching
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def run_batch(self, jobs: list[Job]) -> list[np.ndarray]:
        start = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self.engine, run_jobs, self.backend, jobs)
        self.metrics.batch(len(jobs), time.perf_counter() - start)
        return results

    # ---------------------------------------------------------------- helpers
    def _check_token(self, request: Request) -> None:
        if self.options.token and request.headers.get("authorization") != f"Bearer {self.options.token}":
            raise RequestError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)")

    async def _read(self, request: Request) -> SampleRequest:
        """The body, never more than the limit, then its fields."""
        limit = self.options.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise bad(f"request body of {declared} bytes is more than the {limit} taken", "too_large", 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise bad(f"request body is more than the {limit} bytes taken", "too_large", 413)
        request._body = bytes(body)  # noqa: SLF001 - starlette re-reads a consumed body from here
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data") or kind.startswith("application/x-www-form-urlencoded"):
            form = await request.form(max_files=1, max_fields=16)
            upload = form.get("image")
            image = await upload.read() if hasattr(upload, "read") else None
            fields = {k: v for k, v in form.items() if k != "image" or image is None}
            return parse_fields(fields, image, self.model, self.options.limits)
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise bad("the body is neither multipart/form-data nor a JSON object") from None
        if not isinstance(fields, dict):
            raise bad("the JSON body must be an object")
        return parse_fields(fields, None, self.model, self.options.limits)

    async def _sample(self, request: SampleRequest) -> np.ndarray:
        self.metrics.queue(+1)
        try:
            samples = await asyncio.wait_for(self.run_batch(Job(request.lr, request.seed, request.temperature)),
                                             self.options.limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"no answer within {self.options.limits.timeout_s:g} s") from None
        finally:
            self.metrics.queue(-1)
        if outputs.non_finite_samples(samples):
            raise RequestError(500, "non_finite", "the engine produced NaN/Inf samples (numerically broken)")
        if request.consistent:
            samples = project(samples, request.lr, self.model.scale)
        return samples

    def _respond(self, request: Request, sample_request: SampleRequest, samples: np.ndarray,
                 elapsed: float) -> Response:
        pngs = [png_bytes(outputs.to_uint8(sample)) for sample in samples]
        summary = {"model": self.model_id, "seed": sample_request.seed, "n": len(pngs),
                   "temperatures": [round(float(t), 6) for t in sample_request.temperature],
                   "consistent": sample_request.consistent, "elapsed_s": round(elapsed, 4)}
        if "application/zip" in request.headers.get("accept", ""):
            return Response(zipped(pngs, summary), media_type="application/zip",
                            headers={"content-disposition": f'attachment; filename="samples_s{summary["seed"]}.zip"'})
        return JSONResponse({**summary, "samples": [base64.b64encode(p).decode() for p in pngs]})


def build_app(options: ServeOptions, replicas: int = 1, cpus_per_replica: float = 1.0,
              gpus_per_replica: float = 0.0):
    """The Ray Serve application: ``replicas`` copies of ``Sampler``, each with its own engine."""
    return Sampler.options(num_replicas=replicas,
                           ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
                           max_ongoing_requests=max(64, 4 * options.max_batch_size)).bind(options)


def app_builder(args: dict[str, Any]):
    """``serve deploy`` entry point (``import_path: serve.app:app_builder``): ``args`` are ``ServeOptions``."""
    return build_app(ServeOptions.from_args(args))
