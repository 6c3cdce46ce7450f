"""``cvdvae.Pipeline``: LR faces or whole photos in, seeded samples out.

    from cvdvae import Pipeline

    pipe = Pipeline.from_pretrained("engines/x4-fp32")      # an export folder, model.onnx, engine.plan or weights
    out = pipe("face.png", n=8, seed=0, temperature=0.8)    # out.samples: uint8 [B, n, H, W, 3]
    out.mean, out.std                                       # per input: the samples' mean, their spread
    out = pipe("face.png", n=8, seed=0, like=3, vary_from=64)  # sample 3's coarse levels, the finer ones varied
    out = pipe("face.png", seed=0, temperature_at={128: 0.5})  # half the temperature from 128 px up
    photos = pipe.faces("photo.jpg", n=8, seed=0)           # detection, alignment, paste-back, in memory

The pipeline composes the parts and owns no maths. ``__call__`` reads as its steps:
``check_settings`` (n, seed, temperatures), ``prepare`` (decode, size check, the MATLAB
bicubic degradation with ``from_hr``), ``jobs`` and the one sampling path
(``runtime.sampling``), ``finish`` (the LR-consistency projection, 8-bit pixels, the NaN/Inf
check). ``faces`` is ``detect_faces``, then ``face_jobs`` sampled, then ``finish_faces``.
``cvdvae run``, ``cvdvae serve`` (which puts its own batching between the steps), ``cvdvae
eval``, the demo and the benchmarks all go through here, so the same seed, n and input give
the same pixels whichever of them is used.

Samples are 8-bit like the files ``cvdvae run`` writes: ``round(clip(x, 0, 1) * 255)``,
half to even, as the official sampler saves them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cvdvae import bicubic
from cvdvae.errors import CVDVAEError, InputError, NoFaceFound, NonFiniteSamples
from cvdvae.noise_recipe import Noise, check_recipe, recipe_for, seed_of
from cvdvae.seeding import MAX_SEED

from .backends import CHOICES, Backend, open_backend
from .backends.interface import Sampled
from .consistency import project
from .faces.paste import output_shape
from .faces.photos import PASTE_MODES, FaceSearch, FacesOutput, PhotoFaces, align_face, find_faces
from .images.decode import ImageSource, decode_image, source_name
from .images.outputs import input_grid, to_uint8
from .images.summary import Summary, summarise
from .limits import DEFAULT_N, DEFAULT_TEMPERATURE, MAX_FACES, MAX_TEMPERATURE, Limits
from .model_files import ModelFiles, ModelShape, locate
from .sampling import Job, sample_jobs
from .timings import timed


@dataclass(frozen=True)
class LRInput:
    """One input as the model takes it."""

    lr: np.ndarray | None       # [3, h, w] float32 0..255 (None: a prior-only model's draw)
    hr: np.ndarray | None       # [H, W, 3] uint8, the HR image ``lr`` was degraded from (``from_hr``)
    name: str                   # the file name, or what the input was
    converted: str | None = None  # what the decoder did to reach 8-bit sRGB


@dataclass
class PipelineOutput:
    samples: np.ndarray                  # [B, n, H, W, 3] uint8
    inputs: list[LRInput]
    seed: int
    temperatures: np.ndarray             # [n] float32
    scale: int | None
    timings: dict[str, float] = field(default_factory=dict)
    non_finite: list[list[int]] = field(default_factory=list)  # per input, the samples that held NaN/Inf
    non_finite_values: np.ndarray | None = None  # [B, n]: how many NaN/Inf the engine counted per sample
    first_sample: int = 0                # the samples are first_sample .. first_sample + n - 1

    @property
    def images(self) -> list[list[Any]]:
        """Per input, its n samples as PIL images."""
        from PIL import Image

        return [[Image.fromarray(sample) for sample in row] for row in self.samples]

    @property
    def mean(self) -> np.ndarray:
        """[B, H, W, 3] float32: per input, the mean of its finite samples in 8-bit units."""
        return np.stack([summary.mean for summary in self.summaries])

    @property
    def std(self) -> np.ndarray:
        """[B, H, W] float32: per input, the per-pixel standard deviation of its finite samples, in
        8-bit levels (the RMS of the three channels', ``runtime.images.summary``)."""
        return np.stack([summary.std for summary in self.summaries])

    @cached_property
    def summaries(self) -> list[Summary]:
        """Per input, its samples' mean and spread (made once, on first use)."""
        return [summarise(self.finite(i)) for i in range(len(self.inputs))]

    def finite(self, index: int) -> list[np.ndarray]:
        """Input ``index``'s samples without those that held NaN/Inf."""
        broken = set(self.non_finite[index]) if self.non_finite else set()
        return [sample for k, sample in enumerate(self.samples[index]) if k not in broken]

    def summary(self, index: int) -> Summary:
        """Input ``index``'s mean and spread, with its pictures (``mean_pixels``, ``std_pixels``)."""
        return self.summaries[index]

    def grid(self, index: int, summary: bool = False) -> np.ndarray:
        """Input ``index``'s grid (HWC uint8): its LR image enlarged (nearest), its HR image with
        ``from_hr``, its finite samples, and with ``summary`` their mean and standard deviation map."""
        source = self.inputs[index]
        return input_grid(source.lr, source.hr, self.finite(index), self.scale,
                          self.summary(index) if summary else None)


class Pipeline:
    """A model and the engine that runs it; ``__call__`` and ``faces`` turn images into samples."""

    def __init__(self, backend: Backend, shape: ModelShape, model_id: str, limits: Limits | None = None):
        self.backend, self.shape, self.model_id = backend, shape, model_id
        self.limits = limits or Limits()
        self._detector: Any = None

    @classmethod
    def from_pretrained(cls, path: str | Path | ModelFiles, backend: str = "auto", threads: int | None = None, *,
                        max_batch: int | None = None, max_n: int | None = None, tf32: bool = False,
                        vdvae: str | Path | None = None, config: str | Path | None = None,
                        preset: str | None = None, limits: Limits | None = None,
                        precision: str = "auto") -> "Pipeline":
        """``path``: an export folder, a ``model.onnx`` or an ``engine.plan`` (run by ``backend``:
        ``auto`` picks the fastest engine here; or the folder already read, ``model_files.locate``), or
        a weight file (``.safetensors``, ``.ckpt``,
        ``.th``: run by PyTorch, on CUDA when present; ``vdvae``, ``config`` and ``preset`` complete
        it as ``cvdvae.load_model`` does). ``precision``: ``auto`` computes in the export's own
        precision; ``bf16`` runs an FP32 export in bf16 on OpenVINO, on CPUs with AVX512-BF16 or
        AMX (faster, slightly different samples: docs/concepts/precision.md)."""
        from .backends.torch import WEIGHT_SUFFIXES

        if backend not in CHOICES:
            raise CVDVAEError(f"unknown backend {backend!r}: choose one of {', '.join(CHOICES)}")
        if isinstance(path, ModelFiles):
            files = path
        elif Path(path).is_file() and Path(path).suffix in WEIGHT_SUFFIXES:
            return cls.from_weights(Path(path), backend, tf32=tf32, vdvae=vdvae, config=config, preset=preset,
                                    limits=limits, precision=precision)
        elif backend == "torch":
            raise CVDVAEError(f"PyTorch runs weight files ({', '.join(WEIGHT_SUFFIXES)}), not {path}")
        else:
            files = locate(path)
        engine = open_backend(files, backend, max_batch=max_batch, max_n=max_n, threads=threads or 0, tf32=tf32,
                              precision=precision)
        return cls(engine, files.shape, files.model_id, limits)

    @classmethod
    def from_weights(cls, path: Path, backend: str = "auto", *, tf32: bool = False, vdvae: str | Path | None = None,
                     config: str | Path | None = None, preset: str | None = None, limits: Limits | None = None,
                     precision: str = "auto") -> "Pipeline":
        """A weight file run by PyTorch (the export extra), on CUDA when present."""
        from cvdvae.extras import require

        from .backends.torch import TorchBackend

        if precision == "bf16":
            raise CVDVAEError(f"{path} holds weights, which PyTorch runs in FP32; bf16 runs on OpenVINO: export "
                              "the weights first (cvdvae export)")
        if backend not in ("auto", "torch"):
            raise CVDVAEError(f"{path} holds weights: only {{backend}} runs them (export for the others)",
                              backend="torch")
        require("export", "running weight files (PyTorch)")
        engine = TorchBackend.from_weights(path, vdvae=vdvae, config=config, preset=preset, tf32=tf32)
        return cls(engine, engine.shape, f"torch-{path.stem}", limits)

    # ------------------------------------------------------------------ samples of LR faces
    def __call__(self, images: ImageSource | LRInput | Sequence[ImageSource | LRInput] | None = None,
                 n: int | None = None, seed: int = 0, temperature: float | Sequence[float] = DEFAULT_TEMPERATURE,
                 from_hr: bool = False, consistent: bool = False, *, first_sample: int = 0,
                 keep_non_finite: bool = False, like: int | None = None, like_seed: int | None = None,
                 vary_from: int | None = None, temperature_at: Mapping[int, float] | None = None) -> PipelineOutput:
        """n samples of each image (PIL images, HWC uint8 arrays, paths or bytes; one or a list), or
        with ``images`` None, n faces drawn from noise by a prior-only model. ``n`` defaults to 8,
        or to one sample per temperature when ``temperature`` is a list. ``first_sample``: these are
        samples ``first_sample ..`` of the seed (a long run drawn in passes gives the bytes of one
        pass). Raises ``InputError`` for an unusable image and ``NonFiniteSamples`` when the model
        produced NaN/Inf; with ``keep_non_finite`` the output is returned instead, its broken samples
        as zeros and listed in ``non_finite``. ``like``, ``like_seed``, ``vary_from`` and
        ``temperature_at`` compose the noise by level (``recipe``)."""
        temperatures = self.check_settings(n, seed, temperature)
        if not isinstance(first_sample, (int, np.integer)) or isinstance(first_sample, bool) or first_sample < 0:
            raise CVDVAEError(f"first_sample must be a whole number >= 0, not {first_sample!r}")
        noise = self.recipe(seed, first_sample + len(temperatures), like, like_seed, vary_from, temperature_at)
        timings: dict[str, float] = {}
        with timed(timings, "prepare"):
            inputs = self.prepare(images, from_hr)
        with timed(timings, "sample"):
            samples = sample_jobs(self.backend, self.jobs(inputs, noise, temperatures, first_sample))
        return self.finish(inputs, samples, seed, temperatures, consistent, timings, first_sample, keep_non_finite)

    def check_settings(self, n: int | None, seed: int, temperature: float | Sequence[float]) -> np.ndarray:
        """The temperatures, one per sample ``[n]`` float32, after checking n and seed."""
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise CVDVAEError(f"seed must be a whole number in 0 .. 2^64-1, not {seed!r}")
        return check_temperatures(temperature, n)

    def recipe(self, seed: int, samples: int, like: int | None = None, like_seed: int | None = None,
               vary_from: int | None = None, temperature_at: Mapping[int, float] | None = None) -> Noise:
        """The noise of a call whose samples are ``0 .. samples - 1``: the seed's own, or with ``like``
        (a sample index; ``like_seed`` its seed, default ``seed``) and ``vary_from`` (a level in px)
        every latent group coarser than the level is sample ``like``'s and sample ``like`` is itself;
        ``temperature_at`` ({level: factor}, each from its level up to the next) multiplies the
        temperature of the prior's groups (``cvdvae.noise_recipe``). Checked against the model's levels."""
        if temperature_at is not None and not isinstance(temperature_at, Mapping):
            raise CVDVAEError("{temperature_at} must map levels (px) to factors, e.g. {128: 0.5}",
                              temperature_at=temperature_at)
        try:
            noise = recipe_for(seed, like, like_seed, vary_from, temperature_at)
        except (TypeError, ValueError):
            raise CVDVAEError("{temperature_at} must map whole levels (px) to numbers, e.g. {128: 0.5}",
                              temperature_at=temperature_at) from None
        check_recipe(noise, self.shape.levels, samples)
        return noise

    def prepare(self, images: Any, from_hr: bool = False) -> list[LRInput]:
        """Every image decoded, checked against the model's input size, and degraded with ``from_hr``
        (inputs already prepared pass as they are)."""
        if isinstance(images, list) and images and all(isinstance(item, LRInput) for item in images):
            if any((item.lr is None) == self.shape.conditional for item in images):
                raise CVDVAEError("these inputs were prepared for another kind of model")
            return images
        if not self.shape.conditional:
            if images is not None or from_hr:
                raise CVDVAEError("this is a prior-only model: it draws faces from noise alone; pass no images")
            return [LRInput(None, None, "sample")]
        if images is None:
            raise CVDVAEError("this model super-resolves LR images: pass one or a list")
        many = isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4)
        return [self.prepare_one(image, from_hr) for image in (images if many else [images])]

    def prepare_one(self, image: ImageSource | LRInput, from_hr: bool = False, name: str | None = None) -> LRInput:
        if isinstance(image, LRInput):
            return image
        shape = self.shape
        want = shape.hr_size if from_hr else shape.lr_size

        def check_size(img: Any) -> None:
            if img.size == (want, want):
                return
            message = (f"{decoded_name}: is {img.width}x{img.height}, the model takes {want}x{want} "
                       f"{'HR' if from_hr else 'LR'} images")
            if not from_hr and img.size == (shape.hr_size, shape.hr_size):
                raise InputError(message + " (an HR image? add {from_hr})", "wrong_size", from_hr=True)
            if min(img.size) > shape.hr_size:
                raise InputError(message + " (a photo? add {faces})", "wrong_size", faces=True)
            raise InputError(message, "wrong_size")

        decoded_name = name or source_name(image)
        decoded = decode_image(image, self.limits.max_image_pixels, check_size, decoded_name)
        chw = np.ascontiguousarray(decoded.pixels.transpose(2, 0, 1))
        if from_hr:
            return LRInput(bicubic.downscale_uint8(chw, shape.hr_size // shape.lr_size), decoded.pixels,
                           decoded.name, decoded.converted)
        return LRInput(chw.astype(np.float32), None, decoded.name, decoded.converted)

    @staticmethod
    def jobs(inputs: list[LRInput], seed: Noise, temperatures: np.ndarray, first_sample: int = 0) -> list[Job]:
        return [Job(item.lr, seed, temperatures, first_sample) for item in inputs]

    def finish(self, inputs: list[LRInput], results: list[Sampled], seed: int, temperatures: np.ndarray,
               consistent: bool = False, timings: dict[str, float] | None = None,
               first_sample: int = 0, keep_non_finite: bool = False) -> PipelineOutput:
        """Each input's samples as 8-bit pixels; ``NonFiniteSamples`` when the engine counted NaN/Inf
        in any (with ``keep_non_finite``: such a sample is zeros and listed in ``non_finite``)."""
        if consistent:
            if not self.shape.conditional:
                raise CVDVAEError("consistent needs LR images to be consistent with; a prior-only model has none")
            if not self.shape.consistent:  # a graph exported consistent projects already
                results = [Sampled(project(r.samples, item.lr, self.shape.scale), r.non_finite)
                           for r, item in zip(results, inputs)]
        broken = [broken_samples(r) for r in results]
        pixels = np.stack([to_uint8_samples(r.samples, bad) for r, bad in zip(results, broken)])
        counts = np.stack([r.non_finite for r in results])
        if not keep_non_finite:
            raise_if_broken(broken, int(counts.sum()), counts.shape, self.backend.precision)
        return PipelineOutput(pixels, inputs, seed, temperatures, self.shape.scale, timings or {}, broken, counts,
                              first_sample)

    # ------------------------------------------------------------------ photos
    def faces(self, photo: ImageSource, n: int | None = None, seed: int = 0,
              temperature: float | Sequence[float] = DEFAULT_TEMPERATURE, *, min_face: int = 20,
              max_faces: int = MAX_FACES, min_score: float = 0.9, upscale: float | None = None,
              paste: str = "photo", keep_non_finite: bool = False, like: int | None = None,
              like_seed: int | None = None, vary_from: int | None = None,
              temperature_at: Mapping[int, float] | None = None) -> FacesOutput:
        """Every face of ``photo`` found, aligned as FFHQ was, sampled n times and pasted back: n whole
        photos (``paste``: "photo" on the photo upscaled by ``upscale``, default the model's
        factor; "transparent": the faces alone, RGBA; "none": no whole photos) and per face its
        box, landmarks, mode and samples. Nothing is written to disk. ``NoFaceFound`` when the
        photo has none; ``NonFiniteSamples`` as ``__call__`` raises it. ``like`` .. ``temperature_at``:
        every face's noise by level, as ``__call__``."""
        temperatures = self.check_settings(n, seed, temperature)
        noise = self.recipe(seed, len(temperatures), like, like_seed, vary_from, temperature_at)
        found = self.detect_faces(photo, FaceSearch(min_face, max_faces, min_score), upscale, paste)
        return self.sample_faces(found, noise, temperatures, upscale, paste, keep_non_finite)

    def detect_faces(self, photo: ImageSource, search: FaceSearch = FaceSearch(), upscale: float | None = None,
                     paste: str = "photo", name: str | None = None, check: Any = None) -> PhotoFaces:
        """The photo decoded (upright, sRGB) and its faces found and aligned; ``NoFaceFound`` when none.
        ``upscale`` and ``paste`` are checked here, before any work, against the output limit;
        ``check(img)`` sees the photo's header before its pixels are decoded (a caller's own budget)."""
        if not self.shape.conditional:
            raise CVDVAEError("this is a prior-only model: it takes no photos")
        if paste not in PASTE_MODES:
            raise CVDVAEError(f"paste must be one of {', '.join(PASTE_MODES)}, not {paste!r}")
        factor = self.upscale_factor(upscale)
        name = name or source_name(photo)

        def within_limits(header: Any) -> None:  # from the header: no pixel is decoded for a refused photo
            if check is not None:
                check(header)
            height, width = output_shape((header.height, header.width), factor)
            if paste != "none" and height * width > self.limits.max_output_pixels:
                raise InputError(f"{name}: {header.width}x{header.height} at x{factor:g} is "
                                 f"{height * width / 1e6:.0f} megapixels, more than the "
                                 f"{self.limits.max_output_pixels / 1e6:.0f} written; lower {{upscale}} or use "
                                 "{paste}", "too_large", upscale=None, paste="none")

        timings: dict[str, float] = {}
        with timed(timings, "read"):
            decoded = decode_image(photo, self.limits.max_photo_pixels, within_limits, name)
        with timed(timings, "detect"):
            detected = find_faces(decoded.pixels, self.detector, search)
        with timed(timings, "align"):
            faces = [align_face(decoded.pixels, face, self.shape.lr_size, self.shape.hr_size) for face in detected]
        if not faces:
            raise NoFaceFound(f"{decoded.name}: {search.no_face_message()}", min_face=None, min_score=None)
        return PhotoFaces(decoded.pixels, faces, decoded.name, timings, decoded.alpha, decoded.grey, decoded.format)

    def sample_faces(self, found: PhotoFaces, seed: Noise, temperatures: np.ndarray, upscale: float | None = None,
                     paste: str = "photo", keep_non_finite: bool = False) -> FacesOutput:
        """The found faces sampled together (``temperatures`` [n]; ``seed`` a seed or a checked recipe)
        and made into whole photos."""
        with timed(found.timings, "sample"):
            samples = sample_jobs(self.backend, self.face_jobs(found, seed, temperatures), keep=as_uint8)
        return self.finish_faces(found, samples, seed_of(seed), temperatures, upscale, paste, keep_non_finite)

    @staticmethod
    def face_jobs(found: PhotoFaces, seed: Noise, temperatures: np.ndarray) -> list[Job]:
        """One job per face: sample k of every face has the noise of ``(seed, k)`` (or the recipe's)."""
        return [Job(face.lr, seed, temperatures) for face in found.faces]

    def finish_faces(self, found: PhotoFaces, results: list[Sampled], seed: int, temperatures: np.ndarray,
                     upscale: float | None = None, paste: str = "photo", keep_non_finite: bool = False) -> FacesOutput:
        """Each face's samples as 8-bit pixels, as ``finish``; the whole photos are made from them on demand."""
        broken = [broken_samples(r) for r in results]
        for face, result, bad in zip(found.faces, results, broken):
            face.samples = to_uint8_samples(result.samples, bad)
        if not keep_non_finite:
            raise_if_broken(broken, sum(int(r.non_finite.sum()) for r in results), (len(results), len(temperatures)),
                            self.backend.precision, "face samples", f"{found.name}: ")
        return FacesOutput(found.photo, found.faces, seed, temperatures, self.upscale_factor(upscale), paste,
                           found.name, found.timings, broken, found.alpha, found.grey, found.format)

    def upscale_factor(self, upscale: float | None) -> float:
        factor = float(self.shape.scale if upscale is None else upscale)
        if not (math.isfinite(factor) and factor > 0):
            raise CVDVAEError(f"upscale must be a positive number, not {upscale!r}")
        return factor

    @property
    def detector(self) -> Any:
        """The MTCNN face detector, loaded on first use (``cvdvae fetch mtcnn`` puts it in place)."""
        if self._detector is None:
            from .faces.detector import FaceDetector

            self._detector = FaceDetector.from_folder()
        return self._detector


def check_temperatures(temperature: float | Sequence[float], n: int | None) -> np.ndarray:
    """One temperature per sample, ``[n]`` float32: a number for every sample, or a list of n."""
    values = list(temperature) if isinstance(temperature, (list, tuple, np.ndarray)) else [temperature]
    if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
        raise CVDVAEError(f"n must be a whole number >= 1, not {n!r}")
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float, np.number)) for v in values):
        raise CVDVAEError(f"temperature must be a number or a list of numbers, not {temperature!r}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
        as_float32 = np.asarray(values, np.float64).astype(np.float32)
    if not np.isfinite(as_float32).all() or (as_float32 < 0).any() or (as_float32 > MAX_TEMPERATURE).any():
        raise CVDVAEError(f"temperature must be a number from 0 to {MAX_TEMPERATURE:g}, not {temperature!r}")
    if len(values) == 1:
        return np.full(n or DEFAULT_N, as_float32[0], np.float32)
    if n is not None and n != len(values):
        raise CVDVAEError(f"{len(values)} temperatures for n = {n}: give one, or one per sample")
    return as_float32


def broken_samples(result: Sampled) -> list[int]:
    """Indices of the samples the engine counted NaN or Inf in."""
    return np.flatnonzero(result.non_finite > 0).tolist()


def as_uint8(result: Sampled) -> Sampled:
    """``result`` with its samples as 8-bit pixels (``to_uint8_samples``): a quarter of the memory."""
    return Sampled(to_uint8_samples(result.samples, broken_samples(result)), result.non_finite)


def to_uint8_samples(samples: np.ndarray, broken: list[int]) -> np.ndarray:
    """[n, 3, H, W] in [0, 1] -> [n, H, W, 3] uint8 (8-bit already: kept); a broken sample becomes
    zeros, never garbage."""
    if samples.dtype == np.uint8:
        return samples
    pixels = np.stack([to_uint8(np.nan_to_num(s)) for s in samples])
    pixels[broken] = 0
    return pixels


def raise_if_broken(broken: list[list[int]], values: int, shape: tuple[int, int], precision: str,
                    what: str = "samples", prefix: str = "") -> None:
    """``NonFiniteSamples`` when any of the ``shape`` = (inputs, n) samples is ``broken``."""
    count = sum(len(indices) for indices in broken)
    if count:
        raise NonFiniteSamples(f"{prefix}{count} of {shape[0] * shape[1]} {what} contain NaN/Inf ({values:,} values): "
                               f"{broken_model_advice(precision)}", broken, values)


def broken_model_advice(precision: str) -> str:
    """What a NaN/Inf sample says about the model, and what to do."""
    if precision == "fp16":
        return "the model is numerically broken (float16 overflow?); re-export it in fp32 or bf16"
    return "the model is numerically broken (NaN or Inf weights, or activations beyond float range); check its weights"
