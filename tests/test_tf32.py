"""TF32 off means float32 arithmetic in PyTorch's CUDA convolutions (cvdvae.tf32)."""

import pytest
import torch

from cvdvae.tf32 import set_tf32
from conftest import cuda_unavailable_reason, require_hardware


def tf32_allowed() -> bool:
    """Whether any CUDA matmul or convolution may use TF32 now."""
    return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)


@pytest.fixture
def restore_tf32():
    before = tf32_allowed()
    yield
    set_tf32(before)


def test_the_switch_reaches_what_pytorch_reads(restore_tf32):
    import subprocess
    import sys

    fresh = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cudnn.allow_tf32)"],
                           capture_output=True, text=True)
    assert fresh.stdout.strip() == "True"  # PyTorch's default: TF32 in convolutions
    set_tf32(False)
    assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    assert not tf32_allowed()
    set_tf32(True)
    assert torch.backends.cudnn.allow_tf32 and tf32_allowed()


def test_pytorch_can_still_export_after_the_switch(restore_tf32):
    """torch.export reads allow_tf32; a mix of PyTorch's two TF32 APIs would make that read fail."""
    set_tf32(False)
    program = torch.export.export(torch.nn.Conv2d(3, 3, 3), (torch.zeros(1, 3, 8, 8),))
    assert program is not None


@pytest.mark.gpu
def test_fp32_convolutions_on_cuda_are_fp32(restore_tf32, record_property):
    """Against a float64 convolution: float32 is within 1e-5 relative. TF32's error (10-bit
    mantissa, ~1e-3) is recorded in pytest.xml, not required: which cuDNN kernel runs (some are
    exact for these sizes) is cuDNN's choice."""
    require_hardware(cuda_unavailable_reason(), "TF32 on CUDA")
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 256, 32, 32, generator=gen), torch.randn(256, 256, 3, 3, generator=gen)
    exact = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)

    def relative_error():
        y = torch.nn.functional.conv2d(x.cuda(), w.cuda(), padding=1).double().cpu()
        return float((y - exact).abs().max() / exact.abs().max())

    set_tf32(False)
    fp32 = relative_error()
    record_property("fp32_relative_error", fp32)
    assert fp32 < 1e-5
    set_tf32(True)
    record_property("tf32_relative_error", relative_error())
