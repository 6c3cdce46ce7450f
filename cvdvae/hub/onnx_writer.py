"""ONNX models as protobuf bytes, written without the onnx package, the same bytes on every run.

Only what a small inference graph needs: a model with one opset, a graph of nodes with int, float,
string and int-list attributes, initializers as raw little-endian data (float32, int64) and typed
tensor inputs and outputs whose dims are numbers or names. Field numbers are those of
``onnx/onnx.proto`` (proto2: repeated numbers unpacked). Fields go out in field-number order and
attributes in name order, as protobuf and ``onnx.helper`` write them, so a parsed-and-reserialized
model has the same bytes (tests/test_onnx_writer.py checks each message against ``onnx.helper``).
"""

from __future__ import annotations

import struct
from typing import Mapping, Sequence

import numpy as np

# TensorProto.DataType
FLOAT, INT64 = 1, 7
DATA_TYPES = {np.dtype("float32"): FLOAT, np.dtype("int64"): INT64}
# AttributeProto.AttributeType -> (the type's number, the value's field)
ATTRIBUTE_KINDS = {float: (1, 2), int: (2, 3), str: (3, 4), "ints": (7, 8)}

Dim = int | str


def varint(n: int) -> bytes:
    """Base-128, low group first; a negative int64 as its 64-bit two's complement (ten bytes)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def number(field: int, n: int) -> bytes:
    return varint(field << 3) + varint(n)


def chunk(field: int, data: bytes | str) -> bytes:
    """A length-delimited field: bytes, a string (UTF-8) or an encoded message."""
    data = data.encode() if isinstance(data, str) else data
    return varint(field << 3 | 2) + varint(len(data)) + data


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto: dims (1), data_type (2), name (8), raw_data (9)."""
    array = np.asarray(array)
    if array.dtype not in DATA_TYPES:
        raise ValueError(f"{name}: dtype {array.dtype} is not one of {', '.join(map(str, DATA_TYPES))}")
    raw = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    return b"".join(number(1, d) for d in array.shape) + number(2, DATA_TYPES[array.dtype]) + chunk(8, name) + chunk(9, raw)


def attribute(name: str, value: int | float | str | Sequence[int]) -> bytes:
    """AttributeProto: name (1), the value (f 2, i 3, s 4, ints 8), type (20)."""
    kind = "ints" if isinstance(value, (list, tuple)) else type(value)
    if kind not in ATTRIBUTE_KINDS or (kind == "ints" and not all(type(v) is int for v in value)):
        raise ValueError(f"attribute {name}: {value!r} is not an int, a float, a string or a list of ints")
    type_number, field = ATTRIBUTE_KINDS[kind]
    if kind is float:
        encoded = varint(field << 3 | 5) + struct.pack("<f", value)
    elif kind is str:
        encoded = chunk(field, value)
    else:
        encoded = b"".join(number(field, v) for v in (value if kind == "ints" else [value]))
    return chunk(1, name) + encoded + number(20, type_number)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attributes) -> bytes:
    """NodeProto: input (1), output (2), name (3), op_type (4), attribute (5) in name order."""
    return (b"".join(chunk(1, i) for i in inputs) + b"".join(chunk(2, o) for o in outputs) + chunk(3, name)
            + chunk(4, op_type) + b"".join(chunk(5, attribute(k, v)) for k, v in sorted(attributes.items())))


def value_info(name: str, dims: Sequence[Dim], elem_type: int = FLOAT) -> bytes:
    """ValueInfoProto of a tensor: name (1), type (2) -> tensor_type (1) -> elem_type (1), shape (2) -> dim (1)
    -> dim_value (1) or dim_param (2)."""
    shape = b"".join(chunk(1, number(1, d) if isinstance(d, int) else chunk(2, d)) for d in dims)
    return chunk(1, name) + chunk(2, chunk(1, number(1, elem_type) + chunk(2, shape)))


def model(graph_name: str, nodes: Sequence[bytes], inputs: Sequence[bytes], outputs: Sequence[bytes],
          initializers: Sequence[bytes], *, ir_version: int, opset: int, producer: str, doc: str,
          metadata: Mapping[str, str]) -> bytes:
    """ModelProto: ir_version (1), producer_name (2), doc_string (6), graph (7), opset_import (8; the default
    domain, written as ""), metadata_props (14). GraphProto: node (1), name (2), initializer (5), input (11),
    output (12)."""
    graph = (b"".join(chunk(1, n) for n in nodes) + chunk(2, graph_name) + b"".join(chunk(5, t) for t in initializers)
             + b"".join(chunk(11, i) for i in inputs) + b"".join(chunk(12, o) for o in outputs))
    return (number(1, ir_version) + chunk(2, producer) + chunk(6, doc) + chunk(7, graph)
            + chunk(8, chunk(1, "") + number(2, opset))
            + b"".join(chunk(14, chunk(1, k) + chunk(2, v)) for k, v in metadata.items()))
