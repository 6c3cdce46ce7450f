"""``cvdvae.pt_reader`` against ``torch.load(weights_only=True)`` on the same bytes: the pinned MTCNN members,
files ``torch.save`` writes in both containers (strides, offsets, shared and expanded storages), and files
that must be refused (code in the pickle, other dtypes, big-endian, layouts outside their storage)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

from cvdvae.errors import WeightsError
from cvdvae.hub import mtcnn
from cvdvae.hub.home import cvdvae_home
from cvdvae.pt_reader import read_state_dict


def torch_bytes(obj, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def assert_reads_as_torch(data: bytes) -> None:
    """Same names in the same order, float32, the same shapes and the same bytes as torch.load gives."""
    want = torch.load(io.BytesIO(data), weights_only=True)
    got = read_state_dict(data, "test.pt")
    assert list(got) == list(want)
    for name, tensor in want.items():
        a = got[name]
        assert a.dtype == np.float32 and a.flags.c_contiguous and a.flags.owndata, name
        assert a.shape == tuple(tensor.shape) and a.tobytes() == tensor.contiguous().numpy().tobytes(), name


def test_the_pinned_mtcnn_members_read_as_torch_loads_them():
    wheel = cvdvae_home() / "mtcnn" / mtcnn.WHEEL
    if not wheel.is_file():
        pytest.skip(f"no {wheel}; fetch it with `cvdvae fetch mtcnn`")
    with zipfile.ZipFile(wheel) as zf:
        for member, _ in mtcnn.MEMBERS.values():
            data = zf.read(member)
            assert data[:2] == b"\x80\x02"  # the legacy stream, not a zip
            assert_reads_as_torch(data)


def layouts() -> OrderedDict:
    """A module's own state dict (its pickle sets ``_metadata`` on the OrderedDict) and views torch saves with
    their storage: transposed, sliced (an offset), expanded (stride 0), channels-last, 0-d, empty."""
    torch.manual_seed(0)
    state = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.PReLU(4), torch.nn.Linear(5, 2)).state_dict()
    base = torch.randn(6, 7)
    state.update(transposed=base.t(), sliced=base[2:5, 1:6:2], row=base[4], expanded=torch.randn(3, 1).expand(3, 4),
                 channels_last=torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
                 scalar=torch.tensor(1.5), empty=torch.zeros(0, 3), special=torch.tensor([-0.0, np.inf, np.nan]))
    assert state["sliced"].storage_offset() > 0 and not state["transposed"].is_contiguous()
    return state


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_files_torch_saves_read_as_torch_loads_them(legacy):
    assert_reads_as_torch(torch_bytes(layouts(), legacy))


# ------------------------------------------------------------------ containers written here, around any pickle
def zip_container(pkl: bytes, storages: dict[str, bytes], byteorder: bytes = b"little",
                  compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/byteorder", byteorder)
        for key, raw in storages.items():
            zf.writestr(f"archive/data/{key}", raw)
        zf.writestr("archive/version", "3\n")
    return buffer.getvalue()


def legacy_container(pkl: bytes, storages: dict[str, bytes], little_endian: bool = True) -> bytes:
    """torch's legacy stream (``torch/serialization.py``: ``_legacy_save``), with torch's own constants."""
    system = {"protocol_version": PROTOCOL_VERSION, "little_endian": little_endian,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
    head = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC_NUMBER, PROTOCOL_VERSION, system))
    body = b"".join(struct.pack("<q", len(raw) // 4) + raw for raw in storages.values())
    return head + pkl + pickle.dumps(list(storages), protocol=2) + body


class Storage:
    def __init__(self, key: str, values):
        self.key, self.raw = key, np.asarray(values, "<f4").tobytes()


class Tensor:
    """Pickles as torch pickles a tensor, with any layout."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple, hooks=(), *metadata):
        self.args = storage, offset, size, stride, False, OrderedDict(hooks), *metadata

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def crafted(obj, legacy: bool, view=None) -> bytes:
    """``obj`` (Storage and Tensor inside) in a container, storages as persistent ids as torch writes them."""
    storages = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, x):
            if not isinstance(x, Storage):
                return None
            storages[x.key] = x.raw
            numel = len(x.raw) // 4
            return ("storage", torch.FloatStorage, x.key, "cpu", numel) + ((view,) if legacy else ())

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(obj)
    return (legacy_container if legacy else zip_container)(buffer.getvalue(), storages)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_crafted_layout_reads_as_torch_reads_it_and_an_impossible_or_huge_one_is_refused(legacy):
    s = Storage("0", np.arange(12))
    good = {"t": Tensor(s, 1, (3, 2), (4, 1)), "zero_stride": Tensor(s, 11, (2, 3), (0, 0))}
    assert_reads_as_torch(crafted(good, legacy))
    np.testing.assert_array_equal(read_state_dict(crafted(good, legacy), "x")["t"], [[1, 2], [5, 6], [9, 10]])
    bad = crafted({"t": Tensor(s, 2, (3, 4), (4, 1))}, legacy)  # the last element would be 2 + 8 + 3 = 13
    with pytest.raises(RuntimeError):
        torch.load(io.BytesIO(bad), weights_only=True)
    with pytest.raises(WeightsError, match="reaches element 13 of a storage of 12"):
        read_state_dict(bad, "x")
    # a few bytes asking for a terabyte (stride 0), or one storage read again and again: refused before allocating
    big = Storage("1", np.zeros(4096))
    for huge in ({"t": Tensor(s, 0, (10**6, 10**6), (0, 0))}, {f"t{i}": Tensor(big, 0, (4096,), (1,)) for i in range(8)}):
        with pytest.raises(WeightsError, match="more elements than the file has bytes"):
            read_state_dict(crafted(huge, legacy), "x")


class RunsCode:
    def __init__(self, marker):
        self.command = f"touch {marker}"

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL + REDUCE, STACK_GLOBAL + REDUCE
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path, protocol, legacy):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"conv.weight": RunsCode(marker)}, protocol=protocol)
    pickle.loads(payload)  # the payload is real: plain pickle runs it
    assert marker.exists()
    marker.unlink()
    data = legacy_container(payload, {}) if legacy else zip_container(payload, {})
    with pytest.raises(WeightsError, match=rf"evil\.pt: refused {os.system.__module__}\.system"):
        read_state_dict(data, "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_what_a_float32_state_dict_does_not_hold_is_refused(legacy):
    refused = {"torch.DoubleStorage": {"w": torch.ones(2, dtype=torch.float64)},
               "torch._utils._rebuild_parameter": {"w": torch.nn.Parameter(torch.ones(2))},
               "not a flat state dict": [torch.ones(2)],
               "torch.Size": {"w": torch.ones(2), "shape": torch.Size([2])}}
    for message, obj in refused.items():
        with pytest.raises(WeightsError, match=f"x.pt: .*{message}"):
            read_state_dict(torch_bytes(obj, legacy), "x.pt")
    s = Storage("0", np.arange(4))
    for extra in ([(0, 1.0)],), ((), {"key": 1}):
        with pytest.raises(WeightsError, match="backward hooks, metadata"):
            read_state_dict(crafted({"w": Tensor(s, 0, (4,), (1,), *extra)}, legacy), "x.pt")
    if legacy:
        pkl = pickle.dumps({}, protocol=2)
        with pytest.raises(WeightsError, match="big-endian"):
            read_state_dict(legacy_container(pkl, {}, little_endian=False), "x.pt")
        with pytest.raises(WeightsError, match="storage view"):
            read_state_dict(crafted({"w": Tensor(s, 0, (4,), (1,))}, legacy, view=("0", 0, 4)), "x.pt")
        good = crafted({"w": Tensor(s, 0, (4,), (1,))}, legacy)
        for cut, message in [(good + b"\0", "bytes after the last storage"), (good[:-1], "storage 0 is cut short")]:
            with pytest.raises(WeightsError, match=message):
                read_state_dict(cut, "x.pt")
    else:
        pkl = torch_bytes({"w": torch.ones(2)})
        with zipfile.ZipFile(io.BytesIO(pkl)) as zf:
            members = {name.split("/", 1)[1]: zf.read(name) for name in zf.namelist()}
        storages = {"0": members["data/0"]}
        with pytest.raises(WeightsError, match="big-endian"):
            read_state_dict(zip_container(members["data.pkl"], storages, byteorder=b"big"), "x.pt")
        with pytest.raises(WeightsError, match="compressed"):
            read_state_dict(zip_container(members["data.pkl"], storages, compression=zipfile.ZIP_DEFLATED), "x.pt")
        with pytest.raises(WeightsError, match="storage 0 is missing"):
            read_state_dict(zip_container(members["data.pkl"], {"0": b"\0" * 4}), "x.pt")
        assert read_state_dict(zip_container(members["data.pkl"], storages), "x.pt")["w"].tolist() == [1, 1]
