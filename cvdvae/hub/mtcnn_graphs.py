"""MTCNN's three networks (Zhang et al. 2016: P-Net, R-Net, O-Net) as ONNX graphs built from numpy weights.

The layers and their names are facenet-pytorch's (``facenet_pytorch/models/mtcnn.py``, MIT),
whose state dicts ``cvdvae.hub.mtcnn`` reads. Every graph takes

* ``image``: float32 ``[N, 3, H, W]``, RGB, normalised as ``(x - 127.5) / 128`` (x in 0..255);
  P-Net takes any ``H, W >= 12``, R-Net exactly 24x24, O-Net exactly 48x48,

and answers

* ``face_probability``: float32, softmax over (not a face, face), the second entry;
  P-Net ``[N, h, w]`` (one per 12x12 window at stride 2: ``h = ceil((H - 2) / 2) - 4``), R/O-Net ``[N]``;
* ``regression``: float32, offsets of the box edges (x0, y0, x1, y1) in units of the box's
  width (x) and height (y); P-Net ``[N, 4, h, w]``, R/O-Net ``[N, 4]``;
* ``landmarks`` (O-Net only): float32 ``[N, 5, 2]``, (x, y) as fractions of the crop's width and
  height, in the order of ``runtime.faces.detector.DetectedFace.landmarks``.

Conventions copied from facenet so the weights mean the same here: MaxPool rounds its output
size up (``ceil_mode``), PReLU has one slope per channel, and the dense layers read the conv
features in (W, H, C) order (facenet's ``permute(0, 3, 2, 1)``: the weights come from the
original MATLAB/Caffe model, which saw transposed images).

The graphs are written by ``cvdvae.hub.onnx_writer``, not the onnx package: ``runtime.faces`` imports
the names here, and ``cvdvae fetch mtcnn`` builds the graphs, on an install without onnx or torch.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import numpy as np

from . import onnx_writer

FORMAT = "cvdvae-mtcnn-onnx-2"  # bump when a graph's bytes change: present graphs are then re-made
OPSET = 17
IR_VERSION = 8  # the IR of opset 17's onnx release (1.12): every ONNX Runtime since reads it
INPUT = "image"
PROBABILITY, REGRESSION, LANDMARKS = "face_probability", "regression", "landmarks"
FILES = {"pnet": "pnet.onnx", "rnet": "rnet.onnx", "onet": "onet.onnx"}
CROP_SIZES = {"rnet": 24, "onet": 48}


def _conv(name: str, cin: int, cout: int, k: int) -> tuple:
    return ("conv", name, (cout, cin, k, k))


def _prelu(name: str, c: int) -> tuple:
    return ("prelu", name, (c,))


def _dense(name: str, fin: int, fout: int) -> tuple:
    return ("dense", name, (fout, fin))


def _pool(k: int) -> tuple:
    return ("pool", k)


FLATTEN = ("flatten",)

# trunk layers, then one head per output (the face head is followed by a softmax)
NETS: dict[str, dict[str, Any]] = {
    "pnet": dict(trunk=[_conv("conv1", 3, 10, 3), _prelu("prelu1", 10), _pool(2),
                        _conv("conv2", 10, 16, 3), _prelu("prelu2", 16),
                        _conv("conv3", 16, 32, 3), _prelu("prelu3", 32)],
                 heads={PROBABILITY: _conv("conv4_1", 32, 2, 1), REGRESSION: _conv("conv4_2", 32, 4, 1)}),
    "rnet": dict(trunk=[_conv("conv1", 3, 28, 3), _prelu("prelu1", 28), _pool(3),
                        _conv("conv2", 28, 48, 3), _prelu("prelu2", 48), _pool(3),
                        _conv("conv3", 48, 64, 2), _prelu("prelu3", 64), FLATTEN,
                        _dense("dense4", 576, 128), _prelu("prelu4", 128)],
                 heads={PROBABILITY: _dense("dense5_1", 128, 2), REGRESSION: _dense("dense5_2", 128, 4)}),
    "onet": dict(trunk=[_conv("conv1", 3, 32, 3), _prelu("prelu1", 32), _pool(3),
                        _conv("conv2", 32, 64, 3), _prelu("prelu2", 64), _pool(3),
                        _conv("conv3", 64, 64, 3), _prelu("prelu3", 64), _pool(2),
                        _conv("conv4", 64, 128, 2), _prelu("prelu4", 128), FLATTEN,
                        _dense("dense5", 1152, 256), _prelu("prelu5", 256)],
                 heads={PROBABILITY: _dense("dense6_1", 256, 2), REGRESSION: _dense("dense6_2", 256, 4),
                        LANDMARKS: _dense("dense6_3", 256, 10)}),
}


def shapes(net: str) -> dict[str, tuple[int, ...]]:
    """The state dict ``net`` needs: parameter name -> shape (conv OIHW, dense (out, in))."""
    out = {}
    for layer in [*NETS[net]["trunk"], *NETS[net]["heads"].values()]:
        if layer[0] in ("conv", "dense"):
            out[f"{layer[1]}.weight"], out[f"{layer[1]}.bias"] = layer[2], layer[2][:1]
        elif layer[0] == "prelu":
            out[f"{layer[1]}.weight"] = layer[2]
    return out


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, shapes and little-endian float32 bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name], dtype="<f4")
        h.update(f"{name}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ building
class _Graph:
    """Appends nodes and initializers (encoded, ``cvdvae.hub.onnx_writer``); each ``add`` returns its output's name."""

    def __init__(self, weights: Mapping[str, np.ndarray]):
        self.weights, self.nodes, self.initializers, self.count = weights, [], [], 0

    def param(self, name: str, shape: tuple[int, ...] | None = None) -> str:
        a = np.asarray(self.weights[name], dtype=np.float32)
        return self.const(name, a.reshape(shape or a.shape))

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(onnx_writer.tensor(name, value))
        return name

    def add(self, op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        self.count += 1
        output = output or f"{op.lower()}_{self.count}"
        self.nodes.append(onnx_writer.node(op, inputs, [output], f"{op}_{self.count}", **attrs))
        return output

    def layer(self, x: str, layer: tuple, conv_features: bool, output: str | None = None) -> str:
        kind = layer[0]
        if kind == "conv":
            k = layer[2][-1]
            return self.add("Conv", [x, self.param(f"{layer[1]}.weight"), self.param(f"{layer[1]}.bias")], output,
                            kernel_shape=[k, k])
        if kind == "dense":
            return self.add("Gemm", [x, self.param(f"{layer[1]}.weight"), self.param(f"{layer[1]}.bias")], output,
                            transB=1)
        if kind == "prelu":  # slope [C, 1, 1] broadcasts over [N, C, H, W]; [C] over [N, C]
            shape = (layer[2][0], 1, 1) if conv_features else None
            return self.add("PRelu", [x, self.param(f"{layer[1]}.weight", shape)], output)
        if kind == "pool":
            return self.add("MaxPool", [x], output, kernel_shape=[layer[1]] * 2, strides=[2, 2], ceil_mode=1)
        assert kind == "flatten", layer
        return self.add("Flatten", [self.add("Transpose", [x], perm=[0, 3, 2, 1])], output, axis=1)


def build(net: str, weights: Mapping[str, np.ndarray]) -> bytes:
    """The ONNX model of ``net`` with ``weights`` (a state dict), serialized: the same bytes for the same weights."""
    spec, g = NETS[net], _Graph(weights)
    x, conv_features = INPUT, True
    for layer in spec["trunk"]:
        conv_features &= layer[0] != "flatten"
        x = g.layer(x, layer, conv_features)
    size = CROP_SIZES.get(net)
    batch, spatial = (["N", "h", "w"], ["N", 4, "h", "w"]) if size is None else (["N"], ["N", 4])
    outputs = [onnx_writer.value_info(PROBABILITY, batch), onnx_writer.value_info(REGRESSION, spatial)]
    logits = g.layer(x, spec["heads"][PROBABILITY], conv_features)
    softmax = g.add("Softmax", [logits], axis=1)
    g.add("Gather", [softmax, g.const("face_class", np.array(1, np.int64))], PROBABILITY, axis=1)
    g.layer(x, spec["heads"][REGRESSION], conv_features, REGRESSION)
    if LANDMARKS in spec["heads"]:  # dense6_3 gives x0..x4 then y0..y4: -> [N, 5, (x, y)]
        flat = g.layer(x, spec["heads"][LANDMARKS], conv_features)
        pairs = g.add("Reshape", [flat, g.const("xy_by_point", np.array([0, 2, 5], np.int64))])
        g.add("Transpose", [pairs], LANDMARKS, perm=[0, 2, 1])
        outputs.append(onnx_writer.value_info(LANDMARKS, ["N", 5, 2]))
    image = onnx_writer.value_info(INPUT, ["N", 3, "H", "W"] if size is None else ["N", 3, size, size])
    return onnx_writer.model(net, g.nodes, [image], outputs, g.initializers, ir_version=IR_VERSION, opset=OPSET,
                             producer="cvdvae", doc=f"MTCNN {net} ({FORMAT}); see cvdvae/hub/mtcnn_graphs.py",
                             metadata={"format": FORMAT})
