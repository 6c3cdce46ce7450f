"""The seeded noise blocks a backend reuses: every image chunk of a run needs the same ones.

Keyed by (seed or ``NoiseRecipe``, first sample, n): two jobs of one seed with different recipes
never share a block. Bounded by bytes, most recent kept: a run of FFHQ-256
calls of one sample each (21 MB of noise per sample) reuses all eight samples of ``--n 8``,
and a long-lived backend (a service seeing many seeds) does not grow without bound. The most
recent block is always kept, whatever its size.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

from cvdvae.noise_recipe import Noise

Key = tuple[Noise, int, int]
DEFAULT_BYTES = 512 * 2**20


class NoiseCache:
    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, Any] = OrderedDict()

    def get_or_make(self, key: Key, make: Callable[[], Any]) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self._entries[key] = make()
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            self._entries.popitem(last=False)
        return value

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(v) for v in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries


def _nbytes(array: Any) -> int:
    """numpy arrays and torch tensors alike."""
    if hasattr(array, "nbytes"):
        return int(array.nbytes)
    return int(array.numel() * array.element_size())
