"""The settings one call may ask for and their bounds, shared by the pipeline, the commands and the
service (which extends ``Limits`` with its per-request budget, ``runtime.serve.options``).

Plain values only, so that a command's ``--help`` reads them without loading an engine.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_N, DEFAULT_TEMPERATURE = 8, 0.8
# A temperature scales the prior's standard deviation. The paper samples at t <= 1; at 10 the
# latents already lie ten standard deviations out, where the prior decodes nothing it learnt,
# and beyond it the latent draws only move towards float16/float32 overflow.
MAX_TEMPERATURE = 10.0
MAX_FACES = 64  # faces per photo: beyond, a crowd's faces are too small for the model anyway


@dataclass(frozen=True)
class Limits:
    """How large an input and an output of ``Pipeline`` may be; a header above is refused undecoded."""

    max_image_pixels: int = 4096 * 4096     # an LR face or HR crop
    max_photo_pixels: int = 100_000_000     # a photo for ``faces``
    max_output_pixels: int = 400_000_000    # a whole-photo output of ``faces`` (1.2 GB in 8-bit RGB)
