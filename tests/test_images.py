"""The one image decoder: every kind of image file gives the sRGB pixels worked out by hand, and the
same pixels whether it reaches the model through ``cvdvae run`` or the Python API (``cvdvae serve``:
tests/test_serve.py)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from icc_profiles import swapped_red_green
from PIL import Image

from runtime.cli.run import main as run_main
from cvdvae.errors import InputError
from runtime.images.decode import decode_image
from runtime.pipeline import Pipeline

SIZE = 8  # the demo model's LR side


def quadrants(values: list) -> np.ndarray:
    """An 8x8 image of four 4x4 blocks: values[0] top left, [1] top right, [2] bottom left, [3] bottom right."""
    a, b, c, d = (np.full((4, 4) + np.shape(v), v) for v in values)
    return np.concatenate([np.concatenate([a, b], axis=1), np.concatenate([c, d], axis=1)])


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def srgb_from_gamma22(level: int) -> float:
    """A level under a gamma-2.2 profile, re-encoded with the sRGB curve (IEC 61966-2-1), in 0..255."""
    linear = (level / 255) ** 2.2
    encoded_value = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return 255 * encoded_value


def rgb(values: list) -> np.ndarray:
    return quadrants([np.array(v, np.float64) for v in values])


# kind -> (file bytes, its suffix, the sRGB pixels worked out by hand, tolerance in levels)
def cases() -> dict:
    palette = Image.fromarray(quadrants([0, 1, 1, 0]).astype(np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    alpha = quadrants([[200, 40, 10, 0], [200, 40, 10, 255], [200, 40, 10, 128], [0, 0, 0, 0]]).astype(np.uint8)
    over_white = [255 * (1 - 128 / 255) + v * 128 / 255 for v in (200, 40, 10)]
    cmyk = quadrants([[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 255, 0, 0]]).astype(np.uint8)
    icc = quadrants([[255, 0, 0], [0, 255, 0], [128, 0, 0], [255, 255, 255]]).astype(np.uint8)
    return {
        "8-bit RGB": (encoded(Image.fromarray(icc), "PNG"), ".png",
                      rgb([[255, 0, 0], [0, 255, 0], [128, 0, 0], [255, 255, 255]]), 0),
        "16-bit grey": (encoded(Image.fromarray(quadrants([0, 25700, 32768, 65535]).astype(np.uint16)), "PNG"),
                        ".png", rgb([[0] * 3, [100] * 3, [128] * 3, [255] * 3]), 0),  # round(v * 255 / 65535)
        "palette": (encoded(palette, "PNG"), ".png", rgb([[10, 20, 30], [200, 100, 50], [200, 100, 50],
                                                          [10, 20, 30]]), 0),
        "grey": (encoded(Image.fromarray(quadrants([0, 77, 200, 255]).astype(np.uint8), "L"), "PNG"), ".png",
                 rgb([[0] * 3, [77] * 3, [200] * 3, [255] * 3]), 0),
        "alpha": (encoded(Image.fromarray(alpha, "RGBA"), "PNG"), ".png",
                  rgb([[255] * 3, [200, 40, 10], over_white, [255] * 3]), 1),  # over white
        "CMYK": (encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100, subsampling=0), ".jpg",
                 rgb([[255] * 3, [0, 255, 255], [0] * 3, [255, 0, 255]]), 2),  # JPEG rounds a little
        "ICC profile": (encoded(Image.fromarray(icc), "PNG", icc_profile=swapped_red_green()), ".png",
                        rgb([[0, 255, 0], [255, 0, 0], [0, srgb_from_gamma22(128), 0], [255] * 3]), 1),
    }


CASES = cases()
# A float image reaches the decoder only as a PIL image or an array: no file format taken carries one.
FLOAT_GREY = Image.fromarray(quadrants([0.0, 0.25, 0.5, 1.0]).astype(np.float32), "F")


def test_float_grey_is_taken_as_0_to_1():
    pixels = decode_image(FLOAT_GREY, 10_000).pixels
    np.testing.assert_array_equal(pixels, rgb([[0] * 3, [64] * 3, [128] * 3, [255] * 3]))  # x 255, half to even


@pytest.mark.parametrize("fmt, named", [("TIFF", "TIFF"), ("BMP", "BMP"), ("GIF", "GIF"), ("EPS", "PostScript (EPS)"),
                                        ("PDF", "PDF")])
def test_only_png_jpeg_and_webp_are_parsed_and_the_others_are_named(fmt, named, tmp_path, pipe, demo_export, capsys):
    data = encoded(Image.new("RGB", (SIZE, SIZE)), fmt)
    with pytest.raises(InputError, match=re.escape(f"a {named} image; only PNG, JPEG and WebP are taken")) as err:
        pipe(data)
    assert err.value.kind == "unsupported_format"
    (tmp_path / "face.img").write_bytes(data)
    assert run_main([str(demo_export), "--input", str(tmp_path / "face.img"), "--out", str(tmp_path / "o")]) == 2
    assert f"face.img: a {named} image" in capsys.readouterr().err and not list((tmp_path / "o").glob("*.png"))


@pytest.mark.parametrize("kind", list(CASES))
def test_each_kind_of_image_decodes_to_the_hand_worked_srgb_pixels(kind):
    data, _, expected, tolerance = CASES[kind]
    decoded = decode_image(data, 10_000)
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (SIZE, SIZE, 3)
    assert np.abs(decoded.pixels.astype(np.float64) - expected).max() <= tolerance + 0.5, decoded.pixels[::4, ::4]
    assert (decoded.converted is None) == (kind == "8-bit RGB")


def test_the_profile_is_applied_not_ignored():
    """Without its profile the swapped image would keep red where the profile says green."""
    data, _, _, _ = CASES["ICC profile"]
    pixels = decode_image(data, 10_000).pixels
    assert pixels[0, 0].tolist() == [0, 255, 0] and pixels[0, 4].tolist() == [255, 0, 0]


def test_an_unreadable_or_oversized_image_is_one_line_naming_it_and_no_address():
    with pytest.raises(InputError, match=r"^upload: not a readable image") as err:
        decode_image(b"not an image at all", 10_000, name="upload")
    assert "0x" not in str(err.value) and err.value.kind == "unreadable"
    big = encoded(Image.new("RGB", (200, 100)), "PNG")
    with pytest.raises(InputError, match="200x100 pixels is more than") as err:
        decode_image(big, 10_000)
    assert err.value.kind == "too_large"


@pytest.fixture(scope="module")
def pipe(demo_export):
    return Pipeline.from_pretrained(demo_export)


@pytest.mark.parametrize("kind", list(CASES))
def test_run_and_the_api_give_the_same_pixels_for_each_kind(kind, pipe, demo_export, tmp_path):
    """``cvdvae run`` on the file, the API on its bytes, its path and the decoded array: one set of pixels."""
    data, suffix, _, _ = CASES[kind]
    path = tmp_path / f"face{suffix}"
    path.write_bytes(data)
    assert run_main([str(demo_export), "--input", str(path), "--n", "3", "--seed", "5", "--out", str(tmp_path / "o"),
                     "--quiet"]) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / "o" / f"face_s5_{k:02d}.png")) for k in range(3)])
    from_bytes = pipe(data, n=3, seed=5).samples[0]
    from_path = pipe(str(path), n=3, seed=5).samples[0]
    from_array = pipe(decode_image(data, 10_000).pixels, n=3, seed=5).samples[0]
    for samples in (from_bytes, from_path, from_array):
        np.testing.assert_array_equal(samples, written)


def test_the_photo_limit_is_the_documented_100_megapixels():
    """``Pipeline``'s photo limit is 100 MP (docs/guides/photos.md): a 90 MP photo decodes, even with Pillow's
    decompression-bomb warning (at 89.5 MP) made an error, and a 101 MP one is refused from its
    header, before any pixel is decoded. The 90 MP PNG is all zeros: 1.2 MB, decoded in ~1 s."""
    import warnings

    from runtime.limits import Limits

    limit = Limits().max_photo_pixels
    assert limit == 100_000_000
    buffer = io.BytesIO()
    Image.new("RGB", (10_000, 9_000)).save(buffer, "PNG", compress_level=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoded = decode_image(buffer.getvalue(), limit)
    assert decoded.pixels.shape == (9_000, 10_000, 3)
    # 101 MP: the header alone (no row follows), refused as too large rather than read.
    header = png_header(10_100, 10_000)
    with pytest.raises(InputError) as refused:
        decode_image(header, limit)
    assert refused.value.kind == "too_large" and "10100x10000" in str(refused.value)
    with pytest.raises(InputError) as truncated:  # the same header under the limit is read, and found short
        decode_image(png_header(10_000, 9_000), limit)
    assert truncated.value.kind == "unreadable"


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature, its IHDR (8-bit RGB) and an IDAT of no rows: what a decoder sees before
    any pixel."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
