"""Tracing the sampler into one ONNX graph (docs/contract/graph.md).

Inputs ``lr`` [B, 3, h, w], ``noise`` [B, n, D], ``temperature`` [B, n]; outputs ``sr``
[B, n, 3, H, W] and ``non_finite`` [B, n] (how many NaN/Inf values each sample's pixel-head
parameters and pixels held, counted before any clamp: ``CVDVAE.sample``); B and n dynamic,
everything float32 at the boundary. A prior-only VD-VAE
traces to the unconditional graph, the same without ``lr`` (section 3.1). We use the
``torch.export`` (dynamo) exporter, the maintained one, which records the dynamic
dimensions symbolically (the legacy tracer would bake in the example batch), at opset 18
(22 for bfloat16, the first where Conv takes it): GELU stays an exact Erf decomposition,
which every TensorRT 10.x and 11.x parses.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx
import torch
from torch import nn

from cvdvae.model import CVDVAE

OUTPUT_NAMES = ("sr", "non_finite")
DEFAULT_OPSET = 18
MIN_OPSET = {"bf16": 22}  # ONNX Conv accepts bfloat16 from opset 22


MAX_DIM = 4096  # upper bound the exporter may assume for B and n


def default_opset(precision: str) -> int:
    return max(DEFAULT_OPSET, MIN_OPSET.get(precision, 0))


def input_names(model: CVDVAE) -> tuple[str, ...]:
    return ("lr", "noise", "temperature") if model.config.has_lr_encoder else ("noise", "temperature")


class SamplerGraph(nn.Module):
    """The traced function: positional (lr, noise, temperature) -> (sr, non_finite), options frozen."""

    def __init__(self, model: CVDVAE, consistent: bool = False):
        super().__init__()
        self.model = model
        self.consistent = consistent

    def forward(self, lr: torch.Tensor, noise: torch.Tensor,
                temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.sample(lr, noise, temperature, consistent=self.consistent)


class PriorSamplerGraph(nn.Module):
    """The unconditional graph's function: (noise, temperature) -> (sr, non_finite)."""

    def __init__(self, model: CVDVAE):
        super().__init__()
        self.model = model

    def forward(self, noise: torch.Tensor, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.sample(None, noise, temperature)


def sampler_graph(model: CVDVAE, consistent: bool = False) -> nn.Module:
    """What is traced: the conditional sampler, or the prior's when there is no LR encoder."""
    return SamplerGraph(model, consistent) if model.config.has_lr_encoder else PriorSamplerGraph(model)


def example_inputs(model: CVDVAE, batch: int = 2, n: int = 3) -> tuple[torch.Tensor, ...]:
    """Tracing inputs. B, n >= 2 so that no size-1 broadcast gets specialised into the graph."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, n, model.noise_layout.dim, generator=gen)
    temperature = torch.full((batch, n), 0.8)
    if not model.config.has_lr_encoder:
        return noise, temperature
    size = model.config.image_size_y
    return torch.randint(0, 256, (batch, 3, size, size), generator=gen).float(), noise, temperature


def trace_to_onnx(model: CVDVAE, *, consistent: bool = False, opset: int = DEFAULT_OPSET,
                  verbose: bool = False) -> onnx.ModelProto:
    """The raw exported graph (weights inline), before cleanup."""
    graph = sampler_graph(model.eval(), consistent).eval()
    batch, n = torch.export.Dim("B", min=1, max=MAX_DIM), torch.export.Dim("n", min=1, max=MAX_DIM)
    names = input_names(model)
    dynamic = {k: v for k, v in {"lr": {0: batch}, "noise": {0: batch, 1: n}, "temperature": {0: batch, 1: n}}.items()
               if k in names}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet, warnings.catch_warnings(), _quiet_logger("torch.onnx", verbose), torch.no_grad():
        if not verbose:
            warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, example_inputs(model), input_names=list(names), output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic, opset_version=opset, dynamo=True, external_data=False,
            verbose=verbose,
        )
    return program.model_proto


@contextlib.contextmanager
def _quiet_logger(name: str, verbose: bool):
    """The exporter logs harmless warnings (e.g. torchvision ops it skips) unless verbose."""
    logger = logging.getLogger(name)
    level = logger.level
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def random_ops(proto: onnx.ModelProto) -> list[str]:
    """Any random-number operator: the graph must have none (all randomness is ``noise``)."""
    return sorted({node.op_type for node in proto.graph.node if node.op_type.startswith("Random")
                   or node.op_type in ("Multinomial", "Bernoulli")})
