"""``cvdvae run --faces``: whole photos on the demo model, through the real detector (those tests
skip without ``cvdvae fetch mtcnn``; the rest run without it)."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, copy_export
from PIL import Image

from cvdvae.hub.home import cvdvae_home
from runtime.cli.run import main as run_main
from runtime.faces.align import FaceSquare, crop
from runtime.faces.detector import DetectedFace
from runtime.faces.photos import Composites, Face, align_face, background

pytest.importorskip("onnxruntime")
skimage = pytest.importorskip("skimage")
DATA = Path(skimage.__file__).parent / "data"
ASTRONAUT = DATA / "astronaut.png"


@pytest.fixture
def detector_fetched():
    if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
        pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_export):
    return copy_export(demo_export, tmp_path_factory.mktemp("faces") / "engine")


def run(demo, *args):
    return run_main([str(demo), *map(str, args), "--quiet"])


def run_json(demo, *args):
    r = subprocess.run([sys.executable, "-m", "runtime.cli.run", str(demo), *map(str, args), "--json"],
                       capture_output=True, text=True, cwd=REPO)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def read(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def astronaut_run(demo, tmp_path_factory):
    if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
        pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")
    out = tmp_path_factory.mktemp("astronaut")
    code, report, err = run_json(demo, "--input", ASTRONAUT, "--faces", "--n", "3", "--out", out)
    assert code == 0, err
    return out, report


def test_a_photo_gives_whole_photos_faces_and_a_grid(astronaut_run):
    out, report = astronaut_run
    (photo,) = report["photos"]
    assert len(photo["faces"]) == 1 and photo["faces"][0]["mode"] == "hr"  # a 173 px face > the demo's 32
    assert sorted(pngs(out)) == ["astronaut_face0_s0_00.png", "astronaut_face0_s0_01.png", "astronaut_face0_s0_02.png",
                                 "astronaut_face0_s0_grid.png", "astronaut_s0_00.png", "astronaut_s0_01.png",
                                 "astronaut_s0_02.png"]
    assert read(out / "astronaut_s0_00.png").shape == (2048, 2048, 3)  # x4, the demo model's factor
    assert read(out / "astronaut_face0_s0_00.png").shape == (32, 32, 3)
    assert report["samples"] == 3 and photo["timings_s"]["detect"] > 0


def test_outside_the_face_the_photo_is_the_lanczos_upscale(astronaut_run):
    """Every output pixel farther than 1/16 of the side inside the face's square (where the mask
    is 0) is the photo upscaled by PIL's Lanczos, byte for byte; well inside, the samples differ
    from it. The square is the recorded centre and side turned by the recorded angle; output
    pixel X is photo point (X + 0.5) / 4 - 0.5 (written out here)."""
    out, report = astronaut_run
    square = report["photos"][0]["faces"][0]["square"]
    half, angle = square["side"] / 2, np.radians(square["angle_deg"])
    background = np.asarray(Image.open(ASTRONAUT).convert("RGB").resize((2048, 2048), Image.LANCZOS))
    ys, xs = np.mgrid[:2048, :2048].astype(np.float64)
    px, py = (xs + 0.5) / 4 - 0.5 - square["centre"][0], (ys + 0.5) / 4 - 0.5 - square["centre"][1]
    u = (px * np.cos(angle) + py * np.sin(angle)) / half
    v = (-px * np.sin(angle) + py * np.cos(angle)) / half
    outside = np.maximum(np.abs(u), np.abs(v)) > 7 / 8 + 0.01
    centre = np.maximum(np.abs(u), np.abs(v)) < 0.5
    for k in range(3):
        photo = read(out / f"astronaut_s0_{k:02d}.png")
        assert (photo[outside] == background[outside]).all()
        assert np.abs(photo[centre].astype(int) - background[centre]).mean() > 10


def test_photo_sample_k_is_made_of_face_sample_k():
    """Two faces whose sample k is a flat colour (face 0: 10 + 40 k, face 1: 200 - 40 k): at each
    face's centre, whole photo k shows that face's sample k, for every k. The centres in the x2
    output are worked out here: (30, 40) -> (2 * 30.5 - 0.5, 2 * 40.5 - 0.5) = (60.5, 80.5)."""
    photo = np.zeros((100, 160, 3), np.uint8)
    faces = []
    for centre, colours in (((30.0, 40.0), [10, 50, 90]), ((120.0, 50.0), [200, 160, 120])):
        square = FaceSquare(np.array(centre), np.array([15.0, 0.0]), np.array([0.0, 15.0]))
        samples = np.stack([np.full((16, 16, 3), c, np.uint8) for c in colours])
        faces.append(Face(DetectedFace(np.zeros(4), 1.0, np.zeros((5, 2))), square, "lr", np.zeros((3, 4, 4)), None,
                          samples))
    for k, canvas in enumerate(Composites(photo.shape[:2], background(photo, 2.0, "photo"), faces, "photo")):
        assert canvas[80, 60].tolist() == [10 + 40 * k] * 3 and canvas[80, 61].tolist() == [10 + 40 * k] * 3
        assert canvas[100, 240].tolist() == [200 - 40 * k] * 3
        assert canvas[5, 5].tolist() == [0, 0, 0]


def test_same_seed_same_photos_and_n_is_a_prefix(demo, astronaut_run, tmp_path):
    out, _ = astronaut_run
    assert run(demo, "--input", ASTRONAUT, "--faces", "--n", "2", "--out", tmp_path) == 0
    got = pngs(tmp_path)
    assert got["astronaut_s0_00.png"] == pngs(out)["astronaut_s0_00.png"]
    assert got["astronaut_face0_s0_01.png"] == pngs(out)["astronaut_face0_s0_01.png"]


def test_two_faces_in_one_photo(demo, tmp_path, detector_fetched):
    photo = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    Image.fromarray(np.concatenate([photo, photo[:, ::-1]], axis=1)).save(tmp_path / "two.png")
    code, report, err = run_json(demo, "--input", tmp_path / "two.png", "--faces", "--n", "1", "--out",
                                 tmp_path / "o", "--upscale", "1")
    assert code == 0, err
    faces = report["photos"][0]["faces"]
    assert len(faces) == 2 and sorted(round(f["square"]["centre"][0] / 100) for f in faces) == [2, 8]
    assert read(tmp_path / "o" / "two_s0_00.png").shape == (512, 1024, 3)
    assert (tmp_path / "o" / "two_face1_s0_00.png").is_file()


def test_a_photo_without_a_face_is_one_line_and_the_others_go_on(demo, tmp_path, detector_fetched):
    Image.open(DATA / "brick.png").convert("RGB").save(tmp_path / "wall.png")
    r = subprocess.run([sys.executable, "-m", "runtime.cli.run", str(demo), "--input", str(tmp_path / "wall.png"),
                        str(ASTRONAUT), "--faces", "--n", "1", "--out", str(tmp_path / "o"), "--quiet"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"cvdvae-run: error: {tmp_path / 'wall.png'}: no face found (faces of at least "
                                     "20 px scoring at least 0.9 are searched for; --min-face and --min-score set "
                                     "them)"]
    assert sorted(p.name for p in (tmp_path / "o").iterdir())[0].startswith("astronaut_")
    assert not list((tmp_path / "o").glob("wall*"))


def test_transparent_faces_and_no_paste(demo, tmp_path, detector_fetched):
    assert run(demo, "--input", ASTRONAUT, "--faces", "--n", "1", "--face-only", "--out", tmp_path / "t") == 0
    rgba = read(tmp_path / "t" / "astronaut_s0_00.png")
    assert rgba.shape == (2048, 2048, 4) and rgba[0, 0, 3] == 0 and rgba[420, 900, 3] == 255
    assert run(demo, "--input", ASTRONAUT, "--faces", "--n", "1", "--no-paste", "--out", tmp_path / "n") == 0
    assert sorted(pngs(tmp_path / "n")) == ["astronaut_face0_s0_00.png", "astronaut_face0_s0_grid.png"]


def test_existing_outputs_are_kept(demo, tmp_path, detector_fetched):
    assert run(demo, "--input", ASTRONAUT, "--faces", "--n", "1", "--no-paste", "--out", tmp_path) == 0
    before = pngs(tmp_path)
    assert run(demo, "--input", ASTRONAUT, "--faces", "--n", "1", "--no-paste", "--out", tmp_path, "--seed", "0") == 2
    assert pngs(tmp_path) == before


def test_exif_orientation_is_honoured(demo, tmp_path, detector_fetched):
    """A camera that stored the portrait on its side and said so in EXIF (orientation 6: turn
    90 degrees clockwise to view) gives the same upright photo and face."""
    upright = Image.open(ASTRONAUT).convert("RGB").crop((0, 0, 512, 400))
    stored = upright.transpose(Image.ROTATE_90)  # counter-clockwise: the viewer turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "side.jpg", quality=95, exif=exif.tobytes())
    code, report, err = run_json(demo, "--input", tmp_path / "side.jpg", "--faces", "--n", "1", "--no-paste",
                                 "--out", tmp_path / "o")
    assert code == 0, err
    photo = report["photos"][0]
    assert photo["size"] == [512, 400] and len(photo["faces"]) == 1
    assert np.allclose(photo["faces"][0]["square"]["centre"], [225, 105], atol=6)


def test_the_photo_path_needs_no_torch(demo, tmp_path, detector_fetched):
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import runtime.cli.run
assert runtime.cli.run.main([{str(demo)!r}, "--input", {str(ASTRONAUT)!r}, "--faces", "--n", "1", "--upscale", "1",
                         "--out", {str(tmp_path)!r}, "--quiet"]) == 0
banned = [m for m in sys.modules if m.split(".")[0] == "export" or m in ("cvdvae.model", "cvdvae.weights")]
assert not banned, banned
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert (tmp_path / "astronaut_s0_00.png").is_file()


@pytest.mark.parametrize("flags, hint", [
    (["--max-faces", "2"], "--max-faces"),
    (["--faces", "--face-only", "--no-paste"], "--face-only"),
    (["--faces", "--from-hr"], "--from-hr"),
    (["--faces", "--upscale", "0"], "--upscale"),
    (["--faces", "--min-face", "5"], "--min-face"),
    (["--faces", "--min-score", "0.5"], "--min-score"),
    (["--min-score", "0.95"], "--min-score"),
])
def test_photo_flags_are_checked(demo, tmp_path, flags, hint):
    r = subprocess.run([sys.executable, "-m", "runtime.cli.run", str(demo), "--input", str(ASTRONAUT), *flags, "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and hint in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_small_faces_go_in_as_lr_crops_large_ones_as_degraded_hr_crops():
    photo = np.asarray(Image.open(ASTRONAUT).convert("RGB"))

    def face(scale):
        points = np.array([[203, 100], [247, 103], [224, 128], [200, 139], [244, 141]], float) * scale
        return DetectedFace(np.zeros(4), 1.0, points)

    small = align_face(photo, face(0.15), lr_size=8, hr_size=32)  # side 26 px < 32: a real LR observation
    assert small.mode == "lr" and small.hr is None
    np.testing.assert_array_equal(small.lr, crop(photo, FaceSquare.from_landmarks(face(0.15).landmarks), 8)
                                  .transpose(2, 0, 1))
    large = align_face(photo, face(1.0), lr_size=8, hr_size=32)
    assert large.mode == "hr" and large.hr.shape == (32, 32, 3) and large.lr.shape == (3, 8, 8)
    # The LR input is the HR crop's bicubic x4 reduction: close to its 4x4 block means.
    blocks = large.hr.transpose(2, 0, 1).reshape(3, 8, 4, 8, 4).mean(axis=(2, 4))
    assert np.abs(large.lr - blocks).mean() < 6


def test_without_the_detector_the_error_names_the_fetch_command(demo, tmp_path):
    r = subprocess.run([sys.executable, "-m", "runtime.cli.run", str(demo), "--input", str(ASTRONAUT), "--faces",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO,
                       env={**__import__("os").environ, "CVDVAE_HOME": str(tmp_path / "empty")})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "`cvdvae fetch mtcnn`" in r.stderr and not (tmp_path / "o").exists()


def test_an_output_photo_too_large_to_hold_is_refused_up_front(demo, tmp_path):
    Image.new("RGB", (6000, 5000)).save(tmp_path / "big.png")  # x4: 480 megapixels
    r = subprocess.run([sys.executable, "-m", "runtime.cli.run", str(demo), "--input", str(tmp_path / "big.png"),
                        "--faces", "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip().endswith("480 megapixels, more than the 400 written; lower "
                                                           "--upscale or use --no-paste"), r.stderr
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["failures_s0.txt"]  # the run's list: nothing else
    assert (tmp_path / "o" / "failures_s0.txt").read_text() == r.stderr.strip().split(": error: ", 1)[1] + "\n"


def test_a_photo_failing_while_written_leaves_nothing_and_the_others_go_on(demo, tmp_path, detector_fetched,
                                                                          monkeypatch, capsys):
    """The disk fills while ``a.png``'s second whole photo is written: one line naming it, none of
    its files left (its face samples and first photo were written), ``b.png`` done, exit 1."""
    from runtime.images import photo_files

    for name in ("a", "b"):
        Image.open(ASTRONAUT).convert("RGB").save(tmp_path / f"{name}.png")
    real = photo_files._write

    def disk_fills(path, pieces):
        if path.name == "a_s0_01.png":
            raise OSError(28, "No space left on device")
        real(path, pieces)

    monkeypatch.setattr(photo_files, "_write", disk_fills)
    code = run_main([str(demo), "--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--faces", "--n", "2",
                     "--upscale", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"cvdvae-run: error: {tmp_path / 'a.png'}: failed while being worked on (OSError: [Errno 28] No "
                     "space left on device); nothing was kept for this photo"], lines
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "b_face0_s0_00.png", "b_face0_s0_01.png", "b_face0_s0_grid.png", "b_s0_00.png", "b_s0_01.png",
        "failures_s0.txt"]


@pytest.mark.parametrize("kind", ["L", "LA", "RGBA", "Display P3"])
def test_a_photo_keeps_its_kind_of_colour(kind, demo, detector_fetched, tmp_path):
    """The astronaut as a grey, grey + alpha, RGBA and Display-P3-tagged PNG, at x1 (so outside the
    face every output pixel has an oracle): grey stays grey (1 channel, the input's levels), the
    alpha is the input's byte for byte, a P3 photo's pixels are littlecms' P3 -> sRGB conversion
    (``ImageCms``, run here) and the file says sRGB."""
    from icc_profiles import display_p3
    from PIL import ImageCms

    from runtime.faces.photos import write_photo
    from runtime.pipeline import Pipeline

    rgb = Image.open(ASTRONAUT).convert("RGB")
    alpha = Image.fromarray(np.tile(np.linspace(40, 255, 512).astype(np.uint8)[:, None], (1, 512)))
    image = {"L": rgb.convert("L"), "LA": Image.merge("LA", (rgb.convert("L"), alpha)),
             "RGBA": Image.merge("RGBA", (*rgb.split(), alpha)), "Display P3": rgb}[kind]
    extra = {"icc_profile": display_p3()} if kind == "Display P3" else {}
    image.save(tmp_path / "in.png", **extra)
    result = Pipeline.from_pretrained(demo).faces(tmp_path / "in.png", n=1, seed=0, upscale=1)
    (path,) = [p for p in write_photo(result, tmp_path, "out", False, None) if p.name == "out_s0_00.png"]
    written = Image.open(path)
    assert written.mode == {"L": "L", "LA": "LA", "RGBA": "RGBA", "Display P3": "RGB"}[kind]
    assert "srgb" in written.info  # the sRGB chunk
    got = np.asarray(written)
    square = result.faces[0].square
    ys, xs = np.mgrid[:512, :512].astype(np.float64)
    half2 = square.x @ square.x
    u = ((xs - square.c[0]) * square.x[0] + (ys - square.c[1]) * square.x[1]) / half2
    v = ((xs - square.c[0]) * square.y[0] + (ys - square.c[1]) * square.y[1]) / half2
    outside = np.maximum(np.abs(u), np.abs(v)) > 7 / 8 + 0.01
    if kind == "Display P3":
        expected = np.asarray(ImageCms.profileToProfile(rgb, ImageCms.ImageCmsProfile(__import__("io").BytesIO(
            display_p3())), ImageCms.createProfile("sRGB"), outputMode="RGB"))
        assert np.abs(np.asarray(rgb, int) - expected).max() > 20  # the conversion moves colours
    elif kind in ("RGBA", "LA"):  # the colour over white where transparent (what the faces were read over)
        white = Image.alpha_composite(Image.new("RGBA", rgb.size, (255, 255, 255, 255)), image.convert("RGBA"))
        colour = np.asarray(white.convert("RGB") if kind == "RGBA" else white.convert("L"))
        expected = np.dstack([colour, np.asarray(alpha)])
    else:
        expected = np.asarray(image)
    assert (got[outside] == expected[outside]).all()
    if kind in ("L", "LA"):
        assert got.ndim == (2 if kind == "L" else 3)


def test_a_jpeg_photo_gives_upright_srgb_jpegs_and_png_or_webp_on_request(demo, detector_fetched, tmp_path):
    """The astronaut stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view):
    by default its whole photos are JPEGs, upright (no orientation left to apply) and tagged sRGB,
    and OpenCV (libjpeg, applying any EXIF orientation) reads what ``Pipeline.faces`` made;
    ``--format webp`` and ``png`` give those instead, the face samples staying PNG."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the independent decoder (the dev extra installs it)")
    from PIL import ImageCms

    from runtime.pipeline import Pipeline

    upright = Image.open(ASTRONAUT).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "in.jpg", quality=95, exif=exif)
    expected = Pipeline.from_pretrained(demo).faces(tmp_path / "in.jpg", n=1, seed=0, upscale=1).photos[0]
    assert expected.shape == (512, 512, 3)
    for flags, name in (((), "out_s0_00.jpg"), (("--format", "webp", "--quality", "95"), "out_s0_00.webp"),
                        (("--format", "png"), "out_s0_00.png")):
        out = tmp_path / name.split(".")[1]
        assert run(demo, "--input", tmp_path / "in.jpg", "--faces", "--n", "1", "--upscale", "1", "--no-grid",
                   "--out", out, *flags) == 0
        assert sorted(p.name for p in out.iterdir() if p.name.startswith("in_s0")) == ["in_s0_00" + name[9:]]
        assert [p.name for p in out.glob("in_face0_*")] == ["in_face0_s0_00.png"]
        path = out / ("in_s0_00" + name[9:])
        decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
        error = np.abs(decoded.astype(int) - expected)
        assert error.mean() < (0.01 if name.endswith("png") else 2.0) and decoded.shape == expected.shape, name
        written = Image.open(path)
        assert written.getexif().get(0x0112, 1) == 1
        if name.endswith("png"):
            assert "srgb" in written.info
        else:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(written.info["icc_profile"]))
            assert "srgb" in ImageCms.getProfileDescription(profile).lower()


def test_the_next_photo_is_found_while_this_one_is_sampled(monkeypatch, tmp_path):
    """A recording fake pipeline: sampling photo k waits (deadline 10 s) until the detection of
    photo k + 1 has started, and records whether it had. Run one photo at a time, the wait would
    time out; with one photo found ahead, detect k + 1 starts before sample k ends, never k + 2."""
    import threading

    from runtime import run_files
    from runtime.run_files import RunRecord, write_photo_inputs

    paths = [tmp_path / f"p{k}.jpg" for k in range(3)]
    events, started = [], {path: threading.Event() for path in paths}
    lock = threading.Lock()

    def note(event):
        with lock:
            events.append(event)

    class Result:
        faces: list = []

        def record(self, hr_size):
            return {}

    class Pipe:
        shape = type("Shape", (), {"hr_size": 256, "scale": 4})

        def detect_faces(self, path, *args):
            note(("detect", path.name))
            started[path].set()
            return path

        def recipe(self, seed, n, **variation):
            return seed  # no variation: the seed itself, as Pipeline.recipe gives it

        def sample_faces(self, found, *args):
            k = paths.index(found)
            ahead = started[paths[k + 1]].wait(10) if k + 1 < len(paths) else True
            note(("sampled", found.name, ahead))
            return Result()

    monkeypatch.setattr(run_files, "check_photo_outputs", lambda *args: [])
    monkeypatch.setattr(run_files, "write_photo", lambda result, *args: [])
    settings = run_files.RunSettings(out=tmp_path, seed=0, temperatures=np.ones(1, np.float32), grid=False)
    record = RunRecord.__new__(RunRecord)
    record.written, record.photos, record.samples, record.done, failures = [], [], 0, 0, []
    record.fail = lambda *args, **kwargs: failures.append(args)
    write_photo_inputs(Pipe(), paths, settings, record, None, lambda: note(("done",)))
    assert not failures and record.done == 3, failures
    assert [e for e in events if e[0] == "sampled"] == [("sampled", p.name, True) for p in paths]
    assert events.index(("detect", "p2.jpg")) > events.index(("sampled", "p0.jpg", True))  # one photo ahead only
