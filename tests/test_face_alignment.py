"""FFHQ alignment and paste-back (runtime/faces/align.py, paste.py): geometry against the
published formula worked by hand, sampling against closed forms (linear ramps, whose bilinear,
bicubic and area samples are exact) and against scipy, the blend's guarantees. Expected values
never come from the code's own matrices: the tests write the square and the canvas mapping out
themselves."""

import numpy as np
import pytest
from scipy import ndimage

from runtime.faces.align import FaceSquare, crop
from runtime.faces.paste import blend, blend_over, canvas_map, paste_order, place, upscale


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


def test_crop_pixels_sit_where_the_published_formula_puts_them():
    """Worked by hand for the upright square above (c = (50, 52), x = (40, 0), y = (0, 40)) and a
    16-pixel crop: pixel (i, j)'s centre is c + ((j + 0.5) / 16 * 2 - 1) x + ((i + 0.5) / 16 * 2 - 1) y,
    so (0, 0) -> (50 - 0.9375 * 40, 52 - 0.9375 * 40) = (12.5, 14.5), (0, 15) -> (87.5, 14.5),
    (15, 0) -> (12.5, 89.5); the outer edge (-0.5, -0.5) -> the corner (10, 12)."""
    square = FaceSquare.from_landmarks(landmarks((40, 50), (60, 50), (45, 70), (55, 70)))
    m = square.to_photo(16)
    for (j, i), expected in (((0, 0), (12.5, 14.5)), ((15, 0), (87.5, 14.5)), ((0, 15), (12.5, 89.5)),
                             ((-0.5, -0.5), (10, 12)), ((15.5, 15.5), (90, 92))):
        np.testing.assert_allclose(m @ [j, i, 1], [*expected, 1], atol=1e-12)


def to_output(factor_x, factor_y):
    """Photo pixel centre -> output pixel centre when pixel edges scale by the factors: written
    out here, X = f (x + 0.5) - 0.5, not taken from the code."""
    return np.array([[factor_x, 0, (factor_x - 1) / 2], [0, factor_y, (factor_y - 1) / 2], [0, 0, 1]])


def test_the_canvas_mapping_keeps_pixel_edges_on_each_axis():
    np.testing.assert_allclose(canvas_map((75, 101), (188, 252)), to_output(252 / 101, 188 / 75), atol=1e-12)
    np.testing.assert_allclose(canvas_map((10, 10), (40, 40)) @ [0, 9, 1], [1.5, 37.5, 1], atol=1e-12)


def ramps_photo(height=600, width=700):
    """Channel 0 a ramp along x (0.34 a pixel), channel 1 along y (0.4 a pixel): a shift of one
    pixel moves the mean error by 0.34 or 0.4 levels, far above the rounding noise's mean."""
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    ramps = np.stack([10 + 0.34 * xs, 10 + 0.4 * ys, np.full_like(xs, 128)], axis=-1)
    return ramps.round().astype(np.uint8)


@pytest.mark.parametrize("side, size, degrees", [(60, 64, 0), (80, 32, 17), (400, 64, -25), (380, 256, 40)])
def test_the_crop_samples_the_photo_where_the_square_says(side, size, degrees):
    """Crop pixel (i, j) is the photo at c + ((j + 0.5) / size * 2 - 1) x + ((i + 0.5) / size * 2 - 1) y
    (the formula, written here): on the ramps the expected value is closed-form, for plain warps
    (side ~ size), supersampled ones and shrunk ones. The mean error catches a crop shifted by
    one pixel (0.34 or 0.4 levels), the largest catches anything gross."""
    photo = ramps_photo()
    c = np.array([350.0, 300.0])
    x = rotate([[side / 2, 0]], degrees, (0, 0))[0]
    y = np.array([-x[1], x[0]])
    got = crop(photo, FaceSquare(c, x, y), size).astype(np.float64)
    ii, jj = np.mgrid[:size, :size]
    u, v = (jj + 0.5) / size * 2 - 1, (ii + 0.5) / size * 2 - 1
    px, py = c[0] + u * x[0] + v * y[0], c[1] + u * x[1] + v * y[1]
    for channel, expected in ((0, 10 + 0.34 * px), (1, 10 + 0.4 * py)):
        error = got[..., channel] - expected
        assert abs(error.mean()) < 0.12 and np.abs(error).max() <= 1.5, (channel, error.mean(), np.abs(error).max())


def test_a_face_at_the_border_is_mirrored_and_softened_not_black():
    photo = ramps_photo()
    square = FaceSquare(np.array([30.0, 300.0]), np.array([60.0, 0.0]), np.array([0.0, 60.0]))
    got = crop(photo, square, 64)
    left = got[:, :8, 0].astype(int)  # 25 px of the square's 120 lie left of the photo
    assert left.min() > 15 and np.abs(np.diff(got[:, :, 0].astype(int), axis=1)).max() <= 6


def square_coordinates(square, f, shape):
    """For each output pixel of a ``shape`` canvas made ``f`` times the photo: where it falls in
    the square, (u, v) in [-1, 1] across it (the formula: p = c + u x + v y, p in photo pixels)."""
    ys, xs = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    px, py = (xs + 0.5) / f - 0.5 - square.c[0], (ys + 0.5) / f - 0.5 - square.c[1]
    half2 = square.x @ square.x
    return (px * square.x[0] + py * square.x[1]) / half2, (px * square.y[0] + py * square.y[1]) / half2


def test_outside_the_mask_the_output_is_the_background_byte_for_byte():
    """The mask is the sample square eroded by 1/8 and feathered over 1/8 of its side, so it is 0
    beyond 1/16 of the side inside the edge (|u| > 7/8 with u across the square in [-1, 1]) and 1
    within 3/16 (|u| < 5/8): there, respectively, the background byte for byte and the sample."""
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    square = FaceSquare.from_landmarks(rotate(landmarks((70, 50), (90, 50), (74, 72), (86, 72)), 20, (80, 60)))
    canvas = upscale(photo, 2)
    background = canvas.copy()
    blend(canvas, place(square, to_output(2, 2), 32, canvas.shape[:2]), np.full((32, 32, 3), 77, np.uint8))
    u, v = square_coordinates(square, 2, canvas.shape[:2])
    outside = np.maximum(np.abs(u), np.abs(v)) > 7 / 8 + 0.01
    inside = np.maximum(np.abs(u), np.abs(v)) < 5 / 8 - 0.01
    assert outside.sum() > 10_000 and inside.sum() > 1_000
    assert (canvas[outside] == background[outside]).all()
    assert (canvas[inside] == 77).all()


def test_the_blend_has_no_seam():
    """A white sample on black: the output is 255 x mask. The face spans 128 x 1.5 = 192 output
    pixels and the feather one eighth of it, 24 pixels, so adjacent pixels may differ by
    255 / 24 * sqrt(2) + 1 (rounding) = 16 levels at most; a hard-edged paste steps by 255."""
    photo = np.zeros((200, 200, 3), np.uint8)
    square = FaceSquare(np.array([100.0, 100.0]), rotate([[64, 0]], 10, (0, 0))[0],
                        rotate([[0, 64]], 10, (0, 0))[0])
    canvas = upscale(photo, 1.5)
    blend(canvas, place(square, to_output(1.5, 1.5), 256, canvas.shape[:2]), np.full((256, 256, 3), 255, np.uint8))
    value = canvas[..., 0].astype(int)
    assert value.max() == 255 and value[0, 0] == 0
    assert max(np.abs(np.diff(value, axis=0)).max(), np.abs(np.diff(value, axis=1)).max()) <= 16


def test_a_face_leaving_the_canvas_is_clipped():
    photo = np.zeros((100, 100, 3), np.uint8)
    square = FaceSquare(np.array([95.0, 5.0]), np.array([30.0, 0.0]), np.array([0.0, 30.0]))
    canvas = upscale(photo, 4)
    placement = place(square, to_output(4, 4), 64, canvas.shape[:2])
    assert placement.rows.start == 0 and placement.cols.stop == 400
    blend(canvas, placement, np.full((64, 64, 3), 200, np.uint8))
    # Output square: x 261.5..501.5, y -98.5..141.5. Inside (and up to the canvas' edge): the
    # sample; 1 px inside its left edge: feathered away to the background.
    assert canvas[0, 399, 0] == 200 and canvas[60, 380, 0] == 200 and canvas[60, 263, 0] == 0
    assert place(FaceSquare(np.array([500.0, 5.0]), square.x, square.y), to_output(4, 4), 64, canvas.shape[:2]) \
        is None


def test_overlapping_faces_put_the_larger_on_top():
    small = FaceSquare(np.array([40.0, 50.0]), np.array([20.0, 0.0]), np.array([0.0, 20.0]))
    large = FaceSquare(np.array([60.0, 50.0]), np.array([35.0, 0.0]), np.array([0.0, 35.0]))
    assert paste_order([large, small]) == [1, 0]
    canvas = np.zeros((100, 120, 3), np.uint8)
    for j in paste_order([large, small]):
        value = (100, 200)[j]  # large: 100, small: 200
        blend(canvas, place([large, small][j], to_output(1, 1), 32, canvas.shape[:2]),
              np.full((32, 32, 3), value, np.uint8))
    assert canvas[50, 45, 0] == 100  # inside both: the larger face
    assert canvas[50, 28, 0] == 200  # only the small one (3 px inside the large one: feathered out)


def test_transparent_faces_have_alpha_from_the_mask():
    """Square centre (50, 50), half side 30, 32-pixel samples, factor 1: output pixel X is at
    sample coordinate t = (X - 20) * 32 / 60 - 0.5; the mask's ramp there is
    clip((t - 3.5) / 4 + 0.5, 0, 1) (eroded by 32 / 8 = 4 from the edge at -0.5, feathered over 4),
    worked by hand: X = 25 -> t = 2.1667 -> 0.1667 (alpha 42.5); X = 30 -> 0.8333 (212.5);
    X = 20 -> 0; X = 50 -> 1."""
    canvas = np.zeros((100, 100, 4), np.uint8)
    square = FaceSquare(np.array([50.0, 50.0]), np.array([30.0, 0.0]), np.array([0.0, 30.0]))
    blend_over(canvas, place(square, to_output(1, 1), 32, canvas.shape[:2]), np.full((32, 32, 3), 180, np.uint8))
    assert canvas[50, 50].tolist() == [180, 180, 180, 255] and canvas[2, 2].tolist() == [0, 0, 0, 0]
    for x, alpha in ((20, 0), (25, 42.5), (30, 212.5), (50, 255), (75, 42.5), (80, 0)):
        assert abs(int(canvas[50, x, 3]) - alpha) <= 0.5, (x, canvas[50, x, 3], alpha)
        assert abs(int(canvas[x, 50, 3]) - alpha) <= 0.5, (x, canvas[x, 50, 3], alpha)
    assert (canvas[..., :3][canvas[..., 3] > 0] == 180).all()  # straight alpha: the colour is the face's


def ramps_sample(size):
    """A sample with a ramp along its x (0.8 a pixel) in channel 0 and along its y in channel 1."""
    ii, jj = np.mgrid[:size, :size].astype(np.float64)
    return np.stack([20 + 0.8 * jj * 256 / size, 20 + 0.8 * ii * 256 / size, np.full_like(jj, 100)], -1) \
        .round().astype(np.uint8)


@pytest.mark.parametrize("factor, side, degrees", [(4, 100, 0), (2, 130, 23), (1, 102.4, 0), (0.5, 150, -31),
                                                   (1, 40, 12), (4, 260, 17), (8, 250, -8)])
def test_the_paste_puts_each_sample_pixel_where_the_square_says(factor, side, degrees):
    """A 256-pixel ramp sample pasted with factor f: the output pixel at (u, v) across the square
    (worked out in the test, ``square_coordinates``) is the sample at j = (u + 1) / 2 * 256 - 0.5,
    whether it is enlarged (bicubic; 4x or more: turned at 2x, then resized), kept, or shrunk to
    0.4x or less (area-averaged): on a ramp all are exact. Inside the full-weight mask, a paste shifted by one output pixel
    moves the mean error by 0.8 * 256 / (side * f) levels or more; the bound is 0.15."""
    photo = np.zeros((260, 260, 3), np.uint8)
    x = rotate([[side / 2, 0]], degrees, (0, 0))[0]
    square = FaceSquare(np.array([130.0, 128.0]), x, np.array([-x[1], x[0]]))
    canvas = upscale(photo, factor)
    blend(canvas, place(square, to_output(factor, factor), 256, canvas.shape[:2]), ramps_sample(256))
    u, v = square_coordinates(square, factor, canvas.shape[:2])
    inside = np.maximum(np.abs(u), np.abs(v)) < 5 / 8 - 0.02
    j, i = (u + 1) / 2 * 256 - 0.5, (v + 1) / 2 * 256 - 0.5
    for channel, expected in ((0, 20 + 0.8 * j), (1, 20 + 0.8 * i)):
        error = canvas[..., channel][inside] - expected[inside]
        assert abs(error.mean()) < 0.15 and np.abs(error).max() <= 1.6, (channel, error.mean(), np.abs(error).max())


def test_a_shrunk_paste_does_not_alias():
    """One-pixel stripes (0, 255, 0, ...) pasted at 0.4x: each output pixel spans 2.5 stripes, so
    its true average lies in [102, 153] (1 or 1.5 of the 2.5 white), mean 127.5. A bicubic read
    without a pre-filter lands on single stripes: 0 or 255."""
    sample = np.zeros((256, 256, 3), np.uint8)
    sample[:, 1::2] = 255
    square = FaceSquare(np.array([100.0, 100.0]), np.array([51.2, 0.0]), np.array([0.0, 51.2]))  # 102.4 px
    canvas = np.zeros((200, 200, 3), np.uint8)
    blend(canvas, place(square, to_output(1, 1), 256, canvas.shape[:2]), sample)
    u, v = square_coordinates(square, 1, canvas.shape[:2])
    inside = canvas[..., 0][np.maximum(np.abs(u), np.abs(v)) < 5 / 8 - 0.02].astype(float)
    assert abs(inside.mean() - 127.5) < 3 and inside.min() >= 90 and inside.max() <= 165, \
        (inside.mean(), inside.min(), inside.max())


def test_a_shrunk_rotated_paste_is_the_area_average_scipy_computes():
    """A smooth random sample pasted at 0.3x, turned 35 degrees, against a float64 reference: each
    output pixel the mean of the sample at 16 x 16 points over its footprint, read with
    ``scipy.ndimage.map_coordinates`` (bilinear), the square worked out in the test. Within 2.5
    levels in the full-weight interior (the code averages 4 x 4 points a pixel)."""
    rng = np.random.default_rng(5)
    field = ndimage.gaussian_filter(rng.normal(0, 1, (256, 256)), 3)
    sample = np.repeat(np.clip(128 + field / field.std() * 50, 0, 255).round().astype(np.uint8)[..., None], 3, -1)
    x = rotate([[38.4, 0]], 35, (0, 0))[0]  # side 76.8 = 0.3 x 256
    square = FaceSquare(np.array([60.0, 60.0]), x, np.array([-x[1], x[0]]))
    canvas = np.zeros((120, 120, 3), np.uint8)
    blend(canvas, place(square, to_output(1, 1), 256, canvas.shape[:2]), sample)
    points = (np.arange(16) + 0.5) / 16 - 0.5  # sub-pixel offsets over a pixel's footprint
    ys, xs = np.mgrid[:120, :120].astype(np.float64)
    total = np.zeros((120, 120))
    for dy in points:
        for dx in points:
            px, py = xs + dx - square.c[0], ys + dy - square.c[1]
            u, v = (px * x[0] + py * x[1]) / (x @ x), (px * -x[1] + py * x[0]) / (x @ x)
            total += ndimage.map_coordinates(sample[..., 0].astype(np.float64),
                                             [(v + 1) / 2 * 256 - 0.5, (u + 1) / 2 * 256 - 0.5], order=1,
                                             mode="nearest")
    reference = total / 256
    u, v = square_coordinates(square, 1, canvas.shape[:2])
    inside = np.maximum(np.abs(u), np.abs(v)) < 5 / 8 - 0.05
    error = np.abs(canvas[..., 0][inside] - reference[inside])
    assert error.max() <= 2.5 and error.mean() < 0.7, (error.max(), error.mean())


def test_at_a_fractional_factor_a_face_lands_where_the_background_put_its_photo_pixels():
    """A 101 x 75 photo at x2.5 is resized to 252 x 188 (rounded half to even), so pixel edges
    scale by 252 / 101 and 188 / 75, not 2.5. The face centred at photo (80, 40) must land at
    X = 252 / 101 * 80.5 - 0.5 = 200.356, Y = 188 / 75 * 40.5 - 0.5 = 101.02 (at exactly 2.5 it
    would be 200.75, 100.75): the centroid of a white face on black, to 0.05 px."""
    photo = np.zeros((75, 101, 3), np.uint8)
    canvas = upscale(photo, 2.5)
    assert canvas.shape[:2] == (188, 252)
    square = FaceSquare(np.array([80.0, 40.0]), np.array([12.0, 0.0]), np.array([0.0, 12.0]))
    blend(canvas, place(square, canvas_map(photo.shape[:2], canvas.shape[:2]), 32, canvas.shape[:2]),
          np.full((32, 32, 3), 255, np.uint8))
    weight = canvas[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:188, :252]
    centroid = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
    np.testing.assert_allclose(centroid, (252 / 101 * 80.5 - 0.5, 188 / 75 * 40.5 - 0.5), atol=0.05)


@pytest.mark.parametrize("factor", [1, 4, 8])
def test_the_banded_upscale_is_one_lanczos_resize(factor):
    from PIL import Image

    photo = np.random.default_rng(2).integers(0, 256, (203, 150, 3), dtype=np.uint8)
    whole = np.asarray(Image.fromarray(photo).resize((150 * factor, 203 * factor), Image.LANCZOS))
    np.testing.assert_array_equal(upscale(photo, factor), whole)


@pytest.mark.parametrize("factor", [2, 5])  # the sample enlarged 1.9x (read through the map) and 4.7x (two steps)
def test_blending_in_bands_is_blending_at_once(monkeypatch, factor):
    from runtime.faces import paste

    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    sample = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    square = FaceSquare(np.array([50.0, 50.0]), rotate([[30, 0]], 12, (0, 0))[0], rotate([[0, 30]], 12, (0, 0))[0])
    results = []
    for rows in (1000, 7):
        monkeypatch.setattr(paste, "BLEND_ROWS", rows)
        canvas = upscale(photo, factor)
        blend(canvas, place(square, to_output(factor, factor), 64, canvas.shape[:2]), sample)
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


def test_a_face_of_any_size_is_blended_in_a_few_bands_of_memory():
    """A 64-pixel sample blended over a 4000 x 4000 output region: the whole region in float32
    would be 64 MB for the mask alone and 192 MB for the colour; made 256 rows at a time, the
    blend's own allocations (tracemalloc sees numpy's) stay under 40 MB."""
    import tracemalloc

    canvas = np.zeros((4000, 4000, 3), np.uint8)
    square = FaceSquare(np.array([2000.0, 2000.0]), np.array([1999.0, 0.0]), np.array([0.0, 1999.0]))
    placement = place(square, to_output(1, 1), 64, canvas.shape[:2])
    tracemalloc.start()
    blend(canvas, placement, np.full((64, 64, 3), 200, np.uint8))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert canvas[2000, 2000, 0] == 200 and peak < 40e6, peak / 1e6
