"""The engine's optimization profile: the range of B (images) and n (samples per image) it takes.

The default keeps one call to at most 16 samples (B <= 2, n <= 8, opt B 1, n 8): an FFHQ-256
sample holds about 1.1 GB of float32 activations at its largest resolution (eight 512-channel
256x256 tensors), so larger calls need tens of GiB. Built on a GPU, the default also shrinks
to what half of the free device memory holds. A profile given with flags is kept as given;
``meta.json`` records which it was, so ``--engine-only`` rebuilds the same one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MAX_DEFAULT_SAMPLES = 16
FREE_MEMORY_SHARE = 0.5  # of the device's free memory, for one call's activations


@dataclass(frozen=True)
class Profile:
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 2
    min_n: int = 1
    opt_n: int = 8
    max_n: int = 8

    def __post_init__(self) -> None:
        for what, lo, opt, hi in (("B", self.min_batch, self.opt_batch, self.max_batch),
                                  ("n", self.min_n, self.opt_n, self.max_n)):
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"profile for {what} must satisfy 1 <= min <= opt <= max, got {lo}/{opt}/{hi}")

    def with_overrides(self, **given: int) -> "Profile":
        """Given values replace ours; an opt or min not given moves inside the new range."""
        values = {**asdict(self), **given}
        for dim in ("batch", "n"):
            if f"min_{dim}" not in given:
                values[f"min_{dim}"] = min(values[f"min_{dim}"], values[f"max_{dim}"])
            if f"opt_{dim}" not in given:
                values[f"opt_{dim}"] = min(max(values[f"opt_{dim}"], values[f"min_{dim}"]), values[f"max_{dim}"])
        return Profile(**values)

    def shapes(self, lr_size: int | None, noise_dim: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Per input: (min, opt, max) shapes (no ``lr`` for a prior-only graph)."""
        b = (self.min_batch, self.opt_batch, self.max_batch)
        n = (self.min_n, self.opt_n, self.max_n)
        shapes = {"noise": tuple((bi, ni, noise_dim) for bi, ni in zip(b, n)),
                  "temperature": tuple((bi, ni) for bi, ni in zip(b, n))}
        if lr_size is not None:
            shapes["lr"] = tuple((bi, 3, lr_size, lr_size) for bi in b)
        return shapes

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Profile":
        return cls(**{f.name: int(values[f.name]) for f in fields(cls)})


def default_profile(per_sample_bytes: int | None = None, free_bytes: int | None = None) -> tuple[Profile, str]:
    """The default profile and the reason for its size (recorded in meta.json)."""
    samples = MAX_DEFAULT_SAMPLES
    basis = f"default: at most {MAX_DEFAULT_SAMPLES} samples per call"
    if per_sample_bytes and free_bytes:
        fits = int(free_bytes * FREE_MEMORY_SHARE // per_sample_bytes)
        samples = max(1, min(MAX_DEFAULT_SAMPLES, fits))
        basis += (f", {samples} here: about {per_sample_bytes / 2**30:.2f} GiB of activations per sample, "
                  f"{free_bytes / 2**30:.1f} GiB free on the GPU")
    n = min(8, samples)
    batch = max(1, samples // n)
    return Profile(1, 1, batch, 1, n, n), basis


def requested(recorded: dict[str, Any] | None, overrides: dict[str, int]) -> dict[str, Any]:
    """What meta.json records as asked for: ``{"source": "default"}`` or a profile from flags,
    starting from a profile recorded earlier (``--engine-only`` with some flags)."""
    if not overrides:
        return dict(recorded) if recorded else {"source": "default"}
    base = Profile.from_dict(recorded) if recorded and recorded.get("source") == "flags" else Profile()
    return {**base.with_overrides(**overrides).to_dict(), "source": "flags"}


def resolve(request: dict[str, Any], per_sample_bytes: int | None, free_bytes: int | None) -> tuple[Profile, str]:
    """The profile to build from what was asked for, on this GPU."""
    if request.get("source") == "flags":
        return Profile.from_dict(request), "given with --min/opt/max-batch and --min/opt/max-n"
    return default_profile(per_sample_bytes, free_bytes)
