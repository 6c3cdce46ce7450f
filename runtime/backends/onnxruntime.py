"""``model.onnx`` through ONNX Runtime: the CPU provider, or CUDA with the ``onnxruntime-gpu`` build.

``device`` picks the execution provider: ``"cpu"``, ``"cuda"`` (an error with the reason
when CUDA cannot load) or ``"auto"`` (CUDA when it loads, else the CPU, with a note saying
why). ``provider`` then names the one that actually runs. On CUDA, TF32 is off unless
asked for: FP32 means FP32 on every backend.

On the CPU, the graph ONNX Runtime optimised (its layouts and fusions for this CPU) is kept in the
folder's cache (``runtime.compiled_cache``) and loaded at the next start with the optimisations off,
keyed by the graph's sha256, the ONNX Runtime version, the CPU and the optimisation level.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cvdvae.errors import CVDVAEError
from cvdvae.noise_recipe import Noise

from ..compiled_cache import GRAPH, cache_folder, entry_path, read_entry, rebuilt_note, remembered_sha256, write_entry
from ..model_files import ModelFiles, verify_onnx
from ..timings import Timings
from .cpu_features import cpu_identity
from .host_memory import HostCalls, activation_limited_samples, output_names
from .interface import Backend, Sampled

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_CALL_SAMPLES = 16  # samples one CUDA call may hold, as the default TensorRT profile
# ONNX Runtime on a CPU is fastest per sample, and smallest, with one FFHQ-256 sample per call
# (docs/benchmarks/index.md: the call sizes measured).
CPU_CALL_BUDGET = int(1.2 * 2**30)
INSTALL_GPU = "pip uninstall -y onnxruntime && pip install 'cvdvae[gpu]'"


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CVDVAEError("ONNX Runtime is not installed: pip install 'cvdvae[cpu]' (or 'cvdvae[gpu]' "
                          "for NVIDIA GPUs)") from None
    return onnxruntime


@dataclass
class OnnxRuntimeBackend(Backend):
    files: ModelFiles
    max_batch: int | None = None
    max_n: int | None = None
    threads: int = 0
    device: str = "auto"      # "auto", "cuda" or "cpu"
    tf32: bool = False
    arena: bool = True        # ONNX Runtime's CPU memory arena (one sample per call keeps it small)
    name: str = "onnxruntime"
    note: str | None = None   # why "auto" ended on the CPU
    provider: str | None = None  # the execution provider that runs, once loaded
    timings: Timings = field(default_factory=Timings)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, not {self.device!r}")
        ort = import_onnxruntime()
        start = time.perf_counter()
        path = verify_onnx(self.files)
        providers = self._providers(ort)
        try:
            # A graph with its weights beside it (model.onnx.data, over 2 GiB) is optimised at every start:
            # ONNX Runtime's optimised copy would still read them from there.
            external = path.with_name(path.name + ".data").exists()
            self.session = (self._cached_or_optimised(ort, path) if providers[0][0] == CPU and not external else
                            ort.InferenceSession(str(path), self._options(ort), providers=providers))
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise CVDVAEError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0]}") from None
        self.provider = self.session.get_providers()[0]
        if providers[0][0] == CUDA and self.provider != CUDA:
            reason = (f"ONNX Runtime's CUDA provider did not load (onnxruntime {ort.__version__} needs the CUDA "
                      "and cuDNN versions it was built for; its own message is above)")
            if self.device == "cuda":
                raise CVDVAEError(f"{reason}; choose {{backend}} to run on the CPU", backend="onnxruntime-cpu")
            self.note = f"{reason}: running on the CPU"
        self.precision = self.files.precision
        self.max_n, self.max_batch = self._call_limits()
        self._calls = HostCalls(self.files, self._run, self.timings)
        self.timings.load = time.perf_counter() - start

    def _cached_or_optimised(self, ort: Any, path: Path) -> Any:
        """A CPU session: on the graph ONNX Runtime optimised at an earlier start, kept in the cache and
        loaded with its optimisations off; else optimised now, and kept."""
        folder = cache_folder(self.files.folder)
        options = self._options(ort)
        if folder is None:
            self.note = (f"the optimised ONNX Runtime graph cannot be kept (neither {self.files.folder} nor "
                         "$CVDVAE_HOME is writable): it is optimised at every start")
            return ort.InferenceSession(str(path), options, providers=[CPU])
        key = {GRAPH: self.files.meta.get("onnx_sha256") or remembered_sha256(path, folder),
               "ONNX Runtime": ort.__version__, **cpu_identity(), "settings": str(options.graph_optimization_level)}
        entry = entry_path(folder, "onnxruntime", key)
        payload, why = read_entry(entry, key)
        if payload is not None:
            kept_options = self._options(ort)
            kept_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            try:
                return ort.InferenceSession(payload, kept_options, providers=[CPU])
            except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
                why = f"could not be loaded ({str(err).splitlines()[0]})"
        # ONNX Runtime writes the optimised graph itself, and warns that it fits this CPU only: the key says so.
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory(dir=folder, prefix=".onnxruntime-") as tmp:
            options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
            session = ort.InferenceSession(str(path), options, providers=[CPU])
            kept = write_entry(entry, key, Path(options.optimized_model_filepath).read_bytes())
        self.note = rebuilt_note("the optimised ONNX Runtime graph", entry, why, kept, "optimised again")
        return session

    def _providers(self, ort: Any) -> list[tuple[str, dict]]:
        available = ort.get_available_providers()
        cpu = [(CPU, {})]
        if self.device == "cpu" or (self.device == "auto" and CUDA not in available):
            return cpu
        if CUDA not in available:
            raise CVDVAEError(f"this ONNX Runtime ({ort.__version__}, providers {', '.join(available)}) has no "
                              f"CUDA provider; install the GPU build: {INSTALL_GPU}")
        return [(CUDA, {"use_tf32": "1" if self.tf32 else "0"}), *cpu]

    def _options(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        # The arena keeps memory at the high-water mark of the largest call seen, which calls of
        # one FFHQ-256 sample keep small; without it calls are a little slower.
        options.enable_cpu_mem_arena = self.arena
        if self.threads:
            options.intra_op_num_threads = self.threads
        return options

    def _call_limits(self) -> tuple[int, int]:
        """(max n, max B) per call: the CPU budget bounds host memory; a GPU call is bounded like
        the default TensorRT profile (16 samples)."""
        if self.provider == CPU:
            return activation_limited_samples(self.files, self.max_n, self.max_batch, CPU_CALL_BUDGET)
        max_n = self.max_n or 8
        return max_n, self.max_batch or max(1, GPU_CALL_SAMPLES // max_n)

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = self.session.run(output_names(self.files), feeds)
        return outputs[0], outputs[1] if len(outputs) > 1 else None

    def sample_rows(self, lr: np.ndarray | None, seeds: Sequence[Noise], first_sample: int,
                    temperature: np.ndarray) -> Sampled:
        return self._calls.sample_rows(lr, seeds, first_sample, temperature)
