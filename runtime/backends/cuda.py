"""CUDA for the TensorRT backend, through PyTorch: buffers, one stream, CUDA graphs, timing.

``runtime.backends.tensorrt`` touches CUDA only through a ``TorchCuda``; the tests drive that
backend on a CPU with a recording stand-in of the same shape (``tests/fakes.py``).
"""

from __future__ import annotations

from typing import Any, Callable

from cvdvae.seeding import noise_torch


class CaptureRefused(RuntimeError):
    """CUDA or TensorRT would not record the engine's work into a CUDA graph."""


class TorchCuda:
    """The current CUDA device with one non-default stream (graph capture needs one)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return self.stream.cuda_stream

    def info(self) -> dict[str, Any]:
        """The GPU's name and compute capability (what an engine is tied to)."""
        torch = self.torch
        index = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}

    def free_memory(self) -> int:
        return int(self.torch.cuda.mem_get_info()[0])

    def empty(self, count: int, dtype: str = "float32") -> Any:
        return self.torch.empty(max(count, 1), dtype=getattr(self.torch, dtype), device="cuda")

    def pinned(self, count: int) -> Any:
        return self.torch.empty(count, dtype=self.torch.float32, pin_memory=True)

    def noise(self, seed: int, n: int, dim: int, first_sample: int) -> Any:
        """The contract's noise [n, dim], computed on the device (no host copy of 21 MB per sample)."""
        with self.torch.cuda.stream(self.stream):
            return noise_torch(seed, n, dim, first_sample, device="cuda")

    def on_stream(self) -> Any:
        return self.torch.cuda.stream(self.stream)

    def capture(self, enqueue: Callable[[], bool]) -> Any:
        """Record ``enqueue`` into a CUDA graph without running it; ``CaptureRefused`` when it cannot be.

        A False from the enqueue during capture counts as a refusal: the same call just ran
        eagerly with the same shapes, so what failed is the recording, not the work.
        """
        torch = self.torch
        graph = torch.cuda.CUDAGraph()
        self.stream.synchronize()
        try:
            with torch.cuda.stream(self.stream):
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    recorded = enqueue()
                finally:
                    graph.capture_end()
        except RuntimeError as err:
            raise CaptureRefused(str(err).splitlines()[0] if str(err) else type(err).__name__) from None
        if not recorded:
            raise CaptureRefused("TensorRT's enqueue failed during stream capture")
        return graph

    def replay(self, graph: Any) -> None:
        with self.torch.cuda.stream(self.stream):
            graph.replay()

    def synchronize(self) -> None:
        self.stream.synchronize()

    def event(self) -> Any:
        event = self.torch.cuda.Event(enable_timing=True)
        event.record(self.stream)
        return event

    @staticmethod
    def seconds_between(start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1000
