"""The sampling page (serve/static/index.html) in headless Chromium against a running `cvdvae serve`.

The service is the real one, `python -m runtime.cli.serve` on an export of the demo model (8x8 LR in,
32x32 out), or the one at $CVDVAE_SERVE_URL. Chromium, chromedriver and selenium come from
scripts/browser.sh; without them the test skips, saying which is missing. The screenshot of the
page with its samples is kept in outputs/test-artifacts/web_page.png.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
ARTIFACT = REPO / "outputs" / "test-artifacts" / "web_page.png"
START_TIMEOUT_S = 120
WAIT_S = 30


def skip(reason: str) -> None:
    print(f"skipped: {reason}")
    pytest.skip(reason)


def browser_missing_reason() -> str | None:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    return f"{', '.join(missing)} not installed (scripts/browser.sh installs them)" if missing else None


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    """Headless Chromium; its downloads land in ``downloads``."""
    reason = browser_missing_reason()
    if reason:
        skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readyz(base: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C first (the service shuts Ray Serve down), then SIGTERM, then SIGKILL; each bounded."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def served(browser, tmp_path_factory):
    """The base URL of a running service: $CVDVAE_SERVE_URL, else `serve.cli` on the demo model,
    started here and stopped at the end. ``browser`` comes first so a missing browser skips
    before anything is exported or started."""
    if os.environ.get("CVDVAE_SERVE_URL"):
        yield os.environ["CVDVAE_SERVE_URL"].rstrip("/")
        return
    from runtime.cli.export import main as export_main

    tmp = tmp_path_factory.mktemp("served")
    model = tmp / "demo"
    assert export_main(["--demo", "--out", str(model), "--onnx-only", "--quiet", "--no-validate"]) == 0
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "runtime.cli.serve", str(model), "--port", str(port),
                                    "--host", "127.0.0.1"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while readyz(base) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                what = f"exited with {process.returncode}" if process.poll() is not None else \
                    f"not ready after {START_TIMEOUT_S} s"
                pytest.fail(f"serve.cli {what}:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        stop(process)
        # captured: pytest shows it with a failure
        print(f"serve.cli log (tail):\n{log_path.read_text(errors='replace')[-3000:]}")


def png_file(path: Path, size: int) -> Path:
    pixels = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def wait(driver, condition, what: str):
    """``condition(driver)`` once truthy, else a failure that says what the page showed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        shown = {name: driver.find_element("id", name).text for name in ("model", "error", "status")}
        pytest.fail(f"waited {WAIT_S} s for {what}; the page showed {shown}")


def set_value(driver, element_id: str, value: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(value)


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


SAMPLES_JS = """return Array.from(document.querySelectorAll('#samples .sample'), img => ({
    complete: img.complete, width: img.naturalWidth, height: img.naturalHeight, src: img.src, alt: img.alt,
    shown: img.getBoundingClientRect().width, rendering: getComputedStyle(img).imageRendering,
    download: img.closest('a') && img.closest('a').getAttribute('download')}));"""


def test_page_draws_samples_and_shows_errors(browser, served, downloads, tmp_path):
    driver = browser
    ready = readyz(served)
    assert ready and ready["lr_size"] == 8 and ready["hr_size"] == 32, ready
    driver.get(served + "/")
    model_line = wait(driver, lambda d: d.find_element("id", "model").text.startswith("Model:")
                      and d.find_element("id", "model").text, "the model line from /readyz")
    assert ready["model"] in model_line

    # An 8x8 LR face, n = 3, seed 5: three 32x32 samples, drawn large with hard pixel edges.
    driver.find_element("id", "image").send_keys(str(png_file(tmp_path / "lr.png", 8)))
    wait(driver, lambda d: d.execute_script("return document.getElementById('preview').naturalWidth") == 8,
         "the preview")
    set_value(driver, "n", "3")
    set_value(driver, "seed", "5")
    driver.find_element("id", "submit").click()
    samples = wait(driver, lambda d: (s := d.execute_script(SAMPLES_JS)) and len(s) == 3
                   and all(x["complete"] and x["width"] for x in s) and s, "three loaded .sample images")
    for k, sample in enumerate(samples):
        assert (sample["width"], sample["height"]) == (32, 32)
        assert sample["rendering"] == "pixelated" and sample["shown"] >= 4 * 32
        assert sample["download"] == f"sample_s5_{k:02d}.png"
        assert sample["alt"].startswith(f"Sample {k + 1} of 3, seed 5")
        assert sample["src"].startswith("data:image/png;base64,")
    status = driver.find_element("id", "status").text
    assert ready["model"] in status and "3 samples" in status and "seed 5" in status, status
    check_spread_and_viewer(driver, served, (tmp_path / "lr.png").read_bytes(), samples)
    assert driver.find_element("id", "submit").is_enabled()
    assert not driver.find_element("id", "error").is_displayed()
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and e["source"] == "javascript"]
    assert not errors, errors
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(tmp_path / "web_page.png"))
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "web_page.png", ARTIFACT)

    # "Download all (zip)" asks again with Accept: application/zip; the seed fixes the samples,
    # so the zip holds the images shown.
    driver.find_element("id", "download-all").click()
    zip_path = downloads / "samples_s5.zip"
    wait(driver, lambda d: zip_path.exists() and zipfile.is_zipfile(zip_path), "samples_s5.zip")
    with zipfile.ZipFile(zip_path) as archive:
        pngs = sorted(name for name in archive.namelist() if name.endswith(".png"))
        assert pngs == [f"sample_s5_{k:02d}.png" for k in range(3)] + ["sample_s5_mean.png", "sample_s5_std.png"]
        for k, sample in enumerate(samples):
            shown = decode_png(base64.b64decode(sample["src"].split(",", 1)[1]))
            zipped = decode_png(archive.read(f"sample_s5_{k:02d}.png"))
            assert zipped.shape == shown.shape == (32, 32, 3)
            assert np.abs(zipped - shown).max() <= 2, f"sample {k}: the zip differs from the page"

    # A 9x9 image: the server's error line is shown and the button is free again. The submit
    # handler disables the button before its first await, so it reads disabled right after.
    driver.find_element("id", "image").send_keys(str(png_file(tmp_path / "wrong.png", 9)))
    disabled_while_running = driver.execute_script(
        "document.getElementById('sample-form').requestSubmit();"
        "return document.getElementById('submit').disabled;")
    assert disabled_while_running
    error = wait(driver, lambda d: d.find_element("id", "error").is_displayed()
                 and d.find_element("id", "error").text, "the error line")
    assert "9x9" in error, error
    assert driver.find_element("id", "submit").is_enabled()
    assert driver.find_element("id", "status").text == ""


VIEWER_JS = """const img = document.getElementById('viewer-image');
    return {shown: !document.getElementById('viewer').hidden, src: img.src, width: img.getBoundingClientRect().width,
            caption: document.getElementById('viewer-caption').textContent,
            download: document.getElementById('viewer-download').getAttribute('download')};"""


def check_spread_and_viewer(driver, served: str, image: bytes, samples: list[dict]) -> None:
    """The mean and the std map beside the samples are the API's (``summary: true``) for the same
    face and seed; a click on a sample shows it full size, and the arrows and the slider step
    through the samples, then the mean and the std map."""
    spread = driver.execute_script(SAMPLES_JS.replace("#samples .sample", "#spread .sample"))
    assert [s["download"] for s in spread] == ["sample_s5_mean.png", "sample_s5_std.png"]
    assert driver.find_element("id", "spread-box").is_displayed()
    api = api_samples(served, image, 5, 3, summary=True)
    for shown, what in zip(spread, ("mean", "std")):
        assert shown["src"].split(",", 1)[1] == api[what], what
    assert spread[0]["width"] == spread[1]["width"] == 32 and spread[1]["height"] > 32  # the std map's scale bar
    viewer = driver.execute_script(VIEWER_JS)
    assert viewer["shown"] and viewer["caption"].startswith("1 of 5") and viewer["src"] == samples[0]["src"]
    driver.find_elements("css selector", "#samples .sample")[1].click()
    viewer = wait(driver, lambda d: (v := d.execute_script(VIEWER_JS))["caption"].startswith("2 of 5") and v,
                  "the clicked sample in the viewer")
    assert viewer["src"] == samples[1]["src"] and viewer["download"] == "sample_s5_01.png"
    assert viewer["width"] >= 8 * 32, "full size, pixels enlarged"
    driver.find_element("id", "viewer-next").click()
    assert driver.execute_script(VIEWER_JS)["src"] == samples[2]["src"]
    driver.execute_script("const s = document.getElementById('viewer-slider'); s.value = 5;"
                          "s.dispatchEvent(new Event('input'));")
    viewer = driver.execute_script(VIEWER_JS)
    assert viewer["caption"].startswith("5 of 5") and viewer["download"] == "sample_s5_std.png"
    assert not driver.find_element("id", "viewer-next").is_enabled()


def api_samples(base: str, image: bytes, seed: int, n: int, **fields) -> dict:
    """The JSON API's answer, the seed sent as an exact JSON integer: the page must match it."""
    body = json.dumps({"image": base64.b64encode(image).decode(), "seed": seed, "n": n, **fields}).encode()
    request = urllib.request.Request(f"{base}/v1/samples", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def shown_pixels(sample: dict) -> np.ndarray:
    return decode_png(base64.b64decode(sample["src"].split(",", 1)[1]))


def test_a_seed_above_2_to_the_53_is_sent_and_shown_exactly(browser, served, tmp_path):
    """2^53 + 1 is where a JavaScript number would round (to 2^53): the page must send the digits,
    so its samples are the API's for 2^53 + 1, not for 2^53, and it names that seed."""
    seed = 2**53 + 1
    face = png_file(tmp_path / "face.png", 8)
    driver = browser
    driver.get(served + "/")
    wait(driver, lambda d: d.find_element("id", "model").text.startswith("Model:"), "the model line")
    driver.find_element("id", "image").send_keys(str(face))
    set_value(driver, "n", "2")
    set_value(driver, "seed", str(seed))
    driver.find_element("id", "submit").click()
    samples = wait(driver, lambda d: (s := d.execute_script(SAMPLES_JS)) and len(s) == 2
                   and all(x["complete"] and x["width"] for x in s) and s, "two loaded samples")
    exact = api_samples(served, face.read_bytes(), seed, 2)["samples"]
    rounded = api_samples(served, face.read_bytes(), 2**53, 2)["samples"]
    assert exact != rounded
    for k, sample in enumerate(samples):
        assert np.array_equal(shown_pixels(sample), decode_png(base64.b64decode(exact[k]))), k
        assert sample["download"] == f"sample_s{seed}_{k:02d}.png"
    assert f"seed {seed}." in driver.find_element("id", "status").text

    # "Random seed" draws 64 bits: over 20 draws, some above 2^53 (all below would be a 1 in
    # 2^220 chance), each a decimal string the page accepts.
    drawn = [int(driver.execute_script("document.getElementById('random-seed').click();"
                                       "return document.getElementById('seed').value;")) for _ in range(20)]
    assert all(0 <= s < 2**64 for s in drawn) and max(drawn) > 2**53, drawn
    # 2^64 is one past the last seed: refused by the page, which says so and sends nothing.
    set_value(driver, "seed", str(2**64))
    driver.find_element("id", "submit").click()
    error = wait(driver, lambda d: d.find_element("id", "error").is_displayed()
                 and d.find_element("id", "error").text, "the seed error")
    assert str(2**64) in error and str(2**64 - 1) in error, error


def test_a_photo_is_sent_with_faces_and_each_face_is_boxed_on_it(browser, served, tmp_path):
    """Photo mode sends ``faces``: the page shows the photo with a box over the astronaut's face
    (her eyes at about (205, 100) and (245, 100), her mouth at (225, 145), read off the image by
    hand), the whole-photo samples and the face's samples, equal to the API's for the same seed."""
    from cvdvae.hub.home import cvdvae_home

    if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
        skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")
    import skimage

    photo = tmp_path / "astronaut.png"
    shutil.copyfile(Path(skimage.__file__).parent / "data" / "astronaut.png", photo)
    seed = 2**64 - 59
    driver = browser
    driver.get(served + "/")
    wait(driver, lambda d: d.find_element("id", "model").text.startswith("Model:"), "the model line")
    driver.find_element("id", "image").send_keys(str(photo))
    driver.find_element("id", "faces").click()
    assert not driver.find_element("id", "from_hr").is_enabled()
    assert not driver.find_element("id", "consistent").is_enabled()
    set_value(driver, "n", "2")
    set_value(driver, "seed", str(seed))
    driver.find_element("id", "submit").click()
    samples = wait(driver, lambda d: (s := d.execute_script(SAMPLES_JS)) and len(s) == 2
                   and all(x["complete"] and x["width"] for x in s) and s, "two whole-photo samples")
    answer = api_samples(served, photo.read_bytes(), seed, 2, faces=True)
    assert len(answer["faces"]) == 1
    for k, sample in enumerate(samples):
        assert (sample["width"], sample["height"]) == (2048, 2048)
        assert sample["download"] == f"photo_s{seed}_{k:02d}.png"
        assert np.array_equal(shown_pixels(sample), decode_png(base64.b64decode(answer["samples"][k]))), k
    faces = driver.execute_script("""return Array.from(document.querySelectorAll('.face-row .sample'),
        img => ({src: img.src, download: img.closest('a').getAttribute('download')}));""")
    assert [f["download"] for f in faces] == [f"face0_s{seed}_{k:02d}.png" for k in range(2)] + \
        [f"face0_s{seed}_mean.png", f"face0_s{seed}_std.png"]  # "Mean and spread" is on by default
    for k, face in enumerate(faces[:2]):
        assert np.array_equal(shown_pixels(face), decode_png(base64.b64decode(answer["faces"][0]["samples"][k])))
    spread = driver.execute_script(SAMPLES_JS.replace("#samples .sample", "#spread .sample"))
    assert [s["download"] for s in spread] == [f"photo_s{seed}_mean.png", f"photo_s{seed}_std.png"]
    assert spread[0]["width"] == spread[1]["width"] == 2048 and spread[1]["height"] > 2048

    # The box, read back from where the browser drew it, in photo pixels (edges).
    drawn = driver.execute_script("""const photo = document.getElementById('photo').getBoundingClientRect();
        return Array.from(document.querySelectorAll('.face-box'), box => {
          const r = box.getBoundingClientRect(), s = 512 / photo.width;
          return [(r.left - photo.left) * s, (r.top - photo.top) * s, (r.right - photo.left) * s,
                  (r.bottom - photo.top) * s];});""")
    assert len(drawn) == 1
    x0, y0, x1, y1 = drawn[0]
    for x, y in ((205, 100), (245, 100), (225, 145)):
        assert x0 < x < x1 and y0 < y < y1, (drawn, (x, y))
    assert 30 < x1 - x0 < 200 and 30 < y1 - y0 < 200, drawn  # a face, not the whole photo
    box = np.array(answer["faces"][0]["box"]) + 0.5  # pixel centres -> edges
    assert np.abs(np.array(drawn[0]) - box).max() < 2.5, (drawn, box)  # a CSS pixel of the shrunk photo
    status = driver.find_element("id", "status").text
    assert f"seed {seed}." in status and "2 photo samples (1 face)" in status, status
    driver.save_screenshot(str(tmp_path / "photo.png"))
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)  # this test may run first, on its own worker
    shutil.copyfile(tmp_path / "photo.png", ARTIFACT.with_name("web_page_photo.png"))


def test_a_clicked_sample_is_varied_from_the_level_chosen(browser, served, tmp_path):
    """The example face fills the image field; then with an uploaded face: click sample 3, pick 16 px on
    the level slider, "Vary the details of this one": the samples the API gives for like=2, vary_from=16;
    sample 3 is the one clicked, the others are new."""
    driver = browser
    driver.get(served + "/")
    wait(driver, lambda d: d.find_element("id", "model").text.startswith("Model:"), "the model line")
    driver.find_element("id", "example").click()  # a first visitor's face: drawn at the model's input size
    wait(driver, lambda d: d.execute_script("return document.getElementById('preview').naturalWidth") == 8
         and d.find_element("id", "image").get_attribute("value").endswith("example.png"), "the example face")
    face = png_file(tmp_path / "lr.png", 8)
    driver.find_element("id", "image").send_keys(str(face))
    set_value(driver, "n", "4")
    set_value(driver, "seed", "6")
    driver.find_element("id", "submit").click()
    before = wait(driver, lambda d: (s := d.execute_script(SAMPLES_JS)) and len(s) == 4
                  and all(x["complete"] and x["width"] for x in s) and s, "four samples")
    driver.find_elements("css selector", "#samples figure")[2].click()
    wait(driver, lambda d: d.find_element("id", "vary-box").is_displayed(), "the vary controls in the viewer")
    levels = readyz(served)["levels"]
    driver.execute_script("const s = document.getElementById('vary-from'); s.value = arguments[0]; "
                          "s.dispatchEvent(new Event('input'));", levels.index(16))
    assert driver.find_element("id", "vary-level").text == "16 px"
    driver.find_element("id", "vary-this").click()
    after = wait(driver, lambda d: (s := d.execute_script(SAMPLES_JS)) and len(s) == 4 and s[0]["src"] !=
                 before[0]["src"] and all(x["complete"] for x in s) and s, "the varied samples")
    body = json.dumps({"image": base64.b64encode(face.read_bytes()).decode(), "n": 4, "seed": 6, "like": 2,
                       "vary_from": 16}).encode()
    request = urllib.request.Request(served + "/v1/samples", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        api = json.load(response)["samples"]
    assert [x["src"].split(",", 1)[1] for x in after] == api
    assert after[2]["src"] == before[2]["src"] and after[1]["src"] != before[1]["src"]
    assert driver.find_element("id", "viewer-caption").text.startswith("3 of")
    assert not driver.find_element("id", "error").is_displayed()
