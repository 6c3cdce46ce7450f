"""Image-quality metrics for SR outputs: PSNR, SSIM (torch, batched), LPIPS-alex (no torchvision) and
BRISQUE (numpy, ``cvdvae.metrics.brisque``: no torch).

PSNR/SSIM follow scikit-image (RGB, no border crop, inputs in [0, data_range]); LPIPS needs its
weights once: ``cvdvae fetch lpips-alex`` (loaded by ``cvdvae.hub.lpips.load_lpips``); BRISQUE its
model: ``cvdvae fetch brisque``. The torch metrics are imported on first use, so BRISQUE runs where
torch is not installed.
"""

from typing import Any

__all__ = ["psnr", "ssim", "rgb_to_gray", "MATLAB_GRAY_WEIGHTS", "LPIPS"]


def __getattr__(name: str) -> Any:
    if name == "LPIPS":
        from .lpips import LPIPS

        return LPIPS
    if name in __all__:
        from . import image

        return getattr(image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
