"""One request's cost at the ingress, without Ray: an 8 MB body read from the wire in pieces and
parsed (JSON with the image in base64, and a multipart upload) peaks, as ``tracemalloc`` counts
it, at no more than 2.5 times the body; parsing it on a worker thread leaves the interpreter
(the GIL) to the event loop's thread; the bytes in flight are budgeted, and given back as soon as
a client goes away mid-answer."""

import asyncio
import base64
import json
import threading
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -e '.[serve]')")

from starlette.requests import Request  # noqa: E402

from runtime.serve.ingress import BodyBudget, ClosingStreamingResponse, Ingress  # noqa: E402
from runtime.serve.options import Limits  # noqa: E402
from runtime.serve.requests import parse_request  # noqa: E402

PIECE = 64 * 1024


def wire_request(body: bytes, content_type: str) -> Request:
    """A Starlette request whose body arrives in 64 kB pieces, as the server hands it on."""
    view = memoryview(body)
    pieces = iter(range(0, len(body), PIECE))

    async def receive():
        start = next(pieces, None)
        if start is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": bytes(view[start:start + PIECE]), "more_body": True}

    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    return Request({"type": "http", "method": "POST", "path": "/v1/samples", "headers": headers}, receive)


def peak_of_one_request(body: bytes, content_type: str) -> tuple[int, int]:
    """(tracemalloc's peak while the request is read and parsed, the image's size), measured inside
    the event loop (what ``asyncio.run`` allocates to start and stop one is not the request's)."""
    limits = Limits()
    ingress = SimpleNamespace(limits=limits)

    async def read_and_parse():
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        data = await Ingress.func_or_class._body(ingress, wire_request(body, content_type))
        sample = parse_request(content_type, data, True, limits)
        return tracemalloc.get_traced_memory()[1] - before, len(sample.image)

    tracemalloc.start()
    try:
        return asyncio.run(read_and_parse())
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["json", "multipart"])
def test_one_8_mb_request_peaks_under_2_5_times_its_body(kind):
    image = np.random.default_rng(0).bytes(6_000_000 if kind == "json" else 8_000_000)
    if kind == "json":
        body, content_type = json.dumps({"image": base64.b64encode(image).decode(), "n": 2}).encode(), \
            "application/json"
    else:
        body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + image
                + b"\r\n--b--\r\n")
        content_type = "multipart/form-data; boundary=b"
    assert 7_900_000 < len(body) <= Limits().max_body_bytes
    peak, image_bytes = peak_of_one_request(body, content_type)
    assert image_bytes == len(image)
    assert peak <= 2.5 * len(body), f"{peak / len(body):.2f} x the body"


def test_the_bytes_in_flight_budget():
    budget = BodyBudget(100)
    assert budget.take(60) and not budget.take(41) and budget.take(40)
    budget.give(60)
    assert budget.held == 40 and budget.take(60) and budget.held == 100


def test_parsing_an_8_mb_json_body_on_a_thread_leaves_the_gil_to_the_loop():
    """The ingress parses on a worker thread; a check that holds the GIL (a regular expression over
    the body once did, for seconds) would stall its event loop all that time. Here the main thread's
    5 ms sleeps overrun by no more than 0.2 s while a thread parses."""
    body = json.dumps({"image": base64.b64encode(np.random.default_rng(0).bytes(6_000_000)).decode()}).encode()
    worker = threading.Thread(target=parse_request, args=("application/json", bytearray(body), True, Limits()))
    gaps, last = [], time.perf_counter()
    worker.start()
    while worker.is_alive():
        time.sleep(0.005)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    assert max(gaps) < 0.2, f"the loop's thread was held {max(gaps):.2f} s"


def answer_cut_short(how: str) -> list[str]:
    """What an answer's body did when its client stopped reading after the first piece and went
    away: ``"disconnect"``, the server says so; ``"cancel"``, the task serving it is cancelled (as
    Ray's proxy does). The test keeps its own reference to the body, as a reference cycle would
    until the garbage collector came: only a response that closes its body runs its ``finally``."""
    events: list[str] = []
    first_sent = asyncio.Event()

    async def body():
        try:
            for piece in (b"head", b"photo", b"end"):
                yield piece
                events.append(f"after {piece.decode()}")
        finally:
            events.append("released")

    async def receive():
        if how == "cancel":
            await asyncio.Event().wait()  # the server never says: only the cancel ends the response
        await first_sent.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            first_sent.set()
            await asyncio.Event().wait()  # a client that reads no more

    async def serve_it():
        stream = body()
        response = ClosingStreamingResponse(stream, media_type="application/json")
        task = asyncio.ensure_future(response({"type": "http"}, receive, send))
        await first_sent.wait()
        if how == "cancel":
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        events.append("response ended")
        del stream

    asyncio.run(serve_it())
    return events


@pytest.mark.parametrize("how", ["disconnect", "cancel"])
def test_an_answer_cut_short_gives_its_request_back_when_its_response_ends(how):
    events = answer_cut_short(how)
    assert "released" in events and events.index("released") < events.index("response ended"), events
    assert "after photo" not in events, events


@pytest.mark.parametrize("fields, status, words", [
    ({"faces": True, "format": "tiff"}, 400, 'format: "tiff" is not one of png, jpeg, webp'),
    ({"faces": True, "format": "png", "quality": 90}, 400, "PNG is lossless"),
    ({"faces": True, "format": "jpeg", "quality": 101}, 400, "quality: 101 is not an integer in 1..100"),
    ({"format": "jpeg"}, 400, "they need faces: true"),
])
def test_a_photo_format_the_request_cannot_have_is_a_400(fields, status, words):
    from runtime.serve.requests import RequestError

    body = json.dumps({"image": base64.b64encode(b"any").decode(), **fields}).encode()
    with pytest.raises(RequestError) as caught:
        parse_request("application/json", body, True, Limits())
    assert caught.value.status == status and words in str(caught.value), caught.value


def test_a_photo_format_the_request_names_is_the_one_it_gets():
    from runtime.images.photo_format import PhotoFormat

    body = json.dumps({"image": base64.b64encode(b"any").decode(), "faces": True, "format": "webp", "quality": 80})
    assert parse_request("application/json", body.encode(), True, Limits()).photo_format == PhotoFormat("webp", 80)
    body = json.dumps({"image": base64.b64encode(b"any").decode(), "faces": True})
    assert parse_request("application/json", body.encode(), True, Limits()).photo_format == PhotoFormat()
