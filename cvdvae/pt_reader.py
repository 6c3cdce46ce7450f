"""Float32 state dicts from PyTorch files (``torch.save``), read with numpy alone: no torch, no code runs.

``torch.save`` writes the same pickle in one of two containers:

* the zip (torch >= 1.6): ``<root>/data.pkl``, each storage as ``<root>/data/<key>`` (its raw bytes,
  stored uncompressed), ``<root>/byteorder`` (``little``; older torch wrote none and meant the
  machine's order, which is read as little here);
* the legacy stream (facenet-pytorch's ``.pt`` files): five pickles in a row (the magic number, the
  protocol version 1001, system facts with ``little_endian``, the object, the list of storage keys),
  then each storage in the order of that list as an int64 element count and its raw bytes.

The object pickle may name exactly three globals: ``collections.OrderedDict`` (the state dict),
``torch._utils._rebuild_tensor_v2`` (a tensor: storage, offset, size, stride, requires_grad, no
backward hooks) and ``torch.FloatStorage`` (float32, inside a persistent id ``('storage',
torch.FloatStorage, key, location, numel[, None])``); the torch names resolve to stand-ins here
that only record what they are given, so torch is never imported. Any other global is refused by
name before anything is looked up; so are big-endian files, storage views (legacy
``view_metadata``), tensors that reach outside their storage, and tensors holding in all more
elements than the file has bytes (expanded or repeated views: a small file cannot ask for a huge
allocation). Strides and offsets are honoured (a transposed or sliced tensor reads as torch reads
it); every array comes back C-contiguous, float32, owning its memory. Failures are
``WeightsError`` naming the file.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np

from .errors import WeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
FLOAT_BYTES = 4


class _Storage(NamedTuple):
    key: str
    numel: int


class _Tensor(NamedTuple):
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple


class _FloatStorage:
    """Stands for ``torch.FloatStorage``: not callable, so a pickle can only name it."""


def _rebuild_tensor(storage, offset, shape, stride, requires_grad, hooks, metadata=None) -> _Tensor:
    if not isinstance(storage, _Storage) or not isinstance(requires_grad, bool) or hooks != {} or metadata:
        raise WeightsError("a tensor with backward hooks, metadata or no float32 storage")
    return _Tensor(storage, offset, tuple(shape), tuple(stride))


ALLOWED = {("collections", "OrderedDict"): OrderedDict,
           ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
           ("torch", "FloatStorage"): _FloatStorage}


class _Unpickler(pickle.Unpickler):
    """Resolves the ``ALLOWED`` globals and float32 storage persistent ids; with ``plain`` (the legacy header
    and key list) neither."""

    def __init__(self, stream: io.BytesIO, plain: bool = False):
        super().__init__(stream)
        self.plain, self.storages = plain, {}

    def find_class(self, module: str, name: str) -> Any:
        if self.plain or (module, name) not in ALLOWED:
            raise WeightsError(f"refused {module}.{name} (a weights-only float32 state dict names only "
                               f"{', '.join('.'.join(key) for key in ALLOWED)})")
        return ALLOWED[module, name]

    def persistent_load(self, pid: Any) -> _Storage:
        if (self.plain or not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage"
                or pid[1] is not _FloatStorage or not isinstance(pid[2], str) or not _is_size(pid[4])):
            raise WeightsError(f"refused persistent id {pid!r:.80} (only float32 storages are read)")
        if len(pid) == 6 and pid[5] is not None:
            raise WeightsError(f"refused storage view {pid[5]!r:.80} (legacy view_metadata)")
        storage = _Storage(pid[2], pid[4])
        if self.storages.setdefault(storage.key, storage) != storage:
            raise WeightsError(f"storage {storage.key} is given two sizes")
        return storage


def _is_size(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _unpickle(stream: io.BytesIO, plain: bool = False) -> tuple[Any, dict[str, _Storage]]:
    unpickler = _Unpickler(stream, plain)
    return unpickler.load(), unpickler.storages


def _legacy(data: bytes) -> tuple[Any, dict[str, bytes]]:
    stream = io.BytesIO(data)
    magic, protocol, system = (_unpickle(stream, plain=True)[0] for _ in range(3))
    if magic != LEGACY_MAGIC or protocol != LEGACY_PROTOCOL or not isinstance(system, dict):
        raise WeightsError("neither a zip nor a legacy torch file")
    if system.get("little_endian") is not True:
        raise WeightsError("big-endian torch files are not read")
    obj, storages = _unpickle(stream)
    keys = _unpickle(stream, plain=True)[0]
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise WeightsError("the storage list does not match the storages the tensors use")
    raw = {}
    for key in keys:
        header, numel = stream.read(8), storages[key].numel
        if len(header) != 8 or struct.unpack("<q", header)[0] != numel:
            raise WeightsError(f"storage {key} does not start with its element count, {numel}")
        raw[key] = stream.read(numel * FLOAT_BYTES)
        if len(raw[key]) != numel * FLOAT_BYTES:
            raise WeightsError(f"storage {key} is cut short")
    if stream.read(1):
        raise WeightsError("bytes after the last storage")
    return obj, raw


def _zip(data: bytes) -> tuple[Any, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos.values()):
            raise WeightsError("compressed members (torch stores them uncompressed)")
        pickles = [name for name in infos if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsError("no single <root>/data.pkl")
        root = pickles[0][:-len("data.pkl")]
        if f"{root}byteorder" in infos and zf.read(f"{root}byteorder") != b"little":
            raise WeightsError("big-endian torch files are not read")
        obj, storages = _unpickle(io.BytesIO(zf.read(pickles[0])))
        raw = {}
        for key, storage in storages.items():
            info = infos.get(f"{root}data/{key}")
            if info is None or info.file_size != storage.numel * FLOAT_BYTES:
                raise WeightsError(f"storage {key} is missing or does not hold {storage.numel} float32 elements")
            raw[key] = zf.read(info)
    return obj, raw


def _array(tensor: _Tensor, raw: bytes, budget: int) -> np.ndarray:
    """The tensor read from its storage's bytes, if it holds at most ``budget`` elements."""
    shape, stride, offset = tensor.shape, tensor.stride, tensor.offset
    if len(shape) != len(stride) or not all(map(_is_size, (*shape, *stride, offset))):
        raise WeightsError(f"size {shape}, stride {stride}, offset {offset} is not a tensor layout")
    if math.prod(shape) > budget:
        raise WeightsError("the tensors hold more elements than the file has bytes (expanded or repeated views)")
    storage = np.frombuffer(raw, dtype="<f4")
    if 0 in shape:
        return np.zeros(shape, np.float32)
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride))
    if last >= storage.size:
        raise WeightsError(f"size {shape}, stride {stride}, offset {offset} reaches element {last} "
                           f"of a storage of {storage.size}")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape, [s * FLOAT_BYTES for s in stride],
                                           writeable=False)
    return np.array(view, dtype=np.float32, order="C")


def read_state_dict(data: bytes, what: str) -> dict[str, np.ndarray]:
    """The float32 tensors of the state dict ``data`` (a ``torch.save`` file), by name; ``what`` names it in errors."""
    try:
        obj, raw = _zip(data) if data[:4] == b"PK\x03\x04" else _legacy(data)
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items()):
            raise WeightsError("not a flat state dict (names -> tensors)")
        arrays, budget = {}, len(data)
        for name, tensor in obj.items():
            arrays[name] = _array(tensor, raw[tensor.storage.key], budget)
            budget -= arrays[name].size
        return arrays
    except WeightsError as err:
        raise WeightsError(f"{what}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a malformed pickle or zip raises many types
        raise WeightsError(f"{what}: not a weights-only torch file ({type(err).__name__}: {err})") from None
