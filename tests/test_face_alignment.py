"""FFHQ alignment and paste-back (runtime/faces/align.py, paste.py): geometry against the
published formula worked by hand, sampling against closed forms, the blend's guarantees."""

import numpy as np
import pytest

from runtime.faces.align import FaceSquare, crop
from runtime.faces.paste import blend, blend_over, paste_order, place, upscale


def landmarks(eye_left, eye_right, mouth_left, mouth_right, nose=(0.0, 0.0)):
    return np.array([eye_left, eye_right, nose, mouth_left, mouth_right], dtype=np.float64)


def rotate(points, degrees, about):
    t = np.radians(degrees)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (np.asarray(points, float) - about) @ r.T + about


# FFHQ's square, worked by hand from the published formula (module docstring of align.py):
# upright face, eyes 20 apart, mouth 20 below: x = (20, 0) - flipud(0, 20) * [-1, 1] = (40, 0),
# scaled to max(2 * 20, 1.8 * 20) = 40; y = (0, 40); c = (50, 50) + 0.1 (0, 20) = (50, 52).
# Close eyes, low mouth: x = (10, 0) + (30, 0) -> (1, 0) * max(2 * 10, 1.8 * 30 = 54); c = (50, 53).
@pytest.mark.parametrize("points, centre, top_left, bottom_right, side", [
    (landmarks((40, 50), (60, 50), (45, 70), (55, 70)), (50, 52), (10, 12), (90, 92), 80),
    (landmarks((45, 50), (55, 50), (44, 80), (56, 80)), (50, 53), (-4, -1), (104, 107), 108),
])
def test_the_ffhq_square_matches_the_published_formula(points, centre, top_left, bottom_right, side):
    square = FaceSquare.from_landmarks(points)
    np.testing.assert_allclose(square.c, centre, atol=1e-12)
    np.testing.assert_allclose(square.corners[0], top_left, atol=1e-12)
    np.testing.assert_allclose(square.corners[2], bottom_right, atol=1e-12)
    assert square.side == pytest.approx(side, abs=1e-12)


def test_the_square_turns_with_the_face():
    points = landmarks((40, 50), (60, 50), (45, 70), (55, 70))
    upright = FaceSquare.from_landmarks(points)
    tilted = FaceSquare.from_landmarks(rotate(points, 30, (50, 50)))
    np.testing.assert_allclose(tilted.corners, rotate(upright.corners, 30, (50, 50)), atol=1e-9)


@pytest.mark.parametrize("size", [16, 64, 256])
def test_crop_coordinates_round_trip(size):
    square = FaceSquare.from_landmarks(landmarks((103.3, 211.7), (151.1, 190.2), (115.0, 263.9), (160.4, 247.5)))
    to_photo = square.to_photo(size)
    crop_points = np.random.default_rng(0).uniform(-1, size, (100, 2))
    photo_points = crop_points @ to_photo[:2, :2].T + to_photo[:2, 2]
    back = np.linalg.inv(to_photo)
    np.testing.assert_allclose(photo_points @ back[:2, :2].T + back[:2, 2], crop_points, atol=1e-6)
    # The crop's outer pixel edges are the square's corners (FFHQ's QUAD transform).
    edges = np.array([[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5], [size - 0.5, -0.5]])
    np.testing.assert_allclose(edges @ to_photo[:2, :2].T + to_photo[:2, 2], square.corners, atol=1e-9)
    # Resizing the photo by f keeps pixel edges: the crop of the resized photo sees the same content.
    resized = square.scaled(4.0)
    np.testing.assert_allclose(resized.corners, (square.corners + 0.5) * 4 - 0.5, atol=1e-9)


def gradient_photo(height=600, width=700):
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    value = 20 + 0.2 * xs + 0.15 * ys  # 20..245: linear, so bilinear sampling and averaging are exact
    return np.repeat(value[..., None], 3, axis=2).round().astype(np.uint8), value


@pytest.mark.parametrize("side, size, degrees", [(60, 64, 0), (80, 32, 17), (400, 64, -25), (380, 256, 40)])
def test_the_crop_samples_the_photo_where_the_square_says(side, size, degrees):
    """Pixel (i, j) of the crop is the photo at to_photo(j, i): a linear ramp makes the expected
    value closed-form, for plain warps (side ~ size), supersampled ones and shrunk ones."""
    photo, value = gradient_photo()
    c = np.array([350.0, 300.0])
    x = rotate([[side / 2, 0]], degrees, (0, 0))[0]
    square = FaceSquare(c, x, np.flipud(x) * [-1, 1])
    got = crop(photo, square, size)[..., 0].astype(np.float64)
    m = square.to_photo(size)
    ii, jj = np.mgrid[:size, :size]
    px, py = m[0, 0] * jj + m[0, 1] * ii + m[0, 2], m[1, 0] * jj + m[1, 1] * ii + m[1, 2]
    expected = 20 + 0.2 * px + 0.15 * py
    assert np.abs(got - expected).max() <= 1.5  # uint8 photo and crop: 0.5 + 0.5 rounding, + shrink grid


def test_a_face_at_the_border_is_mirrored_and_softened_not_black():
    photo, _ = gradient_photo()
    square = FaceSquare(np.array([30.0, 300.0]), np.array([60.0, 0.0]), np.array([0.0, 60.0]))
    got = crop(photo, square, 64)
    left = got[:, :8, 0].astype(int)  # 25 px of the square's 120 lie left of the photo
    assert left.min() > 15 and np.abs(np.diff(got[:, :, 0].astype(int), axis=1)).max() <= 6


def test_outside_the_mask_the_output_is_the_background_byte_for_byte():
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    square = FaceSquare.from_landmarks(rotate(landmarks((70, 50), (90, 50), (74, 72), (86, 72)), 20, (80, 60)))
    canvas = upscale(photo, 2)
    background = canvas.copy()
    placement = place(square, 2, 32, canvas.shape[:2])
    blend(canvas, placement, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    changed = np.zeros(canvas.shape[:2], bool)
    changed[placement.rows, placement.cols] = placement.mask[..., 0] > 0
    assert (canvas[~changed] == background[~changed]).all()
    assert (canvas[changed] != background[changed]).any(axis=-1).mean() > 0.9
    # Full weight inside: the sample's centre lands at the square's centre.
    assert placement.mask.max() == 1.0


def test_the_blend_has_no_seam():
    """A white sample on black: the output is 255 x mask. The face spans 128 x 1.5 = 192 output
    pixels and the feather one eighth of it, 24 pixels, so adjacent pixels may differ by
    255 / 24 * sqrt(2) + 1 (rounding) = 16 levels at most; a hard-edged paste steps by 255."""
    photo = np.zeros((200, 200, 3), np.uint8)
    square = FaceSquare(np.array([100.0, 100.0]), rotate([[64, 0]], 10, (0, 0))[0],
                        rotate([[0, 64]], 10, (0, 0))[0])
    canvas = upscale(photo, 1.5)
    placement = place(square, 1.5, 256, canvas.shape[:2])
    blend(canvas, placement, np.full((256, 256, 3), 255, np.uint8))
    value = canvas[..., 0].astype(int)
    assert value.max() == 255 and value[0, 0] == 0
    assert max(np.abs(np.diff(value, axis=0)).max(), np.abs(np.diff(value, axis=1)).max()) <= 16


def test_a_face_leaving_the_canvas_is_clipped():
    photo = np.zeros((100, 100, 3), np.uint8)
    square = FaceSquare(np.array([95.0, 5.0]), np.array([30.0, 0.0]), np.array([0.0, 30.0]))
    canvas = upscale(photo, 4)
    placement = place(square, 4, 64, canvas.shape[:2])
    assert placement.rows.start == 0 and placement.cols.stop == 400
    blend(canvas, placement, np.full((64, 64, 3), 200, np.uint8))
    # Output square: x 261.5..501.5, y -98.5..141.5. Inside (and up to the canvas' edge): the
    # sample; 1 px inside its left edge: feathered away to the background.
    assert canvas[0, 399, 0] == 200 and canvas[60, 380, 0] == 200 and canvas[60, 263, 0] == 0
    assert place(FaceSquare(np.array([500.0, 5.0]), square.x, square.y), 4, 64, canvas.shape[:2]) is None


def test_overlapping_faces_put_the_larger_on_top():
    small = FaceSquare(np.array([40.0, 50.0]), np.array([20.0, 0.0]), np.array([0.0, 20.0]))
    large = FaceSquare(np.array([60.0, 50.0]), np.array([35.0, 0.0]), np.array([0.0, 35.0]))
    assert paste_order([large, small]) == [1, 0]
    canvas = np.zeros((100, 120, 3), np.uint8)
    for j in paste_order([large, small]):
        value = (100, 200)[j]  # large: 100, small: 200
        blend(canvas, place([large, small][j], 1, 32, canvas.shape[:2]), np.full((32, 32, 3), value, np.uint8))
    assert canvas[50, 45, 0] == 100  # inside both: the larger face
    assert canvas[50, 28, 0] == 200  # only the small one (3 px inside the large one: feathered out)


def test_transparent_faces_have_alpha_from_the_mask():
    canvas = np.zeros((100, 100, 4), np.uint8)
    square = FaceSquare(np.array([50.0, 50.0]), np.array([30.0, 0.0]), np.array([0.0, 30.0]))
    placement = place(square, 1, 32, canvas.shape[:2])
    blend_over(canvas, placement, np.full((32, 32, 3), 180, np.uint8))
    assert canvas[50, 50].tolist() == [180, 180, 180, 255] and canvas[2, 2].tolist() == [0, 0, 0, 0]
    alpha = canvas[..., 3].astype(int)
    np.testing.assert_array_equal(alpha[placement.rows, placement.cols], np.rint(placement.mask[..., 0] * 255))
    assert (canvas[..., :3][alpha > 0] == 180).all()  # straight alpha: the colour is the face's


@pytest.mark.parametrize("factor", [1, 4, 8])
def test_the_banded_upscale_is_one_lanczos_resize(factor):
    from PIL import Image

    photo = np.random.default_rng(2).integers(0, 256, (203, 150, 3), dtype=np.uint8)
    whole = np.asarray(Image.fromarray(photo).resize((150 * factor, 203 * factor), Image.LANCZOS))
    np.testing.assert_array_equal(upscale(photo, factor), whole)


def test_blending_in_bands_is_blending_at_once(monkeypatch):
    from runtime.faces import paste

    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    sample = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    square = FaceSquare(np.array([50.0, 50.0]), rotate([[30, 0]], 12, (0, 0))[0], rotate([[0, 30]], 12, (0, 0))[0])
    results = []
    for rows in (1000, 7):
        monkeypatch.setattr(paste, "BLEND_ROWS", rows)
        canvas = upscale(photo, 2)
        blend(canvas, place(square, 2, 64, canvas.shape[:2]), sample)
        results.append(canvas)
    np.testing.assert_array_equal(*results)


@pytest.mark.parametrize("shape", [(1, 1, 3), (130, 67, 3), (65, 33, 4)])
def test_the_streamed_png_reads_back_exactly(tmp_path, shape):
    from PIL import Image

    from runtime.images.png import write_png_streamed

    pixels = np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8)
    write_png_streamed(tmp_path / "x.png", pixels, level=1)
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == ("RGB" if shape[2] == 3 else "RGBA")
        np.testing.assert_array_equal(np.asarray(image), pixels)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
