"""The seeded noise blocks a backend reuses: every image chunk of a run needs the same ones.

Keyed by (seed, first sample, n); only the most recent few are kept, so a long-lived
backend (a service seeing many seeds) does not grow without bound. One FFHQ-256 sample's
noise is 21 MB.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable

Key = tuple[int, int, int]


class NoiseCache:
    def __init__(self, capacity: int = 4):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[Key, Any] = OrderedDict()

    def get_or_make(self, key: Key, make: Callable[[], Any]) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self._entries[key] = make()
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
