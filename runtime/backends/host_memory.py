"""What the backends that run from host memory share (ONNX Runtime, OpenVINO): the seeded noise
made with numpy once per (seed, first sample, n), the graph's feeds, the call timings, and
how many samples one CPU call may hold.

The noise is made on every core the process may use while the engine waits, and the block a long
run most likely asks for next (the same seed, the samples after these) is made ahead while the
engine runs: on one thread at the lowest CPU priority, so that it takes only the time the engine's
own threads leave idle (``NoiseAhead``)."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Sequence

import numpy as np

from cvdvae.noise_recipe import Noise, compose
from cvdvae.seeding import noise_numpy

from ..model_files import ModelFiles
from ..timings import Timings
from .interface import Sampled, sampled
from .noise_cache import Key, NoiseCache

Outputs = tuple[np.ndarray, "np.ndarray | None"]  # sr, and the graph's non_finite where it has one
NOISE_WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# Made ahead only where a thread's own priority can be lowered (Linux): at the engine's priority it
# would slow the engine down as much as it saves.
AHEAD = sys.platform.startswith("linux")


def activation_limited_samples(files: ModelFiles, max_n: int | None, max_batch: int | None,
                               budget: int) -> tuple[int, int]:
    """(max n, max B) per CPU call: at most ``budget`` bytes of (estimated float32) activations,
    n <= 8, B <= 4. Each engine's budget is measured (docs/benchmarks/index.md): on a CPU, throughput
    per sample hardly grows with the call size past one FFHQ-256 sample, memory does."""
    samples = max(1, budget // files.activation_bytes_per_sample())
    max_n = max_n or min(8, samples)
    return max_n, max_batch or max(1, min(4, samples // max_n))


class HostCalls:
    """One backend call: noise and feeds in host memory, ``run(feeds) -> (sr, non_finite or None)``, timed."""

    def __init__(self, files: ModelFiles, run: Callable[[dict[str, np.ndarray]], Outputs], timings: Timings):
        self.files, self.run, self.timings = files, run, timings
        self.noise = NoiseCache()
        self.ahead = NoiseAhead()

    def _noise(self, key: Key) -> np.ndarray:
        """The block of ``key`` = (seed or recipe, first sample, n): made ahead, or made now."""
        made = self.ahead.take(key)
        return made if made is not None else self._make(key, NOISE_WORKERS)

    def _make(self, key: Key, workers: int = 1) -> np.ndarray:
        noise, first_sample, n = key
        return compose(noise, self.files.noise_dim, n, first_sample,
                       lambda *args: noise_numpy(*args, workers=workers), self.files.levels)

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[Noise], first_sample: int,
                    temperature: np.ndarray) -> Sampled:
        """``Backend.sample_rows``: row b is image ``lr[b]`` with the noise of ``seeds[b]`` (a seed or a
        ``NoiseRecipe``) and ``temperature[b]`` ([B, n]); rows of one seed or recipe share one block."""
        n = temperature.shape[1]
        start = time.perf_counter()
        keys = [(seed, first_sample, n) for seed in seeds]
        seen = keys[0] in self.noise
        rows = [self.noise.get_or_make(key, lambda key=key: self._noise(key)) for key in keys]
        following = (seeds[0], first_sample + n, n)
        if len(set(seeds)) == 1 and not seen and following not in self.noise:
            # A first pass over these samples: its next call likely wants the samples after them (a
            # pass already seen repeats blocks already made).
            self.ahead.start(following, lambda: self._make(following))
        noise = rows[0][None] if len(set(seeds)) == 1 else np.stack(rows)
        # The cached block itself when B is 1 (an engine may read it in place), else a copy per row.
        feeds = {"noise": noise if len(noise) == len(seeds) else np.repeat(noise, len(seeds), axis=0),
                 "temperature": np.ascontiguousarray(temperature, dtype=np.float32)}
        if lr is not None:
            feeds["lr"] = np.ascontiguousarray(lr, dtype=np.float32)
        middle = time.perf_counter()
        sr, non_finite = self.run(feeds)
        self.timings.noise += middle - start
        self.timings.inference += time.perf_counter() - middle
        self.timings.calls += 1
        return sampled(sr, non_finite)


class NoiseAhead:
    """One noise block made on a background thread at the lowest CPU priority (nice 19) and taken by
    the call that wants it once it is whole; never waited for, since a thread at that priority may
    be starved by other processes (the caller then makes the block itself). The thread is a daemon:
    a process never waits for it to exit."""

    def __init__(self) -> None:
        self._key: Key | None = None
        self._thread: threading.Thread | None = None
        self._made: list[np.ndarray] = []

    def start(self, key: Key, make: Callable[[], np.ndarray]) -> None:
        """Make ``key``'s block in the background, unless one is still being made."""
        if not AHEAD or (self._thread is not None and self._thread.is_alive()):
            return
        made: list[np.ndarray] = []

        def work() -> None:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only
            made.append(make())

        self._key, self._made = key, made
        self._thread = threading.Thread(target=work, name="cvdvae-noise-ahead", daemon=True)
        self._thread.start()

    def take(self, key: Key) -> np.ndarray | None:
        """``key``'s block when it was made ahead and is whole, else None; a whole block of another
        key is dropped (its memory freed)."""
        if self._thread is None or self._thread.is_alive():
            return None
        made_for, made = self._key, self._made
        self._key, self._thread, self._made = None, None, []
        return made[0] if made_for == key and made else None


def output_names(files: ModelFiles) -> list[str]:
    """What to fetch from the graph: ``sr``, and its own NaN/Inf count where it has one."""
    return ["sr", "non_finite"] if files.reports_non_finite else ["sr"]
