"""Built-in validation: the exported graph against the PyTorch model on the same inputs.

FP32 graphs: ONNX Runtime runs the graph, PyTorch the model; they must agree within 1e-4
(max abs error on ``sr``). A pixel whose Gumbel-max mixture choice flipped between the two
(two mixture scores within rounding of each other) is a legitimate, discrete difference:
such pixels are counted separately and left out of the max error. To know which pixels
flipped, the ArgMax output is exposed from a copy of the graph; the exported file is
untouched.

FP16/BF16 graphs are compared with FP32 (PSNR bound, no NaN/Inf), and the half-precision
arithmetic must really run, or an overflow could not show:
- ``pytorch-{precision}``: the cast model the graph was traced from, in that precision.
  Float16 convolutions run as GPU kernels do, float16 tensors accumulated in float32
  (PyTorch's own CPU float16 convolution is hundreds of times slower), so every stored
  activation is float16 and overflows to Inf as it would on the GPU.
- the graph itself: through ONNX Runtime's CUDA provider where present (float16 kernels);
  on a CPU its provider runs float16 nodes through float32 kernels with casts around them,
  which checks the graph's structure, not its arithmetic (and has no bfloat16 kernels).
Every check says which engine ran.

Validation also yields the reference cases (``export.reference``) engines are checked against.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from cvdvae.dmol import mixture_choice, mixture_margin
from cvdvae.model import CVDVAE
from cvdvae.seeding import noise_torch
from runtime.backends.onnxruntime import import_onnxruntime

from . import onnx_passes
from .precision import MIN_PSNR_DB, compare
from .reference import Case

FP32_TOLERANCE = 1e-4
TEMPERATURES = (0.8, 0.0, 1.2, 0.5, 1.0)
SEED = 0


@dataclass
class ShapeResult:
    batch: int
    n: int
    max_abs_error: float          # over pixels whose mixture choice agrees
    flipped_pixels: int
    pixels: int
    agreement: dict
    graph_non_finite: int = 0     # the graph's own NaN/Inf count over the case (its non_finite output)

    @property
    def passed(self) -> bool:
        return (self.max_abs_error <= FP32_TOLERANCE and self.flipped_pixels <= max(1, self.pixels // 1000)
                and self.graph_non_finite == 0)


@dataclass
class ValidationReport:
    backend: str
    precision: str
    shapes: list[ShapeResult] = field(default_factory=list)
    reduced_precision: list[dict] = field(default_factory=list)
    tolerance: float = FP32_TOLERANCE

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.shapes) and all(c["passed"] for c in self.reduced_precision
                                                           if "skipped" not in c)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        parts = [f"B={s.batch} n={s.n}: max abs {s.max_abs_error:.2e}, {s.flipped_pixels} flipped of {s.pixels}"
                 for s in self.shapes]
        for c in self.reduced_precision:
            parts.append(f"{c['through']}: skipped ({c['skipped']})" if "skipped" in c else
                         f"{c['through']}: PSNR {c['psnr_db']} dB vs fp32, max abs {c['max_abs_error']:.2e}, "
                         f"{c['non_finite']} NaN/Inf")
        return f"validation {'passed' if self.passed else 'FAILED'} ({self.backend}): " + "; ".join(parts)


def validation_inputs(model: CVDVAE, batch: int, n: int, seed: int = SEED) -> tuple[torch.Tensor | None, ...]:
    """(lr, noise, temperature): random LR pixels (None for a prior-only model), seeded contract
    noise shared by the images, temperatures incl. 0 and > 1."""
    noise = noise_torch(seed, n, model.noise_layout.dim)[None].expand(batch, -1, -1).contiguous()
    temperature = torch.tensor([TEMPERATURES[k % len(TEMPERATURES)] for k in range(n)]).expand(batch, -1)
    lr = None
    if model.config.has_lr_encoder:
        size = model.config.image_size_y
        gen = torch.Generator().manual_seed(seed)
        lr = torch.randint(0, 256, (batch, 3, size, size), generator=gen).float()
    return lr, noise, temperature.contiguous()


@contextlib.contextmanager
def half_convolutions_accumulate_in_float32() -> Iterator[None]:
    """Float16 convolutions computed from float16 inputs with float32 accumulation, the result
    stored as float16 (as GPU float16 kernels do); other dtypes untouched."""
    conv2d = F.conv2d

    def conv(x, weight, bias=None, *args, **kwargs):
        if x.dtype != torch.float16:
            return conv2d(x, weight, bias, *args, **kwargs)
        out = conv2d(x.float(), weight.float(), None if bias is None else bias.float(), *args, **kwargs)
        return out.half()

    F.conv2d = conv
    try:
        yield
    finally:
        F.conv2d = conv2d


def torch_reference(model: CVDVAE, inputs: Sequence[torch.Tensor], consistent: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sr [B, n, 3, H, W], mixture choice [B*n, 1, H, W], choice margin [B, n, H, W]) from PyTorch."""
    captured = []
    hook = model.decoder.out_net.register_forward_hook(lambda m, i, o: captured.append(o.float()))
    try:
        with torch.inference_mode(), half_convolutions_accumulate_in_float32():
            sr = model(*inputs, consistent=consistent)
    finally:
        hook.remove()
    layout, noise = model.noise_layout, inputs[1]
    pixel = noise.reshape(-1, layout.dim)[:, layout.pixel_offset:]
    pixel = pixel.reshape(-1, layout.pixel_channels, layout.image_size, layout.image_size).float()
    m = model.config.num_mixtures
    margin = mixture_margin(captured[0], pixel, m).reshape(*sr.shape[:2], *sr.shape[-2:])
    return sr.float().numpy(), mixture_choice(captured[0], pixel, m).numpy(), margin.numpy()


def onnxruntime_session(path: Path, expose_choice: bool = True, providers: Sequence[str] | None = None):
    """A session (CUDA when available, else CPU; TF32 off); with ``expose_choice`` the ArgMax is an output."""
    ort = import_onnxruntime()
    names = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                          if p in ort.get_available_providers()]
    providers = [(p, {"use_tf32": "0"} if p == "CUDAExecutionProvider" else {}) for p in names]
    if not expose_choice:
        return ort.InferenceSession(str(path), providers=providers)
    proto = onnx.load(str(path))
    argmax = [node for node in proto.graph.node if node.op_type == "ArgMax"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(argmax[-1].output[0], onnx.TensorProto.INT64, None))
    if not onnx_passes.needs_external_data(proto):
        return ort.InferenceSession(proto.SerializeToString(), providers=providers)
    with tempfile.TemporaryDirectory() as tmp:  # ORT reads external data while it builds the session
        onnx_passes.save(proto, Path(tmp) / "model.onnx")
        return ort.InferenceSession(str(Path(tmp) / "model.onnx"), providers=providers)


def _feeds(inputs: Sequence[torch.Tensor | None]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in zip(("lr", "noise", "temperature"), inputs) if t is not None}


def _case(inputs: Sequence[torch.Tensor | None], sr: np.ndarray, margin: np.ndarray) -> Case:
    lr = None if inputs[0] is None else inputs[0].numpy()
    return Case(lr, inputs[2][0].numpy().copy(), SEED, sr, margin)


def validate_fp32(onnx_path: Path, model: CVDVAE, shapes: Sequence[tuple[int, int]],
                  consistent: bool = False) -> tuple[ValidationReport, list[Case]]:
    session = onnxruntime_session(onnx_path)
    report, cases = ValidationReport(backend="onnxruntime", precision="fp32"), []
    for batch, n in shapes:
        inputs = validation_inputs(model, batch, n)
        sr, counts, choice = session.run(None, _feeds(inputs))  # sr, non_finite, the exposed ArgMax
        ref_sr, ref_choice, margin = torch_reference(model, inputs, consistent)
        flipped = (choice != ref_choice).reshape(batch, n, 1, *sr.shape[-2:])
        error = np.where(flipped, 0.0, np.abs(sr - ref_sr))
        report.shapes.append(ShapeResult(batch, n, float(error.max()), int(flipped.sum()), int(flipped.size),
                                         compare(sr, ref_sr).to_dict(), int(np.sum(counts))))
        cases.append(_case(inputs, sr, margin))
    return report, cases


def _check(through: str, arithmetic: str, sr: np.ndarray, case: Case, precision: str, counted: int = 0) -> dict:
    """``sr`` against the case; ``counted``: NaN/Inf the graph's own output counted (before clamps)."""
    agreement = compare(sr, case.sr)
    agreement = replace(agreement, non_finite=max(agreement.non_finite, counted))
    passed = agreement.non_finite == 0 and agreement.psnr_db >= MIN_PSNR_DB[precision]
    return {"through": through, "arithmetic": arithmetic, **agreement.to_dict(), "batch": case.shape[0],
            "n": case.shape[1], "min_psnr_db": MIN_PSNR_DB[precision], "passed": passed}


def reduced_precision_checks(onnx_path: Path, reduced: CVDVAE, precision: str, case: Case,
                             inputs: Sequence[torch.Tensor], consistent: bool = False) -> list[dict]:
    """The cast model in real half-precision arithmetic, and the graph where it can run."""
    ort = import_onnxruntime()
    dtype = {"fp16": "float16", "bf16": "bfloat16"}[precision]
    conv = "float32 accumulation" if precision == "fp16" else "bfloat16 kernels"
    checks = [_check(f"pytorch-{precision}", f"{dtype} tensors, convolutions with {conv} (cpu)",
                     torch_reference(reduced, inputs, consistent)[0], case, precision)]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        session = onnxruntime_session(onnx_path, expose_choice=False, providers=["CUDAExecutionProvider"])
        sr, counts = session.run(["sr", "non_finite"], _feeds(inputs))
        checks.append(_check("onnxruntime-cuda", f"the graph, {dtype} kernels", sr, case, precision,
                             int(np.sum(counts))))
    elif precision == "fp16":
        session = onnxruntime_session(onnx_path, expose_choice=False, providers=["CPUExecutionProvider"])
        sr, counts = session.run(["sr", "non_finite"], _feeds(inputs))
        checks.append(_check("onnxruntime-cpu", "the graph through float32 kernels (checks its structure)",
                             sr, case, precision, int(np.sum(counts))))
    else:
        checks.append({"through": "onnxruntime-cpu", "skipped": "ONNX Runtime's CPU provider has no bfloat16 "
                       "kernels; the engine check on the GPU runs the graph"})
    return checks


def validate(onnx_path: Path, reference: CVDVAE, precision: str, shapes: Sequence[tuple[int, int]],
             reduced: CVDVAE | None = None, consistent: bool = False
             ) -> tuple[ValidationReport, list[Case], str]:
    """The report, the FP32 reference cases for engines, and what computed those."""
    if precision == "fp32":
        report, cases = validate_fp32(onnx_path, reference, shapes, consistent)
        return report, cases, "onnxruntime-fp32"
    assert reduced is not None
    cases, inputs = [], []
    for batch, n in shapes:
        inputs.append(validation_inputs(reference, batch, n))
        sr, _, margin = torch_reference(reference, inputs[-1], consistent)
        cases.append(_case(inputs[-1], sr, margin))
    checks = reduced_precision_checks(onnx_path, reduced, precision, cases[-1], inputs[-1], consistent)
    backend = ", ".join(c["through"] for c in checks if "skipped" not in c)
    return ValidationReport(backend, precision, reduced_precision=checks), cases, "pytorch-fp32"
