"""Image-quality metrics for SR outputs: PSNR, SSIM (torch, batched) and LPIPS-alex (no torchvision).

PSNR/SSIM follow scikit-image (RGB, no border crop, inputs in [0, data_range]); LPIPS needs its
weights once: ``cvdvae fetch lpips-alex`` (loaded by ``cvdvae.hub.lpips.load_lpips``).
"""

from .image import MATLAB_GRAY_WEIGHTS, psnr, rgb_to_gray, ssim
from .lpips import LPIPS

__all__ = ["psnr", "ssim", "rgb_to_gray", "MATLAB_GRAY_WEIGHTS", "LPIPS"]
