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

from cvdvae.errors import CVDVAEError
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


def _zip_response(files: dict[str, bytes], summary: dict) -> Response:
    """The PNGs and ``request.json`` (the summary) as one stored zip (PNGs are compressed already)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("request.json", json.dumps(summary, indent=2))
    return Response(buffer.getvalue(), media_type="application/zip",
                    headers={"content-disposition": f'attachment; filename="samples_s{summary["seed"]}.zip"'})


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
        self.detector = None  # MTCNN, loaded with the first photo
        self.run_batch.set_max_batch_size(options.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(options.batch_wait_s)

    # ---------------------------------------------------------------- routes
    @api.post("/v1/samples", summary="n seeded samples of one LR face (multipart upload or JSON with base64)")
    async def samples(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            self._check_token(request)
            sample_request = await self._read(request)
            if sample_request.photo is not None:
                response, count = await self._photo(request, sample_request, start)
            else:
                samples = await self._sample(sample_request)
                response, count = self._respond(request, sample_request, samples, time.perf_counter() - start)
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
        (samples,) = await self._batched([Job(request.lr, request.seed, request.temperature)])
        if request.consistent:
            samples = project(samples, request.lr, self.model.scale)
        return samples

    async def _batched(self, jobs: list[Job]) -> list[np.ndarray]:
        """The jobs' samples through the batcher, within the request's time; never NaN/Inf."""
        self.metrics.queue(+len(jobs))
        try:
            results = await asyncio.wait_for(asyncio.gather(*(self.run_batch(job) for job in jobs)),
                                             self.options.limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, "timeout", f"no answer within {self.options.limits.timeout_s:g} s") from None
        finally:
            self.metrics.queue(-len(jobs))
        if any(outputs.non_finite_samples(samples) for samples in results):
            raise RequestError(500, "non_finite", "the engine produced NaN/Inf samples (numerically broken)")
        return results

    async def _photo(self, request: Request, sample_request: SampleRequest, start: float) -> tuple[Response, int]:
        """``faces``: every face of the photo aligned, sampled (its faces share batches) and pasted
        back, as ``cvdvae run --faces`` does: whole photo k is made of sample k of each face."""
        from runtime.faces.photos import (PhotoOptions, align_face, composites, face_record, find_faces,
                                          no_face_message)

        options = PhotoOptions(Path("."), sample_request.seed, sample_request.temperature, float(self.model.scale),
                               max_faces=sample_request.max_faces)
        loop = asyncio.get_running_loop()
        photo, shape = sample_request.photo, self.model
        out_pixels = photo.shape[0] * photo.shape[1] * options.upscale**2
        if out_pixels > self.options.limits.max_output_pixels:
            raise bad(f"faces: {photo.shape[1]}x{photo.shape[0]} at x{options.upscale:g} is {out_pixels / 1e6:.0f} "
                      f"megapixels, more than the {self.options.limits.max_output_pixels / 1e6:.0f} returned",
                      "too_large", 413)
        found = await loop.run_in_executor(None, find_faces, photo, self._detector(), options)
        if not found:
            raise RequestError(422, "no_face", no_face_message(options).split(";")[0])
        faces = [align_face(photo, face, shape.lr_size, shape.hr_size) for face in found]
        results = await self._batched([Job(face.lr, sample_request.seed, sample_request.temperature)
                                       for face in faces])
        pixels = [[outputs.to_uint8(sample) for sample in samples] for samples in results]
        photos = await loop.run_in_executor(None, lambda: [png_bytes(c) for c in composites(photo, faces, pixels,
                                                                                            options)])
        records = [face_record(j, face, options.upscale, shape.hr_size) for j, face in enumerate(faces)]
        face_pngs = [[png_bytes(tile) for tile in tiles] for tiles in pixels]
        summary = {"model": self.model_id, "seed": sample_request.seed, "n": len(photos),
                   "temperatures": [round(float(t), 6) for t in sample_request.temperature],
                   "size": [photo.shape[1], photo.shape[0]], "upscale": options.upscale, "faces": records,
                   "elapsed_s": round(time.perf_counter() - start, 4)}
        if "application/zip" in request.headers.get("accept", ""):
            files = {f"photo_s{sample_request.seed}_{k:02d}.png": png for k, png in enumerate(photos)}
            files.update({f"face{j}_s{sample_request.seed}_{k:02d}.png": png
                          for j, pngs in enumerate(face_pngs) for k, png in enumerate(pngs)})
            return _zip_response(files, summary), len(photos)
        for record, pngs in zip(records, face_pngs):
            record["samples"] = [base64.b64encode(p).decode() for p in pngs]
        return JSONResponse({**summary, "samples": [base64.b64encode(p).decode() for p in photos]}), len(photos)

    def _detector(self):
        """The MTCNN detector, loaded on the first photo."""
        if self.detector is None:
            from runtime.faces.detector import FaceDetector

            try:
                self.detector = FaceDetector.from_folder()
            except CVDVAEError as err:
                raise RequestError(503, "no_detector", f"this server has no face detector: {err}") from None
        return self.detector

    def _respond(self, request: Request, sample_request: SampleRequest, samples: np.ndarray,
                 elapsed: float) -> tuple[Response, int]:
        pngs = [png_bytes(outputs.to_uint8(sample)) for sample in samples]
        summary = {"model": self.model_id, "seed": sample_request.seed, "n": len(pngs),
                   "temperatures": [round(float(t), 6) for t in sample_request.temperature],
                   "consistent": sample_request.consistent, "elapsed_s": round(elapsed, 4)}
        if "application/zip" in request.headers.get("accept", ""):
            files = {f"sample_s{sample_request.seed}_{k:02d}.png": png for k, png in enumerate(pngs)}
            return _zip_response(files, summary), len(pngs)
        return JSONResponse({**summary, "samples": [base64.b64encode(p).decode() for p in pngs]}), len(pngs)


def build_app(options: ServeOptions, replicas: int = 1, cpus_per_replica: float = 1.0,
              gpus_per_replica: float = 0.0):
    """The Ray Serve application: ``replicas`` copies of ``Sampler``, each with its own engine."""
    return Sampler.options(num_replicas=replicas,
                           ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
                           max_ongoing_requests=max(64, 4 * options.max_batch_size)).bind(options)


def app_builder(args: dict[str, Any]):
    """``serve deploy`` entry point (``import_path: serve.app:app_builder``): ``args`` are ``ServeOptions``."""
    return build_app(ServeOptions.from_args(args))
