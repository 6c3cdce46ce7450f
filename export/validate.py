"""Built-in validation: ONNX Runtime runs the exported graph, PyTorch runs the model, same inputs.

FP32 must agree within 1e-4 (max abs error on ``sr``). A pixel whose Gumbel-max mixture
choice flipped between the two (two mixture scores within rounding of each other) is a
legitimate, discrete difference: such pixels are counted separately and left out of the
max error. To know which pixels flipped, the ArgMax output is exposed from a copy of the
graph; nothing about the exported file changes.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch

from cvdvae.dmol import mixture_choice
from cvdvae.model import CVDVAE
from cvdvae.seeding import noise_torch

from . import cleanup
from .graph import SamplerGraph
from .precision import MIN_PSNR_DB, Agreement, compare

FP32_TOLERANCE = 1e-4
TEMPERATURES = (0.8, 0.0, 1.2, 0.5, 1.0)


@dataclass
class ShapeResult:
    batch: int
    n: int
    max_abs_error: float          # over pixels whose mixture choice agrees
    flipped_pixels: int
    pixels: int
    agreement: dict

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= FP32_TOLERANCE and self.flipped_pixels <= max(1, self.pixels // 1000)


@dataclass
class ValidationReport:
    backend: str
    precision: str
    shapes: list[ShapeResult] = field(default_factory=list)
    reduced_precision: dict | None = None
    tolerance: float = FP32_TOLERANCE

    @property
    def passed(self) -> bool:
        reduced = self.reduced_precision
        return all(s.passed for s in self.shapes) and (reduced is None or reduced["passed"])

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        parts = [f"B={s.batch} n={s.n}: max abs {s.max_abs_error:.2e}, {s.flipped_pixels} flipped of {s.pixels}"
                 for s in self.shapes]
        if self.reduced_precision:
            r = self.reduced_precision
            parts.append(f"{self.precision} vs fp32 ({r['through']}): PSNR {r['psnr_db']} dB, "
                         f"max abs {r['max_abs_error']:.2e}, {r['non_finite']} NaN/Inf")
        return f"validation {'passed' if self.passed else 'FAILED'} ({self.backend}): " + "; ".join(parts)


def validation_inputs(model: CVDVAE, batch: int, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random LR pixels, seeded contract noise shared by the images, temperatures incl. 0 and > 1."""
    size = model.config.image_size_y
    gen = torch.Generator().manual_seed(seed)
    lr = torch.randint(0, 256, (batch, 3, size, size), generator=gen).float()
    noise = noise_torch(seed, n, model.noise_layout.dim)[None].expand(batch, -1, -1).contiguous()
    temperature = torch.tensor([TEMPERATURES[k % len(TEMPERATURES)] for k in range(n)]).expand(batch, -1)
    return lr, noise, temperature.contiguous()


def torch_reference(model: CVDVAE, inputs: Sequence[torch.Tensor], consistent: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(sr, mixture choice [B*n, 1, H, W]) from the PyTorch model."""
    captured = []
    hook = model.decoder.out_net.register_forward_hook(lambda m, i, o: captured.append(o.float()))
    try:
        with torch.inference_mode():
            sr = SamplerGraph(model, consistent)(*inputs)
    finally:
        hook.remove()
    layout, noise = model.noise_layout, inputs[1]
    pixel = noise.reshape(-1, layout.dim)[:, layout.pixel_offset:]
    pixel = pixel.reshape(-1, layout.pixel_channels, layout.image_size, layout.image_size)
    return sr.numpy(), mixture_choice(captured[0], pixel, model.config.num_mixtures).numpy()


def onnxruntime_session(path: Path, expose_choice: bool = True):
    """A CPU (or CUDA, when available) session; with ``expose_choice`` the ArgMax is an output."""
    import onnxruntime as ort

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    if not expose_choice:
        return ort.InferenceSession(str(path), providers=providers)
    proto = onnx.load(str(path))
    argmax = [node for node in proto.graph.node if node.op_type == "ArgMax"]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(argmax[-1].output[0], onnx.TensorProto.INT64, None))
    if not cleanup.needs_external_data(proto):
        return ort.InferenceSession(proto.SerializeToString(), providers=providers)
    with tempfile.TemporaryDirectory() as tmp:  # ORT reads external data while it builds the session
        cleanup.save(proto, Path(tmp) / "model.onnx")
        return ort.InferenceSession(str(Path(tmp) / "model.onnx"), providers=providers)


def _feeds(inputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in zip(("lr", "noise", "temperature"), inputs)}


def validate_fp32(onnx_path: Path, model: CVDVAE, shapes: Sequence[tuple[int, int]],
                  consistent: bool = False) -> ValidationReport:
    session = onnxruntime_session(onnx_path)
    report = ValidationReport(backend="onnxruntime", precision="fp32")
    for batch, n in shapes:
        inputs = validation_inputs(model, batch, n)
        sr, choice = session.run(None, _feeds(inputs))
        ref_sr, ref_choice = torch_reference(model, inputs, consistent)
        flipped = (choice != ref_choice).reshape(batch, n, 1, *sr.shape[-2:])
        error = np.where(flipped, 0.0, np.abs(sr - ref_sr))
        report.shapes.append(ShapeResult(batch, n, float(error.max()), int(flipped.sum()), int(flipped.size),
                                         compare(sr, ref_sr).to_dict()))
    return report


def reduced_precision_agreement(onnx_path: Path, reduced: CVDVAE, reference: CVDVAE, precision: str,
                                shape: tuple[int, int] = (1, 2), consistent: bool = False) -> dict:
    """A reduced-precision graph against the FP32 model on the same inputs.

    Runs the graph through ONNX Runtime where it has the kernels (its CPU provider lacks
    most fp16/bf16 convolutions); otherwise the PyTorch model in that precision stands in.
    """
    inputs = validation_inputs(reference, *shape)
    ref_sr, _ = torch_reference(reference, inputs, consistent)
    try:
        sr = onnxruntime_session(onnx_path, expose_choice=False).run(["sr"], _feeds(inputs))[0]
        through = "onnxruntime"
    except Exception as err:  # noqa: BLE001 - ORT reports missing kernels as generic failures
        if "NOT_IMPLEMENTED" not in str(err) and "Could not find an implementation" not in str(err):
            raise
        sr, _ = torch_reference(reduced, inputs, consistent)
        through = f"pytorch-{precision}"
    agreement: Agreement = compare(sr, ref_sr)
    passed = agreement.non_finite == 0 and agreement.psnr_db >= MIN_PSNR_DB[precision]
    return {**agreement.to_dict(), "through": through, "batch": shape[0], "n": shape[1],
            "min_psnr_db": MIN_PSNR_DB[precision], "passed": passed}


def validate(onnx_path: Path, reference: CVDVAE, precision: str, shapes: Sequence[tuple[int, int]],
             reduced: CVDVAE | None = None, consistent: bool = False) -> ValidationReport:
    """FP32 graphs: the 1e-4 parity check per shape. FP16/BF16: PSNR against FP32, NaN scan."""
    if precision == "fp32":
        return validate_fp32(onnx_path, reference, shapes, consistent)
    assert reduced is not None
    agreement = reduced_precision_agreement(onnx_path, reduced, reference, precision, shapes[-1], consistent)
    return ValidationReport(backend=agreement["through"], precision=precision, reduced_precision=agreement)
