"""A Triton Inference Server model repository for an export folder (``python -m runtime.cli.triton``,
``cvdvae export --triton-repo``).

``REPO/NAME/config.pbtxt`` with ``REPO/NAME/1/model.plan`` (TensorRT backend) when the folder
has an engine, else ``REPO/NAME/1/model.onnx`` (ONNX Runtime backend). The I/O is the graph's
(docs/contract/graph.md); Triton's ``max_batch_size`` > 0 makes ``B`` the batch dimension, so the
config lists the others: ``lr`` [3, h, w] (none for a prior-only graph, 3.1), ``noise`` [-1, D],
``temperature`` [-1], ``sr`` [-1, 3, H, W], float32 for every precision. ``n`` stays dynamic;
Triton's dynamic batcher only joins requests whose inputs have equal shapes, so requests with
different ``n`` run in separate calls. The config is text we write (no protobuf at run time);
the tests parse it with Triton's own schema.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from cvdvae.version import __version__
from cvdvae.errors import CVDVAEError
from cvdvae.fileio import atomic_folder, sha256_file
from runtime.model_files import ModelFiles, locate

from .profile import default_profile

PLATFORMS = {"plan": "tensorrt_plan", "onnx": "onnxruntime_onnx"}
MODEL_FILES = {"plan": "model.plan", "onnx": "model.onnx"}  # the backends' default file names
INSTANCE_KINDS = {"plan": "KIND_GPU", "onnx": "KIND_AUTO"}  # ONNX Runtime: the GPU where there is one
VERSION = "1"
DEFAULT_NAME = "cvdvae"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # one folder name, not hidden


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise CVDVAEError(f"{name!r} is not a model name for a Triton repository (letters, digits, _ . -)")
    return name


def pick_model(files: ModelFiles, prefer: str) -> tuple[str, Path, str]:
    """("plan" or "onnx", the file, the sha256 meta.json records for it)."""
    if prefer not in PLATFORMS:
        raise ValueError(f"prefer must be one of {', '.join(PLATFORMS)}, not {prefer!r}")
    if prefer == "plan" and files.plan is not None:
        recorded = files.meta.get("engine", {}).get("plan_sha256")
        if not recorded:
            raise CVDVAEError(f"{files.plan} is not recorded in meta.json: rebuild it with "
                              f"cvdvae export --engine-only {files.folder}")
        return "plan", files.plan, recorded
    if files.onnx is None or not files.meta.get("onnx_sha256"):
        raise CVDVAEError(f"{files.folder} is not an export folder (needs model.onnx and meta.json): "
                          "run cvdvae export")
    return "onnx", files.onnx, files.meta["onnx_sha256"]


def call_limits(meta: dict[str, Any], kind: str) -> tuple[int, int]:
    """(max B, max n) of one call: the built profile for a plan (Triton refuses a larger
    max_batch_size); for ONNX the profile asked for at export, else the default one."""
    if kind == "plan":
        chosen = meta["engine"]["profile"]
    elif (meta.get("profile") or {}).get("source") == "flags":
        chosen = meta["profile"]
    else:
        chosen = default_profile()[0].to_dict()
    return int(chosen["max_batch"]), int(chosen["max_n"])


def batchless_dims(shape: list[Any]) -> list[int]:
    """meta.json's ``["B", "n", D]`` -> Triton's ``[-1, D]``: B is the batch, n is dynamic."""
    if shape[0] != "B":
        raise CVDVAEError(f"meta.json shape {shape} does not start with the batch dimension B; re-run cvdvae export")
    return [-1 if d == "n" else int(d) for d in shape[1:]]


def quoted(text: Any) -> str:
    """A protobuf text-format string (printable ASCII in our values; anything else becomes ?)."""
    text = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(name: str, kind: str, meta: dict[str, Any], max_batch: int, max_n: int, delay_us: int,
                sha256: str) -> str:
    def tensors(field: str, shapes: dict[str, list[Any]]) -> list[str]:
        blocks = [f"  {{\n    name: {quoted(tensor)}\n    data_type: TYPE_FP32\n"
                  f"    dims: [ {', '.join(map(str, batchless_dims(shape)))} ]\n  }}"
                  for tensor, shape in shapes.items()]
        return [f"{field} [", ",\n".join(blocks), "]"]

    parameters = {"cvdvae_model_sha256": sha256, "cvdvae_noise_dim": meta["noise_dim"],
                  "cvdvae_precision": meta["precision"], "cvdvae_max_n": max_n}
    if kind == "plan":
        engine = meta["engine"]
        parameters.update(cvdvae_tensorrt_version=engine.get("tensorrt_version"), cvdvae_gpu=engine.get("gpu"))
    source = " ".join(str(meta.get("source", "")).split())
    lines = [f"# cvdvae {__version__} (python -m export.triton) for: {source}",
             "# A request is B images x n samples; Triton batches requests of equal n along B.",
             "# cvdvae_max_n: the most samples per image in one call (a plan's profile refuses more).",
             f"name: {quoted(name)}", f"platform: {quoted(PLATFORMS[kind])}", f"max_batch_size: {max_batch}",
             *tensors("input", meta["inputs"]), *tensors("output", meta["outputs"]),
             "dynamic_batching {", f"  max_queue_delay_microseconds: {delay_us}", "}",
             "instance_group [", "  {", "    count: 1", f"    kind: {INSTANCE_KINDS[kind]}", "  }", "]"]
    for key, value in parameters.items():
        if value is not None:
            lines += ["parameters {", f"  key: {quoted(key)}", f"  value: {{ string_value: {quoted(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link where both are on one filesystem (our writers replace files, never edit them
    in place, so the repository keeps what it was given), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_repository(export_dir: Path, repo: Path, *, name: str = DEFAULT_NAME, max_batch: int | None = None,
                     max_queue_delay_us: int = 2000, overwrite: bool = False, prefer: str = "plan") -> Path:
    """Write ``repo/name`` for the export folder ``export_dir`` and return it. ``prefer="onnx"``
    serves the ONNX graph even where there is an engine. The model file is checked against the
    sha256 meta.json records; ``repo/name`` appears complete or not at all and is only replaced
    with ``overwrite``."""
    check_name(name)
    if not Path(export_dir).is_dir():
        raise CVDVAEError(f"{export_dir} is not an export folder (run cvdvae export)")
    if max_queue_delay_us < 0 or (max_batch is not None and max_batch < 1):
        raise CVDVAEError("max_queue_delay_us must be >= 0 and max_batch >= 1")
    files = locate(export_dir)
    kind, source, recorded = pick_model(files, prefer)
    target = Path(repo) / name
    if target.exists() and not overwrite:
        raise CVDVAEError(f"{target} exists; pass {{overwrite}} to replace it", overwrite=True)
    limit, max_n = call_limits(files.meta, kind)
    if kind == "plan" and max_batch is not None and max_batch > limit:
        raise CVDVAEError(f"the engine takes at most {limit} images per call (its profile), not {max_batch}; "
                          "rebuild it with a larger --max-batch")
    with atomic_folder(target, overwrite=overwrite) as tmp:
        version = tmp / VERSION
        version.mkdir()
        model = version / MODEL_FILES[kind]
        link_or_copy(source, model)
        data = source.with_name(source.name + ".data")  # a graph over 2 GiB keeps its weights beside it
        if kind == "onnx" and data.is_file():
            link_or_copy(data, version / data.name)
        if sha256_file(model) != recorded:
            raise CVDVAEError(f"{source} does not match its meta.json (sha256): it was changed after export; "
                              "re-run cvdvae export")
        text = config_text(name, kind, files.meta, max_batch or limit, max_n, max_queue_delay_us, recorded)
        (tmp / "config.pbtxt").write_text(text)
    return target


def listing(folder: Path) -> str:
    return ", ".join(sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()))

