"""Mixed precision on OpenVINO's CPU plugin: which ops of the sampler graph form each precision
group, how a group is kept in float32 under a bf16 inference precision, and what actually ran.

Groups are found from the graph itself (data flow, static spatial sizes, weight names), so
every ``model.onnx`` this project ever exported can be pinned; nothing has to be re-exported:
- ``residual``: the adds into the residual stream (the blocks' residuals, the mixins, the state
  updates), where an activation meets another or a state the inputs do not change;
- ``latents``: ``z = exp(log_sigma) * eps + mu``, the temperature's shift of the log-std included;
- ``mixture_head``: the decoder's gain and bias, the output conv and the pixel sampling after it;
- ``edge_resolutions``: everything at the decoder's first (smallest) and last (largest) resolution;
- ``lr_encoder``: everything computed from ``lr`` alone;
- ``stream_writes``: the convolutions whose output is added into the residual stream or becomes
  a latent's mean and log-std (every block's last conv, ``c4``, and the latent projections);
  kept in float32 only with ``residual`` and ``mixture_head`` (``REQUIRES``).

Pinning uses OpenVINO's own mark, the ``DisablePrecisionConversion`` runtime attribute, which
the CPU plugin honours (its nodes keep their original precision). Python cannot construct it,
so the marked graph goes through the IR, where the attribute is serialised by name. The
plugin's own rewrites make some new nodes that do not inherit the mark (GELU's Erf chain among
them): ``runtime_precisions`` says what ran.
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

# The precision study's choice (benchmarks/bf16_study.py; its figures in benchmarks/results/*-bf16-study.md):
# of the sets measured, the one whose samples come closest to FP32's.
SHIPPED_FP32_GROUPS: tuple[str, ...] = ("residual", "latents", "mixture_head", "stream_writes")
# Its acceptance bound, by the rule every reduced-precision bound follows (export.precision):
# 3 dB below the worst sample the study measured, rounded down to a whole dB.
SHIPPED_MIN_PSNR_DB = 26.0
# OpenVINO 2026.4 fails at the first call ("Convolution node ... is not initialized") when a
# float32 conv writes into a bf16 add or a bf16 pixel head: measured, so refused up front.
REQUIRES = {"stream_writes": ("residual", "mixture_head")}

# Ops that only move, split or reshape values: noise that passed through them is still noise.
_DATA_MOVEMENT = {"Slice", "StridedSlice", "Reshape", "Squeeze", "Unsqueeze", "Split", "VariadicSplit", "Gather",
                  "Concat", "Convert", "Transpose", "Broadcast"}
# Weights of the convolutions that write into the stream (cvdvae.blocks.Block.c4, DecBlock.z_proj).
_STREAM_WRITERS = (".c4.weight", ".z_proj.weight")
_PIN_ATTRIBUTE = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16,bf16"}


def _is_constant(op: Any) -> bool:
    return op.get_type_name() == "Constant"


def _activations(ops: list[Any]) -> set[str]:
    """Names of the ops whose values depend on the inputs' values (not merely on their shapes:
    a conv's bias is reshaped to the shape of its output, and stays a constant)."""
    found: set[str] = set()
    for op in ops:
        kind = op.get_type_name()
        if kind == "Parameter" or (kind not in ("ShapeOf", "Constant")
                                   and any(s.get_friendly_name() in found for s in _sources(op))):
            found.add(op.get_friendly_name())
    return found


def _sources(op: Any) -> list[Any]:
    return [value.get_node() for value in op.input_values()]


def _image_like(op: Any) -> bool:
    """A rank-4 float output: [N, C, H, W]."""
    if op.get_output_size() == 0:
        return False
    shape = op.get_output_partial_shape(0)
    return shape.rank.is_static and shape.rank.get_length() == 4 and op.get_output_element_type(0).is_real()


def _spatial(op: Any) -> tuple[int, int] | None:
    """The static (H, W) of a rank-4 float output, else None."""
    if not _image_like(op):
        return None
    shape = op.get_output_partial_shape(0)
    return (shape[2].get_length(), shape[3].get_length()) if shape[2].is_static and shape[3].is_static else None


def _reaching(ops: list[Any], starts: Iterable[Any]) -> set[str]:
    """Names of the ops that depend, through any path, on one of ``starts`` (``ops`` in topological order)."""
    reached = {op.get_friendly_name() for op in starts}
    for op in ops:
        if any(source.get_friendly_name() in reached for source in _sources(op)):
            reached.add(op.get_friendly_name())
    return reached


def classify(model: Any) -> dict[str, set[str]]:
    """Group -> the friendly names of its ops, for an ``ov.Model`` read from a sampler graph."""
    ops = model.get_ordered_ops()
    params = {p.get_friendly_name(): p for p in model.get_parameters()}
    computed = [op for op in ops if not _is_constant(op) and op.get_type_name() not in ("Parameter", "Result")]
    from_noise = _reaching(ops, [params["noise"]])
    from_lr = _reaching(ops, [params["lr"]]) if "lr" in params else set()
    latents = _latent_draws(ops, computed, params["noise"])
    head = _mixture_head(ops, computed)
    groups = {
        "residual": _residual_adds(ops, computed) - latents - head,
        "latents": latents,
        "mixture_head": head,
        "edge_resolutions": _edge_resolutions(computed, from_noise),
        "lr_encoder": {op.get_friendly_name() for op in computed
                       if op.get_friendly_name() in from_lr and op.get_friendly_name() not in from_noise},
        "stream_writes": _stream_writes(computed),
    }
    names = {op.get_friendly_name() for op in computed}
    return {group: members & names for group, members in groups.items()}


def _latent_draws(ops: list[Any], computed: list[Any], noise: Any) -> set[str]:
    """``exp(log_sigma) * eps + mu``: the Exp, the Multiply by the noise as drawn (reached from the
    noise input through data movement only), the Add of the mean, and the temperature's shift
    ``log_sigma + log t`` where there is one."""
    eps = {noise.get_friendly_name()}
    for op in ops:
        if op.get_type_name() in _DATA_MOVEMENT and any(s.get_friendly_name() in eps for s in _sources(op)):
            eps.add(op.get_friendly_name())
    found: set[str] = set()
    for op in computed:
        sources = _sources(op)
        sigma = [s for s in sources if s.get_type_name() == "Exp"]
        # (the pixel head scales its noise by constants: no Exp, no latent draw)
        if op.get_type_name() != "Multiply" or not sigma or not any(s.get_friendly_name() in eps for s in sources):
            continue
        found |= {op.get_friendly_name(), sigma[0].get_friendly_name()}
        found |= {s.get_friendly_name() for s in _sources(sigma[0]) if s.get_type_name() == "Add"}
        found |= {c.get_node().get_friendly_name() for c in op.output(0).get_target_inputs()
                  if c.get_node().get_type_name() == "Add"}
    return found


def _mixture_head(ops: list[Any], computed: list[Any]) -> set[str]:
    """The decoder's gain (and bias), the output conv and everything after it."""
    found: set[str] = set()
    for op in computed:
        weights = [s.get_friendly_name() for s in _sources(op) if _is_constant(s)]
        if op.get_type_name() == "Convolution" and any("out_net" in name for name in weights):
            found |= _reaching(ops, [op])
        if any(name.endswith(("decoder.gain", "decoder.bias")) for name in weights):
            found.add(op.get_friendly_name())
    return found


def _residual_adds(ops: list[Any], computed: list[Any]) -> set[str]:
    """Adds of image shape into the stream: of an activation and another activation or a state
    that does not depend on the inputs (the first blocks work on learned initial states). Not a
    conv's bias add, nor the inputs' normalisation; the latent draws' and the pixel head's adds
    are taken out by ``classify``."""
    activations = _activations(ops)
    found = set()
    for op in computed:
        sources = _sources(op)
        if op.get_type_name() != "Add" or not _image_like(op) or len(sources) != 2:
            continue
        live = [s for s in sources if s.get_friendly_name() in activations]
        fixed = [s for s in sources if s.get_friendly_name() not in activations]
        state = len(live) == 1 and _image_like(fixed[0]) and not _is_constant(fixed[0]) \
            and live[0].get_type_name() not in ("Convolution", "Parameter")
        if len(live) == 2 or state:
            found.add(op.get_friendly_name())
    return found


def _stream_writes(computed: list[Any]) -> set[str]:
    """The convolutions named by ``_STREAM_WRITERS``, with their bias adds."""
    found: set[str] = set()
    for op in computed:
        if op.get_type_name() == "Convolution" and any(
                _is_constant(s) and s.get_friendly_name().endswith(_STREAM_WRITERS) for s in _sources(op)):
            found.add(op.get_friendly_name())
            found |= {c.get_node().get_friendly_name() for c in op.output(0).get_target_inputs()
                      if c.get_node().get_type_name() == "Add"}
    return found


def _edge_resolutions(computed: list[Any], from_noise: set[str]) -> set[str]:
    """Everything of the decoder (what the noise reaches) at its smallest and largest size."""
    sizes = {_spatial(op) for op in computed if op.get_friendly_name() in from_noise} - {None}
    if not sizes:
        return set()
    edges = {min(sizes), max(sizes)}
    return {op.get_friendly_name() for op in computed
            if op.get_friendly_name() in from_noise and _spatial(op) in edges}


def pin_to_fp32(ov: Any, model: Any, names: set[str]) -> Any:
    """``model`` with the ops named ``names`` kept in their original float32 whatever the
    inference precision: the mark written into the IR and the IR read back."""
    if not names:
        return model
    with tempfile.TemporaryDirectory(prefix="cvdvae-openvino-", ignore_cleanup_errors=True) as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        tree = ET.parse(xml)
        for layer in tree.getroot().iter("layer"):
            if layer.get("name") in names:
                info = layer.find("rt_info")
                if info is None:
                    info = ET.SubElement(layer, "rt_info")
                ET.SubElement(info, "attribute", _PIN_ATTRIBUTE)
        tree.write(xml)
        # read fully while the files exist (the weights are copied, not mapped)
        return ov.Core().read_model(str(xml), config={"ENABLE_MMAP": False})


def runtime_precisions(compiled: Any) -> dict[str, dict[str, int]]:
    """What the compiled model runs, as OpenVINO reports it: layer type -> precision -> count,
    for the layers that compute (convolutions and element-wise maths)."""
    counts: dict[str, Counter] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Convolution", "Eltwise"):
            counts.setdefault(kind, Counter())[info["runtimePrecision"].astype(str)] += 1
    return {kind: dict(sorted(c.items())) for kind, c in sorted(counts.items())}
