"""TF32 on or off for PyTorch's CUDA matmuls and convolutions.

PyTorch allows TF32 in cuDNN convolutions by default, so an "fp32" PyTorch run on an Ampere
or later GPU computes its convolutions with 10-bit mantissas. Every PyTorch CUDA path here
(evaluation, training, the benchmark) turns it off unless ``--tf32`` asks for it: FP32 means
FP32, so the same seed gives the same faces as ONNX Runtime and TensorRT.

Only the ``allow_tf32`` switches are used: PyTorch 2.9+ also has ``fp32_precision``, and
setting that one makes PyTorch's own later reads of ``allow_tf32`` (torch.export does one)
fail as a mix of the two APIs.
"""

from __future__ import annotations

import torch


def set_tf32(allowed: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
