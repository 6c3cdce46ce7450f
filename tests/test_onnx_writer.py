"""``cvdvae.hub.onnx_writer`` against the onnx package: each message byte for byte as ``onnx.helper`` and
protobuf serialize it, varints against the protobuf documentation's examples, and a small model that
``onnx.checker`` accepts and ONNX Runtime runs to numpy's answer."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cvdvae.hub import onnx_writer as w


def test_varints_as_the_protobuf_encoding_guide_writes_them():
    # protobuf.dev/programming-guides/encoding: 1 -> 01, 150 -> 96 01; int64 -1 -> ten bytes, ff x 9 then 01
    assert w.varint(0) == b"\x00" and w.varint(1) == b"\x01" and w.varint(150) == b"\x96\x01"
    assert w.varint(300) == b"\xac\x02" and w.varint(-1) == b"\xff" * 9 + b"\x01"
    assert w.varint(2**63 - 1) == b"\xff" * 8 + b"\x7f"
    assert w.number(1, 150) == b"\x08\x96\x01" and w.chunk(2, "testing") == b"\x12\x07testing"


@pytest.mark.parametrize("array", [np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),
                                   np.array(1, np.int64), np.array([0, -2, 5], np.int64),
                                   np.zeros((0, 4), np.float32)], ids=["float32", "scalar", "int64", "empty"])
def test_a_tensor_as_numpy_helper_writes_it(array):
    assert w.tensor("t", array) == numpy_helper.from_array(array, "t").SerializeToString()


@pytest.mark.parametrize("value", [1, -1, 0.25, "same_upper", [0, -3, 2]])
def test_an_attribute_as_onnx_helper_writes_it(value):
    assert w.attribute("a", value) == helper.make_attribute("a", value).SerializeToString()


def test_a_node_and_a_value_info_as_onnx_helper_writes_them():
    attrs = dict(strides=[2, 2], kernel_shape=[3, 3], ceil_mode=1, alpha=0.5, auto_pad="NOTSET")
    assert (w.node("MaxPool", ["x"], ["y"], "pool", **attrs)
            == helper.make_node("MaxPool", ["x"], ["y"], name="pool", **attrs).SerializeToString())
    assert (w.value_info("image", ["N", 3, "H", 48])
            == helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", 48]).SerializeToString())


def test_what_onnx_cannot_hold_here_is_refused():
    with pytest.raises(ValueError, match="float64"):
        w.tensor("t", np.zeros(2))
    for bad in (True, [1.5], None):
        with pytest.raises(ValueError, match="attribute a"):
            w.attribute("a", bad)


def test_a_model_as_onnx_helper_writes_it_and_runtime_runs_it():
    """y = softmax(x W^T + b) over axis 1, with a symbolic batch: checked, byte-equal to onnx.helper, and
    ONNX Runtime's answer equals numpy's."""
    rng = np.random.default_rng(1)
    weight, bias = rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    ours = w.model("tiny", [w.node("Gemm", ["x", "W", "b"], ["z"], "gemm", transB=1),
                            w.node("Softmax", ["z"], ["y"], "softmax", axis=1)],
                   [w.value_info("x", ["N", 5])], [w.value_info("y", ["N", 3])],
                   [w.tensor("W", weight), w.tensor("b", bias)], ir_version=8, opset=17, producer="cvdvae",
                   doc="a test", metadata={"format": "f1", "other": "x"})
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "b"], ["z"], name="gemm", transB=1),
                               helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=1)], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    theirs = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="cvdvae",
                               doc_string="a test")
    theirs.ir_version = 8
    helper.set_model_props(theirs, {"format": "f1", "other": "x"})
    onnx.checker.check_model(onnx.load_from_string(ours), full_check=True)
    assert ours == theirs.SerializeToString()
    x = rng.standard_normal((4, 5)).astype(np.float32)
    z = x.astype(np.float64) @ weight.T + bias
    want = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    (got,) = ort.InferenceSession(ours, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5)
