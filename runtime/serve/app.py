"""The HTTP routes (FastAPI) and the Ray Serve deployment that owns one ``Pipeline`` per replica.

A request runs the pipeline's steps (``runtime.pipeline``): its image is decoded and checked
(``prepare_one``; a photo's faces found and aligned by ``detect_faces`` on a worker thread), its
jobs go to ``run_batch``, which Ray Serve's ``@serve.batch`` calls with the jobs that arrived
together (up to ``max_batch_size``, waiting at most ``batch_wait_s`` for more) and which runs
them on the replica's one engine thread through the one sampling path; then ``finish`` (8-bit
pixels, the NaN/Inf check) and the PNG encoding. So a request gives the same pixels as ``cvdvae
run`` and the Python API, and the event loop keeps accepting requests while engines run.
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
from typing import Any, Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from ray import serve

from cvdvae.errors import CVDVAEError

from ..faces.photos import FaceSearch
from ..pipeline import Limits as PipelineLimits
from ..pipeline import NonFiniteSamples, Pipeline
from ..sampling import Job, sample_jobs
from .metrics import Metrics
from .requests import Limits, RequestError, SampleRequest, bad, parse_fields, request_error

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


def _zip_response(files: dict[str, bytes], summary: dict) -> Response:
    """The PNGs and ``request.json`` (the summary) as one stored zip (PNGs are compressed already)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("request.json", json.dumps(summary, indent=2))
    return Response(buffer.getvalue(), media_type="application/zip",
                    headers={"content-disposition": f'attachment; filename="samples_s{summary["seed"]}.zip"'})


def _base64_list(pngs: list[bytes]) -> list[str]:
    return [base64.b64encode(png).decode() for png in pngs]


def _replica_name() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (tests)
        return "local"


def library_call(work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)``, the library's errors about the request made into its 4xx (NaN/Inf: a 500)."""
    try:
        return work(*args)
    except NonFiniteSamples:
        raise RequestError(500, "non_finite", "the engine produced NaN/Inf samples (numerically broken)") from None
    except CVDVAEError as err:
        raise request_error(err) from None


# Helpers above the deployment: Ray captures the class with the module's names defined so far.
api = FastAPI(title="cvdvae", description="Seeded, diverse super-resolution of faces (CVDVAE)",
              version="1", docs_url="/docs", openapi_url="/openapi.json")


@serve.deployment(name="Sampler")
@serve.ingress(api)
class Sampler:
    def __init__(self, options: ServeOptions):
        self.options = options
        limits = options.limits
        self.pipe = Pipeline.from_pretrained(options.model, options.backend, options.threads or None,
                                             max_batch=options.max_batch, max_n=options.max_n,
                                             limits=PipelineLimits(limits.max_image_pixels, limits.max_image_pixels,
                                                                   limits.max_output_pixels))
        self.metrics = Metrics(_replica_name())
        self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvdvae-engine")
        self.workers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cvdvae-images")
        self.run_batch.set_max_batch_size(options.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(options.batch_wait_s)

    # ---------------------------------------------------------------- routes
    @api.post("/v1/samples", summary="n seeded samples of one LR face, or of a photo's faces (multipart upload "
                                     "or JSON with base64)")
    async def samples(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            self._check_token(request)
            sample_request = await self._read(request)
            if sample_request.faces:
                response, count = await self._photo(request, sample_request, start)
            else:
                response, count = await self._lr_faces(request, sample_request, start)
        except RequestError as err:
            self.metrics.finished(err.status, time.perf_counter() - start, kind=err.kind)
            return JSONResponse({"error": err.message, "kind": err.kind}, status_code=err.status)
        except Exception as err:  # noqa: BLE001 - a bug or an engine failure: one line, counted, the service goes on
            self.metrics.finished(500, time.perf_counter() - start, kind="internal")
            message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            return JSONResponse({"error": message, "kind": "internal"}, status_code=500)
        self.metrics.finished(200, time.perf_counter() - start, samples=count)
        return response

    @api.get("/healthz", summary="the replica's process is up")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="the model is loaded: what it takes and gives")
    async def readyz(self) -> dict:
        shape = self.pipe.shape
        return {"ready": True, "model": self.pipe.model_id, "conditional": shape.conditional,
                "lr_size": shape.lr_size, "hr_size": shape.hr_size, "scale": shape.scale,
                "max_n": self.options.limits.max_n, "backend": self.pipe.backend.name}

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
        results = await asyncio.get_running_loop().run_in_executor(self.engine, sample_jobs, self.pipe.backend, jobs)
        self.metrics.batch(len(jobs), time.perf_counter() - start)
        return results

    # ---------------------------------------------------------------- the two kinds of request
    async def _lr_faces(self, request: Request, sample: SampleRequest, start: float) -> tuple[Response, int]:
        """LR faces (or a prior-only model's draws): ``cvdvae run``'s samples for this image and seed. An
        LR face is small: its decoding and encoding stay on the event loop, where they cost less than
        a trip to a worker thread."""
        pipe = self.pipe
        inputs = pipe.prepare(None) if sample.image is None else \
            [library_call(pipe.prepare_one, sample.image, sample.from_hr, "image")]
        samples = await self._batched(pipe.jobs(inputs, sample.seed, sample.temperature))
        output = library_call(pipe.finish, inputs, samples, sample.seed, sample.temperature, sample.consistent)
        pngs = [png_bytes(s) for s in output.samples[0]]
        summary = {"model": pipe.model_id, "seed": sample.seed, "n": len(pngs),
                   "temperatures": [round(float(t), 6) for t in sample.temperature],
                   "consistent": sample.consistent, "elapsed_s": round(time.perf_counter() - start, 4)}
        if "application/zip" in request.headers.get("accept", ""):
            files = {f"sample_s{sample.seed}_{k:02d}.png": png for k, png in enumerate(pngs)}
            return _zip_response(files, summary), len(pngs)
        return JSONResponse({**summary, "samples": _base64_list(pngs)}), len(pngs)

    async def _photo(self, request: Request, sample: SampleRequest, start: float) -> tuple[Response, int]:
        """``faces``: the photo's faces found, sampled (its faces share batches) and pasted back, as
        ``cvdvae run --faces`` does: whole photo k is made of sample k of each face."""
        pipe = self.pipe
        try:
            pipe.detector  # noqa: B018 - loaded on the first photo
        except CVDVAEError as err:
            raise RequestError(503, "no_detector", f"this server has no face detector: {err}") from None
        found = await self._off_loop(pipe.detect_faces, sample.image, FaceSearch(max_faces=sample.max_faces), None,
                                     "photo", "photo")
        samples = await self._batched(pipe.face_jobs(found, sample.seed, sample.temperature))
        output = await self._off_loop(pipe.finish_faces, found, samples, sample.seed, sample.temperature)
        photos, face_pngs = await self._off_loop(lambda: ([png_bytes(canvas) for canvas in output.composites()],
                                                          [[png_bytes(s) for s in face.samples] for face in output.faces]))
        record = output.record(pipe.shape.hr_size)
        summary = {"model": pipe.model_id, "seed": sample.seed, "n": len(photos),
                   "temperatures": [round(float(t), 6) for t in sample.temperature], "size": record["size"],
                   "upscale": record["upscale"], "faces": record["faces"],
                   "elapsed_s": round(time.perf_counter() - start, 4)}
        if "application/zip" in request.headers.get("accept", ""):
            files = {f"photo_s{sample.seed}_{k:02d}.png": png for k, png in enumerate(photos)}
            files.update({f"face{j}_s{sample.seed}_{k:02d}.png": png
                          for j, pngs in enumerate(face_pngs) for k, png in enumerate(pngs)})
            return _zip_response(files, summary), len(photos)
        for face, pngs in zip(summary["faces"], face_pngs):
            face["samples"] = _base64_list(pngs)
        return JSONResponse({**summary, "samples": _base64_list(photos)}), len(photos)

    # ---------------------------------------------------------------- helpers
    def _check_token(self, request: Request) -> None:
        if self.options.token and request.headers.get("authorization") != f"Bearer {self.options.token}":
            raise RequestError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)")

    async def _off_loop(self, work: Callable[..., Any], *args: Any) -> Any:
        """``library_call(work, *args)`` on a worker thread: a photo's decoding, detection, alignment,
        paste-back and encoding would hold the event loop for up to seconds."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, library_call, work, *args)

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
        conditional = self.pipe.shape.conditional
        if kind.startswith("multipart/form-data") or kind.startswith("application/x-www-form-urlencoded"):
            form = await request.form(max_files=1, max_fields=16)
            upload = form.get("image")
            image = await upload.read() if hasattr(upload, "read") else None
            fields = {k: v for k, v in form.items() if k != "image" or image is None}
            return parse_fields(fields, image, conditional, self.options.limits)
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise bad("the body is neither multipart/form-data nor a JSON object") from None
        if not isinstance(fields, dict):
            raise bad("the JSON body must be an object")
        return parse_fields(fields, None, conditional, self.options.limits)

    async def _batched(self, jobs: list[Job]) -> list[np.ndarray]:
        """The jobs' samples through the batcher, within the request's time."""
        self.metrics.queue(+len(jobs))
        try:
            return await asyncio.wait_for(asyncio.gather(*(self.run_batch(job) for job in jobs)),
                                          self.options.limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"no answer within {self.options.limits.timeout_s:g} s") from None
        finally:
            self.metrics.queue(-len(jobs))


def build_app(options: ServeOptions, replicas: int = 1, cpus_per_replica: float = 1.0,
              gpus_per_replica: float = 0.0):
    """The Ray Serve application: ``replicas`` copies of ``Sampler``, each with its own engine."""
    return Sampler.options(num_replicas=replicas,
                           ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
                           max_ongoing_requests=max_ongoing_requests(options)).bind(options)


def max_ongoing_requests(options: ServeOptions) -> int:
    return max(64, 4 * options.max_batch_size)


def app_builder(args: dict[str, Any]):
    """``serve deploy`` entry point (``import_path: runtime.serve.app:app_builder``): ``args`` are ``ServeOptions``."""
    return build_app(ServeOptions.from_args(args))
