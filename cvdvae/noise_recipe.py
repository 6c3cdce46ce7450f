"""A noise recipe: which samples share which levels, and a temperature per level (contracts.md 3).

The graph takes its noise whole, block by block (``noise_layout``); each decoder block has a
resolution, its *level*. A recipe composes a call's noise outside the graph, from the seeded
noise of ``cvdvae.seeding``, so the graph never changes:

* ``like`` (a sample index) and ``like_seed`` (its seed, default the recipe's own) with
  ``vary_from`` (a level): every latent block below ``vary_from`` is copied from that reference
  sample; the blocks at and above it and the pixel noise are the recipe's own, as without a recipe.
  Sample ``like`` of the call is the reference sample itself, its whole noise (with
  ``like_seed`` equal to the seed this is no copy at all). The lowest level copies nothing.
* ``temperature_at``: (level, factor) pairs; a factor holds from its level up to the next pair's
  level. It multiplies ε of the prior's blocks there (blocks ``>= ky``), which multiplies their
  temperature, since the prior draws ``exp(log σ + log t)·ε + μ``. The LR encoder's blocks are
  untempered and the pixel noise (Gumbel, logistic) is never scaled.

Sample ``k`` of a recipe depends on ``(recipe, k)`` alone, as sample ``k`` of a seed does. A recipe
that changes nothing is its seed (``recipe_for``), so the plain path and its caches are today's;
any other recipe is its own cache and grouping key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import numpy as np

from .config import CVDVAEConfig
from .errors import CVDVAEError
from .noise_layout import NoiseLayout
from .seeding import MAX_SEED

MAX_FACTOR = 10.0
NoiseMaker = Callable[[int, int, int, int], Any]  # (seed, n, dim, first sample) -> [n, dim] array


@dataclass(frozen=True)
class NoiseLevels:
    """Each decoder block's level (resolution, px) and noise slice, and the first prior block."""

    levels: tuple[int, ...]          # per block, in order
    offsets: tuple[int, ...]         # per block its first noise value, then the pixel part's
    prior_from: int                  # ky: blocks below it draw from the LR encoder (0: prior-only)
    dim: int                         # D

    @classmethod
    def of(cls, layout: NoiseLayout, ky: int) -> "NoiseLevels":
        return cls(tuple(s.res for s in layout.latents), tuple(layout.block_offsets()), ky, layout.dim)

    @classmethod
    def from_config(cls, cfg: CVDVAEConfig) -> "NoiseLevels":
        return cls.of(NoiseLayout.from_config(cfg), cfg.ky)

    @property
    def resolutions(self) -> list[int]:
        return sorted(set(self.levels))

    @property
    def first_prior_level(self) -> int:
        return self.levels[self.prior_from]

    def start(self, level: int) -> int:
        """The first noise value of the first block at ``level`` or finer (blocks go coarse to fine)."""
        return next((self.offsets[i] for i, r in enumerate(self.levels) if r >= level), self.offsets[-1])

    def scaled_spans(self, temperature_at: tuple[tuple[int, float], ...]) -> list[tuple[int, int, float]]:
        """(start, stop, factor) of the prior blocks each pair scales, factors other than 1 only."""
        spans = []
        for (level, factor), following in zip(temperature_at, [*temperature_at[1:], (math.inf, 1.0)]):
            blocks = [i for i, r in enumerate(self.levels) if level <= r < following[0] and i >= self.prior_from]
            if blocks and factor != 1.0:
                spans.append((self.offsets[blocks[0]], self.offsets[blocks[-1] + 1], factor))
        return spans


@dataclass(frozen=True)
class NoiseRecipe:
    """A seed with a reference sample, the level samples vary from, and per-level factors."""

    seed: int
    like: int | None = None
    like_seed: int | None = None     # None: ``seed``
    vary_from: int | None = None
    temperature_at: tuple[tuple[int, float], ...] = ()

    @property
    def reference_seed(self) -> int:
        return self.seed if self.like_seed is None else self.like_seed


Noise = Union[int, NoiseRecipe]  # a plain seed, or a recipe; what a sampling job and a backend row carry


def recipe_for(seed: int, like: int | None = None, like_seed: int | None = None, vary_from: int | None = None,
               temperature_at: Mapping[int, float] | None = None) -> Noise:
    """The recipe of these settings, unchecked (``check_recipe``); the seed itself when nothing changes."""
    pairs = tuple(sorted((int(level), float(factor)) for level, factor in (temperature_at or {}).items()))
    if like is None and vary_from is None and like_seed is None and not pairs:
        return seed
    return NoiseRecipe(seed, like, like_seed, vary_from, pairs)


def check_recipe(noise: Noise, levels: NoiseLevels | None, samples: int) -> None:
    """``CVDVAEError`` naming the setting when ``noise`` cannot be made for this model's ``levels``
    (None: the model's levels are unknown) and a call whose samples are ``0 .. samples - 1``."""
    if not isinstance(noise, NoiseRecipe):
        return
    if levels is None:
        raise CVDVAEError("this model's files do not say its levels (meta.json has no config): re-export it to "
                          "use {vary_from}, {like} or {temperature_at}", vary_from=None, like=None,
                          temperature_at=None)
    known = ", ".join(map(str, levels.resolutions))
    if (noise.like is None) != (noise.vary_from is None):
        given, missing = ("like", "vary_from") if noise.vary_from is None else ("vary_from", "like")
        raise CVDVAEError(f"{{{given}}} needs {{{missing}}}: the sample to keep and the level the others vary "
                          "from go together", **{given: None, missing: None})
    if noise.like_seed is not None and noise.like is None:
        raise CVDVAEError("{like_seed} names the seed of {like}: give like too", like_seed=noise.like_seed, like=None)
    if noise.vary_from is not None and noise.vary_from not in levels.resolutions:
        raise CVDVAEError(f"{{vary_from}} is not a level of this model: its levels are {known} px",
                          vary_from=noise.vary_from)
    if noise.like is not None and not (_whole(noise.like) and 0 <= noise.like < samples):
        raise CVDVAEError(f"{{like}} is out of range: the samples are 0 .. {samples - 1} (the reference appears "
                          "among them)", like=noise.like)
    if noise.like_seed is not None and not (_whole(noise.like_seed) and 0 <= noise.like_seed <= MAX_SEED):
        raise CVDVAEError("{like_seed} must be a whole number in 0 .. 2^64-1", like_seed=noise.like_seed)
    check_temperature_at(noise.temperature_at, levels)


def check_temperature_at(pairs: tuple[tuple[int, float], ...], levels: NoiseLevels) -> None:
    known = ", ".join(map(str, levels.resolutions))
    for (level, factor), following in zip(pairs, [*pairs[1:], (math.inf, 1.0)]):
        if level not in levels.resolutions:
            raise CVDVAEError(f"{{temperature_at}} level {level} is not a level of this model: its levels are "
                              f"{known} px", temperature_at=None)
        as_float32 = float(np.float32(factor)) if math.isfinite(factor) else math.nan
        if not 0 <= as_float32 <= MAX_FACTOR:
            raise CVDVAEError(f"{{temperature_at}} factor {factor!r} at {level} px is out of range: a number from 0 "
                              f"to {MAX_FACTOR:g}", temperature_at=None)
        if not any(level <= r < following[0] and i >= levels.prior_from for i, r in enumerate(levels.levels)):
            raise CVDVAEError(f"{{temperature_at}} level {level} px reaches only LR-encoder groups, which are "
                              f"untempered: the first prior level is {levels.first_prior_level} px",
                              temperature_at=None)


def compose(noise: Noise, dim: int, n: int, first: int, make: NoiseMaker, levels: NoiseLevels | None = None) -> Any:
    """The noise ``[n, dim]`` of samples ``first .. first + n - 1`` under ``noise``: a seed's own, or a
    checked recipe's (which needs the model's ``levels``), from ``make`` (``seeding.noise_numpy``,
    ``noise_torch`` or a device's maker); numpy arrays and torch tensors alike, changed in place."""
    if not isinstance(noise, NoiseRecipe):
        return make(noise, n, dim, first)
    if levels is None or levels.dim != dim:
        raise CVDVAEError("a noise recipe needs the model's levels (meta.json's config): re-export the model")
    out = make(noise.seed, n, dim, first)
    if noise.like is not None:
        cut = levels.start(noise.vary_from)
        if cut:  # the reference's coarse blocks: a prefix of its noise (seeding: a shorter dim, the same values)
            out[:, :cut] = make(noise.reference_seed, 1, cut, noise.like)
        row = noise.like - first
        if noise.reference_seed != noise.seed and 0 <= row < n:
            out[row] = make(noise.reference_seed, 1, dim, noise.like)[0]
    for start, stop, factor in levels.scaled_spans(noise.temperature_at):
        out[:, start:stop] *= factor
    return out


def seed_of(noise: Noise) -> int:
    return noise.seed if isinstance(noise, NoiseRecipe) else noise


def _whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
