"""Whole photos encoded band by band (runtime/images/bands.py, photo_files.py, photo_format.py).

Oracles: libjpeg-turbo's whole-image encoding through Pillow (the banded JPEG must equal it byte
for byte), zlib's own inflate (which checks the combined Adler-32), and OpenCV's decoders (libpng,
libjpeg, libwebp: independent of the files' writer) for colour and orientation."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageCms

from cvdvae.errors import CVDVAEError
from runtime.images.bands import BandCodec, ReusedBackground, srgb_profile
from runtime.images.photo_files import FileWriter, PhotoEncoder, output_pixels
from runtime.images.photo_format import PhotoFormat

cv2 = pytest.importorskip("cv2", reason="OpenCV is the independent decoder (the dev extra installs it)")

HEIGHT, WIDTH = 200, 150  # not multiples of the 64-row band, the 16-pixel MCU or the 8-pixel block
CHANGED = slice(70, 90)   # rows that differ between the photos: bands 1 only


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(2) as threads:
        yield threads


def textured(seed: int) -> np.ndarray:
    """A smooth photo-like picture (noise enlarged): deflate and JPEG both have work to do."""
    small = np.random.default_rng(seed).integers(0, 256, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BICUBIC))


def pillow_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality, subsampling="4:2:0", restart_marker_rows=1,
                                 icc_profile=srgb_profile())
    return out.getvalue()


def photos(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    background = textured(seed)
    frame = background.copy()
    frame[CHANGED, 20:120] = textured(seed + 1)[CHANGED, 20:120]
    return background, frame


@pytest.mark.parametrize("quality", [95, 60])
def test_a_jpeg_with_reused_bands_is_libjpegs_own_encoding_byte_for_byte(quality, pool):
    background, frame = photos()
    codec = BandCodec("jpeg", HEIGHT, WIDTH, 3, quality=quality)
    reused = ReusedBackground(codec, background, [CHANGED], lambda f, rows: f[rows], pool)
    assert reused.changing == [1]
    assert b"".join(reused.encode(frame)) == pillow_jpeg(frame, quality)
    assert b"".join(reused.encode(background)) == pillow_jpeg(background, quality)


def png_stream(data: bytes) -> tuple[bytes, int]:
    """The PNG's concatenated IDAT data and its IHDR colour type (a reader of our own, for zlib)."""
    at, idat, colour = 8, [], None
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0]
        idat += [body] if kind == b"IDAT" else []
        colour = body[9] if kind == b"IHDR" else colour
        at += 12 + length
    return b"".join(idat), colour


def test_a_png_with_reused_bands_is_the_same_file_as_one_encoded_from_scratch_and_decodes_exactly(pool):
    """zlib's inflate checks the stream's Adler-32 (combined from the bands'), OpenCV (libpng) the pixels."""
    background, frame = photos()
    codec = BandCodec("png", HEIGHT, WIDTH, 3, level=6)
    reused = b"".join(ReusedBackground(codec, background, [CHANGED], lambda f, rows: f[rows], pool).encode(frame))
    scratch = b"".join(codec.file([codec.band(frame[codec.rows(i)]) for i in range(codec.count)]))
    assert reused == scratch
    stream, colour = png_stream(reused)
    assert colour == 2 and len(zlib.decompress(stream)) == HEIGHT * (1 + WIDTH * 3)
    assert np.array_equal(cv2.imdecode(np.frombuffer(reused, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1], frame)


def test_grey_and_alpha_pngs_decode_exactly(pool):
    """RGBA, grey + alpha and grey whole photos (OpenCV reads grey + alpha as BGRA, grey repeated)."""
    background, frame = photos()
    alpha = np.tile(np.linspace(0, 255, WIDTH).astype(np.uint8), (HEIGHT, 1))
    canvas = np.dstack([frame, alpha])
    grey = np.asarray(Image.fromarray(frame).convert("L"))
    for pixels, colour, expected in ((output_pixels(False, True), 6, canvas),
                                     (output_pixels(True, True), 4, np.dstack([grey, grey, grey, alpha])),
                                     (output_pixels(True, False), 0, grey)):
        data = b"".join(PhotoEncoder(PhotoFormat("png"), canvas, [CHANGED], pixels, pool).encode(canvas))
        assert png_stream(data)[1] == colour
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(decoded[..., [2, 1, 0, 3]] if decoded.ndim == 3 else decoded, expected)


def quadrants() -> np.ndarray:
    """Red top left, green top right, blue bottom left, white bottom right: a turned or mirrored
    decode, or swapped channels, puts another colour in a corner."""
    out = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    h, w = HEIGHT // 2, WIDTH // 2
    out[:h, :w], out[:h, w:], out[h:, :w], out[h:, w:] = (220, 30, 30), (30, 200, 40), (20, 40, 210), (250, 250, 250)
    return out


@pytest.mark.parametrize("name", ["png", "jpeg", "webp"])
def test_each_format_keeps_colour_and_orientation_and_says_srgb(name, pool):
    picture = quadrants()
    fmt = PhotoFormat(name).chosen(None, False)
    data = b"".join(PhotoEncoder(fmt, picture, [CHANGED], output_pixels(False, False), pool).encode(picture))
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]  # applies EXIF orientation
    assert decoded.shape == picture.shape
    for y, x in ((HEIGHT // 4, WIDTH // 4), (HEIGHT // 4, 3 * WIDTH // 4), (3 * HEIGHT // 4, WIDTH // 4),
                 (3 * HEIGHT // 4, 3 * WIDTH // 4)):
        assert np.abs(decoded[y, x].astype(int) - picture[y, x]).max() <= (0 if name == "png" else 8), (y, x)
    image = Image.open(io.BytesIO(data))
    assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[name]
    assert image.getexif().get(0x0112, 1) == 1
    if name == "png":
        assert "srgb" in image.info
    else:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        assert "srgb" in ImageCms.getProfileDescription(profile).lower()


def test_the_format_is_the_inputs_own_unless_named():
    assert PhotoFormat().chosen("JPEG", False) == PhotoFormat("jpeg", 95)
    assert PhotoFormat().chosen("WEBP", False) == PhotoFormat("webp", 90)
    assert PhotoFormat().chosen("PNG", False) == PhotoFormat("png")
    assert PhotoFormat().chosen(None, False) == PhotoFormat("png")       # an array: lossless
    assert PhotoFormat().chosen("JPEG", True) == PhotoFormat("png")      # faces alone keep their transparency
    assert PhotoFormat("webp", 70).chosen("JPEG", False) == PhotoFormat("webp", 70)
    assert PhotoFormat("jpeg").suffix == ".jpg"
    with pytest.raises(CVDVAEError, match="cannot be JPEG"):
        PhotoFormat("jpeg").chosen("PNG", True)
    with pytest.raises(CVDVAEError, match="PNG is lossless"):
        PhotoFormat("png", 90)
    with pytest.raises(CVDVAEError, match="1 to 100"):
        PhotoFormat("jpeg", 0)
    with pytest.raises(CVDVAEError, match="one of png, jpeg, webp"):
        PhotoFormat("tiff")


def test_a_failed_write_is_raised_by_close_and_later_files_are_skipped(tmp_path):
    writer = FileWriter()
    writer.write(tmp_path / "missing" / "a.png", [b"x"])  # no such folder
    writer.write(tmp_path / "b.png", [b"y"])
    with pytest.raises(OSError):
        writer.close()
    assert not (tmp_path / "b.png").exists()
    writer = FileWriter()
    writer.write(tmp_path / "c.png", [b"1", b"2"])
    writer.close()
    assert (tmp_path / "c.png").read_bytes() == b"12"


@pytest.mark.parametrize("flags, message", [
    (("--format", "tiff"), "photo format must be one of png, jpeg, webp, not 'tiff'"),
    (("--format", "png", "--quality", "90"), "quality applies to JPEG and WebP; PNG is lossless"),
    (("--face-only", "--format", "jpeg"), "cannot be JPEG: choose png or webp"),
])
def test_run_refuses_a_format_that_cannot_work_before_any_work(flags, message, tmp_path, capsys):
    from runtime.cli.run import main as run_main

    (tmp_path / "weights.pt").write_bytes(b"")  # never read: the flags are refused first
    code = run_main([str(tmp_path / "weights.pt"), "--input", str(tmp_path / "in.jpg"), "--faces", *flags,
                     "--out", str(tmp_path / "out")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
