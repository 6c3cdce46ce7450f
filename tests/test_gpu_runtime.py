"""The real CUDA path on a GPU: ``runtime.backends.cuda.TorchCuda`` under the TensorRT backend,
with a stand-in engine whose enqueue runs the demo model's PyTorch CUDA kernels on the stream it
is given. Every other test replaces TorchCuda with ``tests/fakes.FakeCuda``, whose stream and
synchronisation are no-ops; here the stream, the capture and the replays are CUDA's own.
The oracle is the demo model called directly on the contract's noise."""

import numpy as np
import pytest
import torch
from conftest import cuda_unavailable_reason, require_hardware
from fakes import FakeContext, FakeEngine, FakeTensorRT, engine_spec, toy_meta, write_plan

from cvdvae.random_weights import demo_model
from cvdvae.seeding import noise_torch
from runtime.backends.cuda import TorchCuda
from runtime.backends.tensorrt import TensorRTBackend

pytestmark = pytest.mark.gpu


class RecordingCuda(TorchCuda):
    """TorchCuda that remembers its allocations by address, as an engine reads its bindings."""

    recording = None  # (FakeTensorRT's capture switch: a real capture records the kernels themselves)

    def __init__(self) -> None:
        super().__init__()
        self.memory: dict[int, torch.Tensor] = {}

    def empty(self, count: int, dtype: str = "float32") -> torch.Tensor:
        tensor = super().empty(count, dtype)
        self.memory[tensor.data_ptr()] = tensor
        return tensor


class ModelContext(FakeContext):
    """Runs the demo model on CUDA from the bound input buffers into the bound ``sr``."""

    def execute_async_v3(self, stream: int) -> bool:
        trt = self.trt
        assert stream == trt.cuda.stream_handle and torch.cuda.current_stream().cuda_stream == stream
        trt.enqueues += 1

        def bound(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            return trt.cuda.memory[self.addresses[name]][:int(np.prod(shape))].view(*shape)

        batch, n = self.shapes["noise"][:2]
        noise, t = bound("noise", self.shapes["noise"]), bound("temperature", (batch, n))
        with torch.inference_mode():
            sr = trt.model(bound("lr", self.shapes["lr"]), noise, t)
        bound("sr", tuple(sr.shape)).copy_(sr)
        bound("non_finite", (batch, n)).zero_()
        if trt.synchronise and torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()  # illegal while capturing: CUDA refuses the capture
        return True


class ModelEngine(FakeEngine):
    def create_execution_context(self, strategy: int) -> FakeContext:
        context = ModelContext(self)
        self.contexts.append(context)
        return context


class ModelTensorRT(FakeTensorRT):
    def deserialize_cuda_engine(self, plan: bytes) -> FakeEngine:
        import json

        return ModelEngine(self, json.loads(plan))


@pytest.fixture
def gpu_backend(tmp_path):
    require_hardware(cuda_unavailable_reason(), "the TensorRT backend's real CUDA path")
    model = demo_model().cuda().eval()
    dim, lr_size, hr_size = model.noise_layout.dim, model.config.image_size_y, model.config.image_size

    def make(synchronise: bool = False):
        trt = ModelTensorRT(RecordingCuda())
        trt.model, trt.synchronise, trt.enqueues = model, synchronise, 0
        files = write_plan(tmp_path / f"engine-{synchronise}", engine_spec(lr_size, hr_size, dim),
                           toy_meta(lr_size, hr_size, dim), trt)
        return TensorRTBackend(files, trt=trt, cuda=trt.cuda), trt

    return model, make


def direct(model, lr: np.ndarray, seed: int, temperature: np.ndarray) -> np.ndarray:
    batch, n = len(lr), len(temperature)
    noise = noise_torch(seed, n, model.noise_layout.dim, device="cuda")[None].expand(batch, -1, -1)
    t = torch.as_tensor(temperature, device="cuda")[None].expand(batch, -1).contiguous()
    with torch.inference_mode():
        return model(torch.as_tensor(lr, device="cuda"), noise.contiguous(), t).cpu().numpy()


def test_one_capture_and_three_replays_equal_the_model_run_directly(gpu_backend):
    model, make = gpu_backend
    backend, trt = make()
    lr = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8)).astype(np.float32)
    for call in range(4):  # the same shape: eager, then captured, then replayed on new inputs
        t = np.array([0.8, 0.3 + 0.1 * call], np.float32)
        got = backend.sample(lr, call, 0, t).samples
        np.testing.assert_allclose(got, direct(model, lr, call, t), atol=1e-5)
    assert backend.cuda_graphs == "on"
    assert trt.enqueues == 2  # the eager call and the capture; the replays run the recorded kernels


def test_an_enqueue_that_synchronises_while_captured_is_a_refused_capture_and_eager_calls_stay_right(gpu_backend):
    model, make = gpu_backend
    backend, trt = make(synchronise=True)
    lr = np.random.default_rng(1).integers(0, 256, (1, 3, 8, 8)).astype(np.float32)
    for call in range(3):
        t = np.array([0.5, 1.0], np.float32)
        np.testing.assert_allclose(backend.sample(lr, call, 0, t).samples, direct(model, lr, call, t), atol=1e-5)
    assert backend.cuda_graphs.startswith("off"), backend.cuda_graphs
    assert trt.enqueues == 4  # eager, the refused capture, then eager twice: no replay of a broken graph
