"""Seconds spent: a backend's accumulated calls (``Timings``, read by the run summary and the
benchmarks) and a pipeline step's wall time (``timed``, what ``PipelineOutput.timings`` holds)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Timings:
    noise: float = 0.0       # making the seeded noise and moving inputs in
    inference: float = 0.0   # the engine itself and the copy of its output back
    calls: int = 0
    load: float = 0.0        # opening the model
    compile: float = 0.0     # of load, compiling the graph (0 when a compiled one was taken from the cache)


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the block's wall time to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
