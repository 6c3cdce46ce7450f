"""Graph hygiene with maintained tools: onnxslim folding, the full checker, shape inference.

Also the one place that knows about the 2 GiB protobuf limit: larger graphs are saved and
checked through a path with their weights in an external ``.data`` file.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import onnx

PROTOBUF_LIMIT = 2**31 - 1


def needs_external_data(proto: onnx.ModelProto) -> bool:
    return proto.ByteSize() > PROTOBUF_LIMIT


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-node removal and shape-op simplification (onnxslim)."""
    import onnxslim

    with contextlib.redirect_stdout(io.StringIO()):
        return onnxslim.slim(proto)


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Strict shape and type inference (through a temporary file above 2 GiB)."""
    if not needs_external_data(proto):
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        save(proto, path)
        onnx.shape_inference.infer_shapes_path(str(path), check_type=True, strict_mode=True, data_prop=True)
        return onnx.load(str(path))


def check(path: Path) -> None:
    """The full checker on the saved file (a path, so external data works too)."""
    onnx.checker.check_model(str(path), full_check=True)


def save(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``proto`` to ``path`` (plus ``path.data`` above 2 GiB); returns the files written."""
    path = Path(path)
    if needs_external_data(proto):
        data = path.with_name(path.name + ".data")
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        return [path, data]
    onnx.save_model(proto, str(path))
    return [path]
