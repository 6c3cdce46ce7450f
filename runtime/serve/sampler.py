"""The model replica: a Ray Serve deployment that owns one ``Pipeline`` and answers requests
the ingress has read and checked.

``answer`` runs the pipeline's steps (``runtime.pipeline``) and streams the answer
(``runtime.serve.answers``). Every step that touches pixels (decoding, the ``from_hr``
bicubic, detection and alignment, the consistency projection, paste-back, PNG encoding)
runs on a bounded pool of worker threads, so the replica's event loop only schedules: its
batch timer and every other request go on while a large photo is decoded. Sampling goes
through ``run_batch``, which Ray Serve's ``@serve.batch`` calls with the requests (each its
jobs, together) that arrived together and which runs them on the replica's one engine thread
through the one sampling path (``sample_requests``: on engines whose rows are not independent,
each request in calls of its own); so a request gives the pixels ``cvdvae run`` and the Python
API give, and the same bytes when it is run again.

A request carries its remaining time: no step starts after it is spent (and the ingress
cancels the request then). A photo's answer is checked against the response budget from its
header, before its pixels are decoded, and again once its faces are counted; at most
``photos_at_once`` photos are worked on together.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable

from ray import serve

from cvdvae.errors import CVDVAEError, InputError, NonFiniteSamples

from ..backends import Backend
from ..backends.interface import Sampled
from ..faces.paste import output_shape
from ..faces.photos import FaceSearch, FacesOutput, PhotoFaces
from ..images.outputs import png_bytes
from ..images.photo_format import PhotoFormat, check_webp_size
from ..images.png import encode_png
from ..images.summary import FrameMoments
from ..pipeline import LRInput, Pipeline
from ..sampling import Job, sample_jobs
from .answers import Failure, Head, Spread
from .options import ServeOptions
from .requests import RequestError, SampleRequest, request_error, timed_out

log = logging.getLogger("ray.serve")
SUMMARY_IMAGES = 2  # the mean and the standard deviation map (its scale bar aside)


def spread_pngs(summary: Any, encode: Callable[[Any], bytes] = png_bytes) -> Spread:
    """A ``runtime.images.summary`` summary's two pictures as PNGs, encoded as ``cvdvae run`` writes
    them (a face's by Pillow, a whole photo's by ``encode_png`` at the photo's level)."""
    return Spread(encode(summary.mean_pixels()), encode(summary.std_pixels()))


def library_call(work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)``, the library's errors about the request made into its 4xx (NaN/Inf: a 500)."""
    try:
        return work(*args)
    except NonFiniteSamples:
        raise RequestError(500, "non_finite", "the engine produced NaN/Inf samples (numerically broken)") from None
    except CVDVAEError as err:
        raise request_error(err) from None


def sample_requests(backend: Backend, requests: list[list[Job]]) -> list[list[Sampled]]:
    """Each request's samples, its jobs' in order. Where the backend's rows are independent every
    job may share a call with any other; where they are not, a request's rows never share a call
    with another request's (same-seed rows would, in ``runtime.sampling``), so its bytes are what
    it gives alone, however requests arrive (and when it is run again)."""
    if backend.rows_independent:
        flat = sample_jobs(backend, [job for jobs in requests for job in jobs])
        bounds = list(itertools.accumulate(map(len, requests), initial=0))
        return [flat[a:b] for a, b in zip(bounds, bounds[1:])]
    return [sample_jobs(backend, jobs) for jobs in requests]


@serve.deployment(name="Sampler")
class Sampler:
    def __init__(self, options: ServeOptions):
        self.options, limits = options, options.limits
        self.pipe = Pipeline.from_pretrained(options.model, options.backend, options.threads or None,
                                             max_batch=options.max_batch, max_n=options.max_n,
                                             precision=options.precision, limits=limits)
        self.pipe.backend.wait_ready()  # a replica is ready when its engine is
        self.engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvdvae-engine")
        self.workers = ThreadPoolExecutor(max_workers=limits.image_threads, thread_name_prefix="cvdvae-images")
        self.photo_slots = asyncio.Semaphore(limits.photos_at_once)
        self.answering = self.steps = self.working = 0  # requests in progress, worker steps started and running
        self.count_lock = threading.Lock()
        self.run_batch.set_max_batch_size(options.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(options.batch_wait_s)

    async def describe(self) -> dict[str, Any]:
        """What the model takes and gives (``/readyz``)."""
        shape = self.pipe.shape
        return {"model": self.pipe.model_id, "conditional": shape.conditional, "lr_size": shape.lr_size,
                "hr_size": shape.hr_size, "scale": shape.scale, "backend": self.pipe.backend.name,
                "precision": self.pipe.backend.precision, "fp32_groups": list(self.pipe.backend.fp32_groups),
                "levels": shape.levels.resolutions if shape.levels is not None else []}

    async def activity(self) -> dict[str, Any]:
        """This replica's Ray actor name, its requests in progress, the worker steps started so far
        and those running now (a cancelled request's work stops)."""
        return {"replica": serve.get_replica_context().replica_id.to_full_id_str(), "answering": self.answering,
                "steps": self.steps, "working": self.working}

    async def answer(self, request: SampleRequest, budget_s: float) -> AsyncIterator[Head | Failure | bytes]:
        """The request's answer (``runtime.serve.answers``), within ``budget_s`` seconds from now."""
        deadline = time.monotonic() + budget_s
        self.answering += 1
        try:
            if not request.faces:
                yield await self._lr_faces(request, deadline)
                return
            async with self.photo_slots:
                async for message in self._photo(request, deadline):
                    yield message
        except RequestError as err:
            yield Failure(err.status, err.kind, err.message)
        finally:
            self.answering -= 1

    # ---------------------------------------------------------------- batching
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def run_batch(self, requests: list[list[Job]]) -> list[tuple[list[Any], int, float]]:
        """Each request's samples (its jobs'), with the jobs in the batch and each one's share of the
        engine time."""
        start = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self.engine, sample_requests, self.pipe.backend,
                                                                   requests)
        jobs = sum(map(len, requests))
        share = (time.perf_counter() - start) / jobs
        return [(result, jobs, share) for result in results]

    # ---------------------------------------------------------------- the two kinds of request
    async def _lr_faces(self, request: SampleRequest, deadline: float) -> Head:
        """LR faces (or a prior-only model's draws): ``cvdvae run``'s samples for this image and seed."""
        pipe = self.pipe
        inputs = pipe.prepare(None) if request.image is None else \
            [await self._step(deadline, pipe.prepare_one, request.image, request.from_hr, "image")]
        noise = library_call(lambda: pipe.recipe(request.seed, request.n, **request.variation))
        results, batches = await self._sampled(pipe.jobs(inputs, noise, request.temperature), deadline)
        pngs, spread = await self._step(deadline, self._lr_pngs, inputs, results, request)
        record = {**self._record(request), "consistent": request.consistent}
        return Head(record, pngs, [], 0, request.n, batches, spread)

    def _lr_pngs(self, inputs: list[LRInput], results: list[Any], request: SampleRequest) \
            -> tuple[list[bytes], Spread | None]:
        output = self.pipe.finish(inputs, results, request.seed, request.temperature, request.consistent)
        spread = spread_pngs(output.summary(0)) if request.summary else None
        return [png_bytes(sample) for sample in output.samples[0]], spread

    async def _photo(self, request: SampleRequest, deadline: float) -> AsyncIterator[Head | bytes]:
        """``faces``: the photo's faces found, sampled (its faces share batches) and pasted back, as
        ``cvdvae run --faces`` does: whole photo k is made of sample k of each face."""
        pipe = self.pipe
        await self._step(deadline, self._detector_ready)
        found: PhotoFaces = await self._step(
            deadline, pipe.detect_faces, request.image, FaceSearch(max_faces=request.max_faces), None, "photo",
            "photo", lambda header: self._check_photo_answer(request, header.width, header.height, 0))
        library_call(self._check_photo_answer, request, found.photo.shape[1], found.photo.shape[0], len(found.faces))
        noise = library_call(lambda: pipe.recipe(request.seed, request.n, **request.variation))
        results, batches = await self._sampled(pipe.face_jobs(found, noise, request.temperature), deadline)
        output, face_pngs, face_spreads = await self._step(deadline, self._face_pngs, found, results, request)
        photo_format = library_call(self._photo_format, output, request)
        record = {**self._record(request), **output.record(pipe.shape.hr_size), "photo_format": photo_format.name}
        del record["timings_s"]
        yield Head(record, [], face_pngs, request.n, len(found.faces) * request.n, batches, None, face_spreads)
        await self._step(deadline, lambda: output.background)  # it upscales the photo: not on the loop
        moments = FrameMoments(output.composites().regions) if request.summary else None
        photos = output.encoded(photo_format, moments)  # the background's bands encoded once

        def next_photo() -> bytes:
            return b"".join(next(photos))

        for _ in range(request.n):
            yield await self._step(deadline, next_photo)
        if moments is not None:
            yield await self._step(deadline, lambda: spread_pngs(moments.summary(),
                                                                 lambda pixels: encode_png(pixels, output.png_level)))

    @staticmethod
    def _photo_format(output: FacesOutput, request: SampleRequest) -> PhotoFormat:
        """The whole photos' format decided (the photo's own unless the request names one), refused
        here, before any is made, when the photos cannot be in it."""
        chosen = output.photo_format(request.photo_format)
        if chosen.name == "webp":
            height, width = output_shape(output.photo.shape[:2], output.upscale)
            check_webp_size(height, width)
        return chosen

    def _face_pngs(self, found: PhotoFaces, results: list[Any], request: SampleRequest) \
            -> tuple[FacesOutput, list[list[bytes]], list[Spread]]:
        output = self.pipe.finish_faces(found, results, request.seed, request.temperature)
        spreads = [spread_pngs(face.summary()) for face in output.faces] if request.summary else []
        return output, [[png_bytes(sample) for sample in face.samples] for face in output.faces], spreads

    def _detector_ready(self) -> None:
        try:
            self.pipe.detector  # noqa: B018 - loaded on the first photo
        except CVDVAEError as err:
            log.error("no face detector: %s", err)  # the operator's log has the path; the client does not
            raise RequestError(503, "no_detector", "this server has no face detector (its operator can add one: "
                                                   "cvdvae fetch mtcnn)") from None

    def _check_photo_answer(self, request: SampleRequest, width: int, height: int, faces: int) -> None:
        """The answer's pixels against the limits: from the photo's header (``faces`` 0), then with its faces."""
        limits, hr_size = self.options.limits, self.pipe.shape.hr_size
        factor = self.pipe.upscale_factor(None)
        out_height, out_width = output_shape((height, width), factor)
        if out_width * out_height > limits.max_output_pixels:
            raise InputError(f"photo: {width}x{height} at x{factor:g} is {out_width * out_height / 1e6:.0f} "
                             f"megapixels, more than the {limits.max_output_pixels / 1e6:.0f} a whole photo may have",
                             "too_large")
        images = request.n + (SUMMARY_IMAGES if request.summary else 0)  # per face and for the whole photos
        total = images * (out_width * out_height + faces * hr_size * hr_size)
        if total > limits.max_response_pixels:
            what = f"{images} photos of {out_width}x{out_height}" + (f" and {faces} faces' samples" if faces else "")
            raise InputError(f"photo: the answer would hold {total / 1e6:.0f} megapixels ({what}), more than the "
                             f"{limits.max_response_pixels / 1e6:.0f} one request may: lower n or send a smaller "
                             "photo", "too_large")

    # ---------------------------------------------------------------- helpers
    def _record(self, request: SampleRequest) -> dict[str, Any]:
        return {"model": self.pipe.model_id, "seed": request.seed, "n": request.n,
                "temperatures": [round(float(t), 6) for t in request.temperature]}

    async def _step(self, deadline: float, work: Callable[..., Any], *args: Any) -> Any:
        """``library_call(work, *args)`` on a worker thread, unless the request's time is spent."""
        if time.monotonic() > deadline:
            raise timed_out(self.options.limits.timeout_s)
        self.steps += 1
        return await asyncio.get_running_loop().run_in_executor(self.workers, self._working, work, *args)

    def _working(self, work: Callable[..., Any], *args: Any) -> Any:
        """``library_call`` on a worker thread, counted while it runs (a cancelled request's step
        still runs to its end: ``activity`` says when it has)."""
        with self.count_lock:
            self.working += 1
        try:
            return library_call(work, *args)
        finally:
            with self.count_lock:
                self.working -= 1

    async def _sampled(self, jobs: list[Job], deadline: float) -> tuple[list[Any], list[tuple[int, float]]]:
        """The jobs' samples through the batcher (the request's jobs go together), and per job its
        batch's size and engine-time share."""
        try:
            results, size, share = await asyncio.wait_for(self.run_batch(jobs), max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            raise timed_out(self.options.limits.timeout_s) from None
        return results, [(size, share)] * len(jobs)
