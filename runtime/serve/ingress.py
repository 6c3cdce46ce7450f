"""The front door: one Ray Serve deployment with the HTTP routes (FastAPI), in front of the model
replicas (``runtime.serve.sampler``).

It does what a request needs before and after the model, and nothing slow on its event loop:

- **closed by default**: the bearer token (read from the environment variable the options
  name, compared in constant time) guards the API, ``/metrics``, ``/docs`` and
  ``/openapi.json``; ``/healthz`` and ``/readyz`` stay open for orchestrators. A browser's
  request from another web origin is refused (403) unless that origin is allowed, so no web
  page can spend the service's compute through its visitors' browsers;
- **a budget per request**: the body must arrive within ``body_timeout_s`` (408) and fit
  ``max_body_bytes`` (413), and the bodies held at once ``max_bytes_in_flight`` (else 503
  with ``Retry-After``, before the body is read); the whole request, from its first byte to its
  last, within ``timeout_s`` (504, and the model replica's work is cancelled); a full queue is 503 with
  ``Retry-After``;
- **only the host's own names**: a ``Host`` that is no name of this service is refused (403),
  so a page whose name was re-pointed at the service (DNS rebinding) cannot use it
  (``runtime.serve.hosts``);
- **nothing lost, nothing mixed**: the request is sent to a model replica, and if that replica
  is lost from outside (its node, or killed) it is sent once more to another (a seeded request
  is idempotent: the answer is the same bytes; a streamed answer checks the parts already sent
  and skips them, or is cut off if they differ); a request whose replica died of its own while
  holding it is answered 500 (or cut off, once its answer has started) and not handed to the
  next;
- the answer is streamed as JSON or zip (``runtime.serve.answers``), its base64 and zip
  entries made on worker threads;
- every client mistake is a 4xx ``{"error", "kind"}``; anything else is logged here with its
  traceback and request id, and the client gets a generic line with that id, never a path,
  an address or an exception's text;
- ``/metrics``: one ingress sees every request, so its counters (``prometheus_client``) are
  the service's, whichever model replica did the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.requests import ClientDisconnect

from .answers import Failure, Head, JsonAnswer, Spread, ZipAnswer, fingerprint
from .hosts import HostRule
from .metrics import Metrics
from .options import ServeOptions
from .replicas import lost_from_outside
from .requests import FIELD_SCHEMAS, RequestError, SampleRequest, bad, parse_request, timed_out

STATIC = Path(__file__).parent / "static"
PIECE_BYTES = 1 << 20   # the answer goes out in pieces of at most this
READY_TIMEOUT_S = 5.0
READY_CACHE_S = 1.0  # /readyz reports a replica's answer this long without asking again
RETRY_KINDS = ("busy", "unavailable")  # 503s worth trying again: they carry Retry-After
# The request's fields for the schema (the parser in runtime.serve.requests refuses any other): the same
# fields in a form, where the image is a file, and in JSON, where it is base64.
REQUEST_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        **FIELD_SCHEMAS, "image": {**FIELD_SCHEMAS["image"], "format": "binary"}}}},
    "application/json": {"schema": {"type": "object", "properties": {
        **FIELD_SCHEMAS, "image": {**FIELD_SCHEMAS["image"], "contentEncoding": "base64"}}}}}}
SWAGGER_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                  "favicon-32x32.png": "image/png"}  # what /docs loads

log = logging.getLogger("ray.serve")

api = FastAPI(title="cvdvae", description="Seeded, diverse super-resolution of faces (CVDVAE)", version="1",
              docs_url=None, redoc_url=None, openapi_url=None)


def read_token(token_env: str | None) -> bytes | None:
    """The bearer token from the environment variable ``token_env`` names (None: no token)."""
    if token_env is None:
        return None
    token = os.environ.get(token_env, "")
    if not token:
        raise RuntimeError(f"${token_env} is empty or not set on this node: the service does not start without "
                           "the token it was configured with")
    return token.encode()


def same_origin(origin: str, host: str | None) -> bool:
    """Whether a browser's ``Origin`` is the service's own (the ``Host`` it was reached at)."""
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


class BodyBudget:
    """The bytes of the request bodies the ingress holds at once (one event loop: no lock)."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


def _changed(request_id: str, how: str) -> RequestError:
    """A retried answer that is not the one whose start was sent: the connection is cut."""
    log.error("request %s: run again, its answer %s from what was sent", request_id, how)
    return RequestError(502, "changed", "the answer changed when run again")


class ClosingStreamingResponse(StreamingResponse):
    """A streamed answer whose body is closed when the response ends, however it ends. Starlette
    leaves a body cut short by a client that went away suspended at its ``yield``; its ``finally``
    (the request's bytes and gauge given back) would then wait for the garbage collector, which may
    not come for as long as the process is idle."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Shielded: the task may be being cancelled, and the body is closed all the same.
            await asyncio.shield(self.body_iterator.aclose())  # type: ignore[union-attr]


def _pieces(data: bytes) -> list[bytes]:
    return [data[i:i + PIECE_BYTES] for i in range(0, len(data), PIECE_BYTES)] or [b""]


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, sampler: DeploymentHandle, options: ServeOptions):
        self.sampler = sampler.options(stream=True)
        self.describe = sampler.describe
        self.options, self.limits = options, options.limits
        self.token = read_token(options.token_env)
        self.hosts = HostRule(options.host, options.allowed_hosts)
        self.bodies = BodyBudget(self.limits.max_bytes_in_flight)
        self.ready_at = -READY_CACHE_S  # when a replica last answered /readyz
        self.metrics = Metrics()
        self.workers = ThreadPoolExecutor(max_workers=self.limits.image_threads, thread_name_prefix="cvdvae-answers")
        self.model: dict[str, Any] | None = None  # the model replicas' description, once one has answered

    # ---------------------------------------------------------------- routes
    @api.post("/v1/samples", summary="n seeded samples of one LR face, or of a photo's faces (multipart upload "
                                     "or JSON with base64); JSON or, with Accept: application/zip, a zip",
              openapi_extra={"requestBody": REQUEST_BODY})
    async def samples(self, request: Request) -> Response:
        start = time.monotonic()
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex  # Ray's proxy sets it, and logs it
        self.metrics.in_flight.inc()
        cors: dict[str, str] = {}
        messages: AsyncIterator[Any] | None = None
        reserved = 0  # bytes of the budget this request holds, until its answer ends
        try:
            cors = self._guard(request)
            reserved = self._reserve(request)
            body = await self._body(request)
            model = await self._model()
            sample = await self._off_loop(parse_request, request.headers.get("content-type"), body,
                                          model["conditional"], self.limits)
            messages = self._messages(sample, start + self.limits.timeout_s, request_id)
            head = await anext(messages)
            if isinstance(head, Failure):
                raise RequestError(head.status, head.kind, head.message)
            for size, seconds in head.batches:
                self.metrics.batch(size, seconds)
            writer = ZipAnswer() if "application/zip" in request.headers.get("accept", "") else JsonAnswer()
            headers = dict(cors)
            if isinstance(writer, ZipAnswer):
                headers["content-disposition"] = f'attachment; filename="{writer.filename(sample.seed)}"'
            stream = self._stream(writer, head, messages, start, request_id, reserved)
            messages, reserved = None, 0  # the stream owns them now
            return ClosingStreamingResponse(stream, media_type=writer.media_type, headers=headers)
        except RequestError as err:
            return self._refuse(err, start, cors)
        except asyncio.CancelledError:  # the client went away, or the proxy gave up on it
            self._count(499, start, kind="disconnected")
            raise
        except Exception:  # noqa: BLE001 - a bug or an engine failure: logged whole here, one generic line there
            log.exception("request %s failed", request_id)
            self._count(500, start, kind="internal")
            return JSONResponse({"error": f"internal error; the server's log has the details (request {request_id})",
                                 "kind": "internal", "request_id": request_id}, status_code=500, headers=cors)
        finally:
            self._release(reserved)
            if messages is not None:
                await messages.aclose()

    @api.options("/v1/samples", include_in_schema=False)
    async def preflight(self, request: Request) -> Response:
        """A browser's CORS preflight: allowed origins may POST with a token and any body."""
        try:
            cors = self._cors(request)
        except RequestError as err:
            return JSONResponse({"error": err.message, "kind": err.kind}, status_code=err.status)
        return Response(status_code=204, headers={**cors, "access-control-allow-methods": "POST",
                                                  "access-control-allow-headers": "authorization, content-type, accept",
                                                  "access-control-max-age": "600"})

    @api.get("/healthz", summary="the service's front is up")
    async def healthz(self, request: Request) -> Response:
        return self._wrong_host(request) or JSONResponse({"status": "ok"})

    @api.get("/readyz", summary="a model replica answers: what the model takes and gives")
    async def readyz(self, request: Request) -> Response:
        if refused := self._wrong_host(request):
            return refused
        if self.model is None or time.monotonic() - self.ready_at > READY_CACHE_S:
            try:
                self.model = await asyncio.wait_for(self.describe.remote(), READY_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - not ready, whatever the reason; the replicas' logs say why
                return JSONResponse({"ready": False, "error": "no model replica answers yet", "kind": "not_ready"},
                                    status_code=503)
            self.ready_at = time.monotonic()
        return JSONResponse({"ready": True, **self.model, "max_n": self.limits.max_n,
                             "max_faces": self.limits.max_faces})

    @api.get("/metrics", summary="Prometheus text format: the whole service's counters")
    async def metrics_text(self, request: Request) -> Response:
        return self._kept_out(request) or Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> Response:
        return self._kept_out(request) or JSONResponse(api.openapi())

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        """Swagger UI with the schema inline: a browser that sent the token here need not send it again.
        Its script and style come from this service (``/docs-assets``), so the page works offline."""
        return self._kept_out(request) or get_swagger_ui_html(
            openapi_url="openapi.json", title="cvdvae API", swagger_ui_parameters={"spec": api.openapi()},
            swagger_js_url="docs-assets/swagger-ui-bundle.js", swagger_css_url="docs-assets/swagger-ui.css",
            swagger_favicon_url="docs-assets/favicon-32x32.png")

    @api.get("/docs-assets/{name}", include_in_schema=False)
    async def docs_asset(self, name: str) -> Response:
        """Swagger UI's files, from the pinned ``swagger-ui-bundle`` package (the serve extra)."""
        from swagger_ui_bundle import swagger_ui_path

        if name not in SWAGGER_ASSETS:
            return JSONResponse({"error": "no such file", "kind": "not_found"}, status_code=404)
        return FileResponse(Path(swagger_ui_path) / name, media_type=SWAGGER_ASSETS[name])

    @api.get("/", include_in_schema=False)
    async def page(self, request: Request) -> Response:
        return self._wrong_host(request) or FileResponse(STATIC / "index.html", media_type="text/html")

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, request: Request, name: str) -> Response:
        if refused := self._wrong_host(request):
            return refused
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            return JSONResponse({"error": "no such file", "kind": "not_found"}, status_code=404)
        return FileResponse(path)

    # ---------------------------------------------------------------- the request's steps
    def _guard(self, request: Request) -> dict[str, str]:
        """The CORS headers the answer needs, after the origin and token checks."""
        cors = self._cors(request)
        if self.token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.token):
                raise RequestError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer ...)")
        return cors

    def _kept_out(self, request: Request) -> Response | None:
        """The refusal of a request the token or origin rules keep out (None: it may pass)."""
        try:
            self._guard(request)
        except RequestError as err:
            return self._refuse(err, time.monotonic(), {}, count=False)
        return None

    def _wrong_host(self, request: Request) -> Response | None:
        """The refusal of a request whose ``Host`` is no name of this service (None: it is)."""
        try:
            self._check_host(request)
        except RequestError as err:
            return self._refuse(err, time.monotonic(), {}, count=False)
        return None

    def _check_host(self, request: Request) -> None:
        """``Host`` against ``runtime.serve.hosts``: a page whose name was re-pointed here (DNS rebinding)
        is refused, whatever its ``Origin`` says."""
        if not self.hosts.allows(request.headers.get("host")):
            raise RequestError(403, "forbidden_host", "this service does not answer to that host name (its "
                                                      "operator can allow it)")

    def _cors(self, request: Request) -> dict[str, str]:
        self._check_host(request)
        origin = request.headers.get("origin")
        if origin is None or same_origin(origin, request.headers.get("host")):
            return {}  # not a browser, or the service's own page
        allowed = self.options.cors_origins
        if origin in allowed or "*" in allowed:
            return {"access-control-allow-origin": origin, "vary": "Origin",
                    "access-control-expose-headers": "x-request-id, retry-after"}
        raise RequestError(403, "forbidden_origin", "this service does not take requests from web pages of other "
                                                    "origins (its operator can allow some)")

    def _reserve(self, request: Request) -> int:
        """The bytes of the body about to be read, taken from the ingress's budget of bytes in flight
        (a body of unknown length: the most it may be); 503 when they do not fit now."""
        declared = request.headers.get("content-length")
        size = int(declared) if declared is not None and declared.isdigit() else self.limits.max_body_bytes
        if size > self.limits.max_body_bytes:
            return 0  # refused as too large (413) before anything is read
        if not self.bodies.take(size):
            raise RequestError(503, "busy", "the service holds as many request bytes as it takes at once; try "
                                            "again shortly")
        self.metrics.body_bytes.set(self.bodies.held)
        return size

    def _release(self, size: int) -> None:
        self.bodies.give(size)
        self.metrics.body_bytes.set(self.bodies.held)

    async def _body(self, request: Request) -> bytearray:
        """The body, never more than ``max_body_bytes``, never slower than ``body_timeout_s``; of a
        declared length, read into one buffer of that size (no copy grows it)."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise bad(f"request body of {declared} bytes is more than the {limit} taken", "too_large", 413)
        body = bytearray(int(declared)) if declared is not None and declared.isdigit() else bytearray()
        filled = [0]

        async def read() -> None:
            async for chunk in request.stream():
                end = filled[0] + len(chunk)
                if end > limit:
                    raise bad(f"request body is more than the {limit} bytes taken", "too_large", 413)
                body[filled[0]:end] = chunk
                filled[0] = end
            del body[filled[0]:]

        seconds = min(self.limits.body_timeout_s, self.limits.timeout_s)
        try:
            await asyncio.wait_for(read(), seconds)
        except asyncio.TimeoutError:
            raise RequestError(408, "slow_body", f"the request body did not arrive within {seconds:g} s") from None
        except ClientDisconnect:
            raise RequestError(499, "disconnected", "the client went away") from None
        return body

    async def _model(self) -> dict[str, Any]:
        if self.model is None:
            try:
                self.model = await asyncio.wait_for(self.describe.remote(), self.limits.timeout_s)
            except Exception:  # noqa: BLE001 - logged; the client is told to come back
                log.exception("no model replica answered")
                raise RequestError(503, "unavailable", "the model is not loaded yet") from None
        return self.model

    async def _messages(self, sample: SampleRequest, deadline: float, request_id: str) -> AsyncIterator[Any]:
        """The model replica's answer, message by message. If the replica is lost from outside (its
        node, or killed: ``runtime.serve.replicas``) the request runs once more on another; the
        messages already passed on must come again, the same (a seeded request gives the same
        bytes), and are then skipped; if they do not, the answer is cut off. A replica that died of
        its own while it held this request is not given another: the client gets a 500 (or, once the
        answer has started, a cut connection)."""
        passed: list[bytes] = []  # the fingerprints of the messages passed on
        for attempt in (1, 2):
            stream = self.sampler.answer.remote(sample, deadline - time.monotonic())
            try:
                received = 0
                while True:
                    try:
                        message = await asyncio.wait_for(anext(stream), max(deadline - time.monotonic(), 0.0))
                    except StopAsyncIteration:
                        if received < len(passed):
                            raise _changed(request_id, "ended early") from None
                        return
                    received += 1
                    if attempt == 1 or received > len(passed):
                        passed.append(await self._off_loop(fingerprint, message))
                        yield message
                    elif await self._off_loop(fingerprint, message) != passed[received - 1]:
                        raise _changed(request_id, f"message {received} differs")
            except asyncio.TimeoutError:
                raise timed_out(self.limits.timeout_s) from None
            except (BackPressureError, DeploymentUnavailableError):
                raise RequestError(503, "busy", "every model replica is busy and its queue full; try again "
                                                "shortly") from None
            except RayActorError as err:
                if attempt == 2:
                    raise RequestError(503, "unavailable", "the model replicas stopped while answering; try "
                                                           "again shortly") from None
                lost, cause = await self._off_loop(lost_from_outside, err, max(deadline - time.monotonic(), 0.0))
                if not lost:
                    log.error("request %s: its model replica died while answering it (%s); it is not run again",
                              request_id, cause)
                    raise
                log.warning("request %s: its model replica was lost (%s); running it on another", request_id, cause)
                self.metrics.retries.inc()
            finally:
                # Cancelling a request that never reached a replica re-raises why (back-pressure, a
                # dead replica): there is nothing to stop then.
                with contextlib.suppress(Exception):
                    stream.cancel()

    async def _stream(self, writer: JsonAnswer | ZipAnswer, head: Head, messages: AsyncIterator[Any], start: float,
                      request_id: str, reserved: int) -> AsyncIterator[bytes]:
        """The answer's bytes. A failure once it has started can only close the connection early
        (the client sees a truncated body), and is logged."""
        status, kind = 499, "disconnected"  # unless it ends otherwise
        try:
            for piece in _pieces(await self._off_loop(writer.head, head)):
                yield piece
            async for message in messages:
                if isinstance(message, Failure):
                    raise RequestError(message.status, message.kind, message.message)
                write = writer.spread if isinstance(message, Spread) else writer.sample
                for piece in _pieces(await self._off_loop(write, message)):
                    yield piece
            yield await self._off_loop(writer.end, time.monotonic() - start)
            status, kind = 200, None
        except RequestError as err:
            status, kind = err.status, err.kind
            log.warning("request %s: %s, after its answer had started: the connection is closed", request_id,
                        err.message)
            raise
        except Exception:
            status, kind = 500, "internal"
            log.exception("request %s failed after its answer had started: the connection is closed", request_id)
            raise
        finally:
            self._release(reserved)
            await messages.aclose()
            self._count(status, start, samples=head.count if status == 200 else 0, kind=kind)

    # ---------------------------------------------------------------- helpers
    def _refuse(self, err: RequestError, start: float, cors: dict[str, str], count: bool = True) -> JSONResponse:
        headers = dict(cors)
        if err.status == 503 and err.kind in RETRY_KINDS:
            headers["retry-after"] = str(self.limits.retry_after_s)
        if err.status == 401:
            headers["www-authenticate"] = 'Bearer realm="cvdvae"'
        if count:
            self._count(err.status, start, kind=err.kind)
        return JSONResponse({"error": err.message, "kind": err.kind}, status_code=err.status, headers=headers)

    def _count(self, status: int, start: float, samples: int = 0, kind: str | None = None) -> None:
        self.metrics.finished(status, time.monotonic() - start, samples, kind)
        self.metrics.in_flight.dec()

    async def _off_loop(self, work: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.workers, work, *args)
