"""Seconds a backend spent, accumulated over its calls (the run summary and the benchmark read them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Timings:
    noise: float = 0.0       # making the seeded noise and moving inputs in
    inference: float = 0.0   # the engine itself and the copy of its output back
    calls: int = 0
    load: float = 0.0        # opening the model
    compile: float = 0.0     # of load, compiling the graph (0 when a compiled one was taken from the cache)
