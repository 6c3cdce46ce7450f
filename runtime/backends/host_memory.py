"""What the backends that run from host memory share (ONNX Runtime, OpenVINO): the seeded noise
made with numpy once per (seed, first sample, n), the graph's feeds, the call timings, and
how many samples one CPU call may hold."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from cvdvae.seeding import noise_numpy

from ..model_files import ModelFiles
from ..timings import Timings
from .interface import Sampled, sampled
from .noise_cache import NoiseCache

Outputs = tuple[np.ndarray, "np.ndarray | None"]  # sr, and the graph's non_finite where it has one


def activation_limited_samples(files: ModelFiles, max_n: int | None, max_batch: int | None,
                               budget: int) -> tuple[int, int]:
    """(max n, max B) per CPU call: at most ``budget`` bytes of (estimated float32) activations,
    n <= 8, B <= 4. Each engine's budget is measured (README, "Benchmark"): on a CPU, throughput
    per sample hardly grows with the call size past one FFHQ-256 sample, memory does."""
    samples = max(1, budget // files.activation_bytes_per_sample())
    max_n = max_n or min(8, samples)
    return max_n, max_batch or max(1, min(4, samples // max_n))


class HostCalls:
    """One backend call: noise and feeds in host memory, ``run(feeds) -> (sr, non_finite or None)``, timed."""

    def __init__(self, files: ModelFiles, run: Callable[[dict[str, np.ndarray]], Outputs], timings: Timings):
        self.files, self.run, self.timings = files, run, timings
        self.noise = NoiseCache()

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[int], first_sample: int,
                    temperature: np.ndarray) -> Sampled:
        """``Backend.sample_rows``: row b is image ``lr[b]`` with the noise of ``seeds[b]`` and
        ``temperature[b]`` ([B, n]); rows of one seed share one noise block."""
        n = temperature.shape[1]
        start = time.perf_counter()
        rows = [self.noise.get_or_make((seed, first_sample, n),
                                       lambda seed=seed: noise_numpy(seed, n, self.files.noise_dim, first_sample))
                for seed in seeds]
        noise = rows[0][None] if len(set(seeds)) == 1 else np.stack(rows)
        feeds = {"noise": np.ascontiguousarray(np.broadcast_to(noise, (len(seeds), n, noise.shape[2]))),
                 "temperature": np.ascontiguousarray(temperature, dtype=np.float32)}
        if lr is not None:
            feeds["lr"] = np.ascontiguousarray(lr, dtype=np.float32)
        middle = time.perf_counter()
        sr, non_finite = self.run(feeds)
        self.timings.noise += middle - start
        self.timings.inference += time.perf_counter() - middle
        self.timings.calls += 1
        return sampled(sr, non_finite)


def output_names(files: ModelFiles) -> list[str]:
    """What to fetch from the graph: ``sr``, and its own NaN/Inf count where it has one."""
    return ["sr", "non_finite"] if files.reports_non_finite else ["sr"]
