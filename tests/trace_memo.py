"""Each distinct graph traced once per test session (installed by conftest.py for every test).

Tracing (``export.graph.trace_to_onnx``: torch.export, then the ONNX exporter's optimiser) is
nearly all of an export's time, some 17 s for the demo model on a 2-core CPU, and many tests
export the same model with the same settings to check what comes after it: the cleanup, the
metadata, validation, the folder, the command line, the engine. The trace is a pure function of
the model's class, configuration, parameters and buffers and of the trace settings (two traces
of one model are byte-equal), so the memo is keyed on exactly those, and every step after the
trace still runs in every test. The graphs are kept under the session's temporary root, which
the xdist workers share, with one lock per graph so that two workers never trace the same one at
once. Processes a test starts (a command run as a subprocess) trace for themselves.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
from pathlib import Path
from typing import Callable, Iterator

import onnx
import torch


def fingerprint(model: torch.nn.Module, settings: dict) -> str:
    """sha256 of everything a trace depends on."""
    digest = hashlib.sha256()
    digest.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
    digest.update(model.config.to_json().encode())
    digest.update(repr(sorted(settings.items())).encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:  # non-persistent buffers too
        digest.update(f"\n{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def memoised(trace: Callable[..., onnx.ModelProto], folder: Path) -> Callable[..., onnx.ModelProto]:
    """``trace`` with its graphs kept in ``folder``; each call returns its own copy."""
    signature = inspect.signature(trace)
    folder.mkdir(parents=True, exist_ok=True)

    def trace_once(model, *args, **kwargs) -> onnx.ModelProto:
        bound = signature.bind(model, *args, **kwargs)
        bound.apply_defaults()
        settings = {name: value for name, value in bound.arguments.items() if name != "model"}
        key = fingerprint(model, settings)
        path = folder / f"{key}.onnx"
        with locked(folder / f"{key}.lock"):
            if not path.is_file():
                proto = trace(model, *args, **kwargs)
                partial = path.with_suffix(".partial")
                partial.write_bytes(proto.SerializeToString())
                partial.replace(path)
                return proto
        return onnx.load_from_string(path.read_bytes())

    return trace_once
