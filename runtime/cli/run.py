"""``cvdvae run`` (alias ``cvdvae-run``): LR faces or whole photos -> seeded, diverse samples on disk;
with a prior-only model, faces drawn from noise alone.

This module reads flags and reports. The samples come from ``cvdvae.Pipeline``; the files are
written by ``runtime.run_files``, here through one engine or, with ``--ray``, by Ray Data actors
(``runtime.cluster``); either way the run is one ``RunRecord``: the same files, the same
``--json`` and the same exit status."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional, Sequence

import numpy as np
import typer

from cvdvae.errors import CVDVAEError
from cvdvae.progress import ProgressBar

from ..backends import CHOICES, PRECISION_CHOICES
from ..cluster.driver import ClusterOptions
from ..cluster.worker import EngineChoice
from ..faces.photos import FaceSearch
from ..images.paths import expand_inputs
from ..images.photo_format import PhotoFormat
from ..limits import MAX_FACES
from ..model_files import ModelFiles, ModelShape, locate
from ..pipeline import Pipeline
from ..run_files import (CONVERTED_NOTE, RunRecord, RunSettings, engine_record, refuse_existing, write_lr_inputs,
                         write_photo_inputs)
from .command import command_app, examples, flag_for, run_app
from .common import (Json, Like, LikeSeed, Overwrite, Precision, Quiet, Samples, Seed, TemperatureAt, Temperatures,
                     VaryFrom, check_choice, parse_temperature_at, parse_temperatures)

UNCONDITIONAL_STEM = "sample"  # output names of a prior-only model: sample_s{seed}_{k:02d}.png
GRAPH_SUFFIXES = (".onnx", ".plan", ".engine")

app = command_app("Super-resolve LR face images into n diverse samples each, reproducibly from a seed; "
                  "with a prior-only model (no LR encoder), draw n faces from noise alone.")


@app.command("run", epilog=examples(
    "cvdvae run engines/x4-fp16 --input faces/ --n 8 --seed 0 --temperature 0.8",
    "cvdvae run engines/x4-fp16 --input 'ffhq/*.png' --from-hr --temperature 0.2,0.6,1.0 --json",
    "cvdvae run engines/x4-fp16 --input photos/ --faces --n 8 --json > faces.json   # whole photos",
    "cvdvae run engines/x4-fp16 --input faces/ --n 100 --summary   # + the samples' mean and std map",
    "cvdvae run engines/x4-fp16 --input face.png --like 3 --vary-from 64 --summary   # sample 3, its details varied",
    "cvdvae run engines/x4-fp16 --input faces/ --temperature 0.8 --temperature-at 128=0.5   # calmer fine levels",
    "cvdvae run engines/x4-fp16 --input lr/ --n 100 --ray --ray-address auto --gpus-per-actor 1   # a Ray cluster",
    "cvdvae run engines/vdvae-ffhq256-fp32 --n 16 --seed 0      # a prior-only model: faces from noise"))
def run_command(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(exists=True, metavar="MODEL", show_default=False, help=(
        "an engine.plan, a model.onnx or an export folder; or weights (.safetensors, .ckpt, .th: PyTorch)"))],
    input: Annotated[Optional[list[str]], typer.Option(
        "--input", "-i", help="image files, folders or globs (PNG, JPEG, WebP); repeat it or give "
                              "several")] = None,
    n: Samples = None,
    seed: Seed = 0,
    temperature: Temperatures = None,
    like: Like = None,
    like_seed: LikeSeed = None,
    vary_from: VaryFrom = None,
    temperature_at: TemperatureAt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("outputs"),
    from_hr: Annotated[bool, typer.Option(
        "--from-hr", help="inputs are HR images: make the LR input with the MATLAB bicubic degradation")] = False,
    faces: Annotated[bool, typer.Option(
        "--faces", help="inputs are photos: find every face, align it as FFHQ was, super-resolve it and paste "
                        "the samples back into the photo (needs `cvdvae fetch mtcnn`)")] = False,
    max_faces: Annotated[int, typer.Option(min=1, help="--faces: the most confident faces kept per "
                                                       "photo")] = MAX_FACES,
    min_face: Annotated[int, typer.Option(min=12, help="--faces: the smallest face searched for, in photo "
                                                       "pixels")] = 20,
    min_score: Annotated[float, typer.Option(min=0.7, max=1.0, help=(
        "--faces: the detector's confidence a face needs (0.7 keeps all MTCNN finds; 0.9 drops the rare "
        "face-like object)"))] = 0.9,
    upscale: Annotated[Optional[float], typer.Option(min=0.01, max=16.0, help=(
        "--faces: the output photo's scale (default: the model's factor)"))] = None,
    face_only: Annotated[bool, typer.Option("--face-only", help=(
        "--faces: the whole-photo outputs hold the faces alone on a transparent background (RGBA PNG), to "
        "layer over a background upscaled elsewhere"))] = False,
    no_paste: Annotated[bool, typer.Option("--no-paste", help=(
        "--faces: no whole-photo outputs, only the aligned face samples and their grids"))] = False,
    photo_format: Annotated[Optional[str], typer.Option("--format", help=(
        "--faces: the whole photos' format, png, jpeg or webp (default: the input's own; sRGB, upright). Face "
        "samples stay PNG"))] = None,
    quality: Annotated[Optional[int], typer.Option(min=1, max=100, help=(
        "--faces: JPEG or WebP quality (default 95 for JPEG, 90 for WebP)"))] = None,
    overwrite: Overwrite = False,
    grid: Annotated[bool, typer.Option("--grid/--no-grid", help="a grid PNG per input")] = True,
    summary: Annotated[bool, typer.Option("--summary", help=(
        "also the samples' mean ({stem}_s{seed}_mean.png) and per-pixel standard deviation map (_std.png: "
        "viridis, its range on a scale bar), and both in the grid; with --faces per face and for the whole "
        "photos"))] = False,
    backend: Annotated[str, typer.Option(help=f"{', '.join(CHOICES)}; auto: TensorRT when the folder has an engine "
                                              "and TensorRT runs, else ONNX Runtime with CUDA, else OpenVINO, else "
                                              "ONNX Runtime on the CPU; torch for weight files")] = "auto",
    max_batch: Annotated[Optional[int], typer.Option(min=1, help="images per engine call (default: the engine's "
                                                                 "profile; on a CPU, what fits its budget)")] = None,
    max_n: Annotated[Optional[int], typer.Option(min=1, help="samples per image per call (default: the profile; "
                                                             "on a CPU, what fits its budget)")] = None,
    precision: Precision = "auto",
    ray: Annotated[bool, typer.Option("--ray", help=(
        "run on Ray Data: the inputs as a data set, each actor one engine, the same files; resumable (a second "
        "run skips complete inputs). Needs the cluster extra"))] = False,
    ray_address: Annotated[Optional[str], typer.Option(help=(
        "--ray: 'auto' or HOST:PORT for a running cluster (default: $RAY_ADDRESS, else a Ray started here for "
        "this run)"))] = None,
    actors_per_node: Annotated[int, typer.Option(min=1, help="--ray: actors per node, each one engine")] = (
        ClusterOptions.actors_per_node),
    cpus_per_actor: Annotated[Optional[float], typer.Option(min=1.0, help=(
        "--ray: CPUs Ray reserves per actor, and its engine's threads (default: reserve 1; threads: a node's "
        "CPUs shared out among its actors)"))] = None,
    gpus_per_actor: Annotated[float, typer.Option(min=0.0, help="--ray: GPUs per actor (1: one engine per "
                                                                "GPU)")] = ClusterOptions.gpus_per_actor,
    actor_batch: Annotated[int, typer.Option(min=1, help="--ray: inputs per actor call")] = ClusterOptions.batch_inputs,
    block_inputs: Annotated[int, typer.Option(min=1, help=(
        "--ray: inputs per Ray Data block (a task reads a block: a million small files are not a million "
        "tasks)"))] = ClusterOptions.block_inputs,
    quiet: Quiet = False,
    json_: Json = False,
) -> int:
    temperatures = np.asarray(parse_temperatures(temperature, n), dtype=np.float32)
    check_choice(backend, CHOICES, "--backend")
    check_choice(precision, PRECISION_CHOICES, "--precision")
    photo_flags = {"--max-faces": max_faces != MAX_FACES, "--upscale": upscale is not None, "--face-only": face_only,
                   "--no-paste": no_paste, "--min-face": min_face != 20, "--min-score": min_score != 0.9,
                   "--format": photo_format is not None, "--quality": quality is not None}
    check_face_flags(faces, from_hr, face_only, no_paste, [flag for flag, given in photo_flags.items() if given])
    cluster = ClusterOptions(ray_address, actors_per_node, cpus_per_actor, gpus_per_actor, actor_batch, block_inputs)
    check_ray_flags(ray, cluster, model)
    files = locate(model) if model.is_dir() or model.suffix in GRAPH_SUFFIXES else None
    if files is not None:
        check_inputs_fit(files.shape, model, input, from_hr, faces)  # before the engine loads
    paste = "transparent" if face_only else "none" if no_paste else "photo"
    variation = {name: value for name, value in [("like", like), ("like_seed", like_seed), ("vary_from", vary_from),
                                                 ("temperature_at", parse_temperature_at(temperature_at))]
                 if value is not None}
    settings = RunSettings(out, seed, temperatures, grid, overwrite, summary, from_hr,
                           FaceSearch(min_face, max_faces, min_score) if faces else None, upscale, paste, variation,
                           chosen_format(photo_format, quality, face_only))
    if files is not None:
        check_variation(files.shape, settings)  # before the engine loads
    quiet = quiet or json_
    record = RunRecord(say=lambda line: print(f"{ctx.command_path}: error: {line}", file=sys.stderr))
    if ray:
        run_ray(files, EngineChoice(str(model), backend, precision, None, max_batch, max_n), settings, cluster,
                input, record, quiet)
    else:
        pipe = Pipeline.from_pretrained(files or model, backend, max_batch=max_batch, max_n=max_n, precision=precision)
        if files is None:  # weights: what they take is known once they are read
            check_inputs_fit(pipe.shape, model, input, from_hr, faces)
            check_variation(pipe.shape, settings)
        run_here(pipe, input, settings, record, quiet)
    record.finish(settings)
    report(record, settings, json_, quiet)
    return record.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-run")


def check_ray_flags(ray: bool, cluster: ClusterOptions, model: Path) -> None:
    """The --ray flags need --ray, and --ray an export (its actors open the engine it names)."""
    flags = {"--ray-address": "address", "--actors-per-node": "actors_per_node", "--cpus-per-actor": "cpus_per_actor",
             "--gpus-per-actor": "gpus_per_actor", "--actor-batch": "batch_inputs", "--block-inputs": "block_inputs"}
    given = [flag for flag, name in flags.items() if getattr(cluster, name) != getattr(ClusterOptions, name)]
    if given and not ray:
        raise typer.BadParameter("applies to runs on Ray: add --ray", param_hint=f"'{given[0]}'")
    if ray and not (model.is_dir() or model.suffix in (".onnx", ".plan", ".engine")):
        raise typer.BadParameter(f"{model}: --ray runs an export (cvdvae export), whose engine each actor opens",
                                 param_hint="'MODEL'")


def run_here(pipe: Pipeline, input: list[str] | None, settings: RunSettings, record: RunRecord, quiet: bool) -> None:
    """The inputs through one engine here: LR faces a group per engine call, photos one by one."""
    if settings.search is not None:
        pipe.detector  # noqa: B018 - loaded before any work: a missing detector is one line
    if pipe.backend.note and not quiet:
        print(f"note: {pipe.backend.note}", file=sys.stderr)
    paths = input_paths(pipe.shape, input, settings, record, check_outputs=settings.search is None)
    record.inputs = len(paths) + len(record.failed)
    settings.out.mkdir(parents=True, exist_ok=True)
    if settings.search is not None:
        run_photos(pipe, paths, settings, record, quiet)
    else:
        run_inputs(pipe, paths, settings, record, quiet)
    record.engine = engine_record(pipe.backend)


def run_ray(files: ModelFiles, engine: EngineChoice, settings: RunSettings, cluster: ClusterOptions,
            input: list[str] | None, record: RunRecord, quiet: bool) -> None:
    """--ray: the inputs through Ray Data (``runtime.cluster``), each actor one engine; the same files."""
    from cvdvae.extras import require

    from ..cluster.driver import run_on_ray
    from ..cluster.ledger import run_key
    from ..faces.detector import FaceDetector

    require("cluster", "cvdvae run --ray")
    if settings.search is not None:
        FaceDetector.from_folder()  # here, before any actor starts: a missing detector is one line
    paths = input_paths(files.shape, input, settings, record, check_outputs=False)  # outputs: checked by each actor
    record.inputs = len(paths) + len(record.failed)
    settings.out.mkdir(parents=True, exist_ok=True)
    run_on_ray(engine, paths, settings, run_key(files.model_id, settings), cluster, flag_for, record,
               progress=not quiet)


def check_variation(shape: ModelShape, settings: RunSettings) -> None:
    """--like, --vary-from and --temperature-at against the model's levels and the run's samples."""
    from cvdvae.noise_recipe import check_recipe, recipe_for

    check_recipe(recipe_for(settings.seed, **settings.variation), shape.levels, settings.n)


def check_inputs_fit(shape: ModelShape, model: Path, input: list[str] | None, from_hr: bool, faces: bool) -> None:
    """A conditional model needs LR images; a prior-only one takes none."""
    if shape.conditional and not input:
        raise typer.BadParameter(f"{model} super-resolves LR images: give them", param_hint="'--input'")
    if not shape.conditional and (input or from_hr or faces):
        flag = "--input" if input else "--from-hr" if from_hr else "--faces"
        raise typer.BadParameter(f"{model} is a prior-only model: it draws faces from noise alone, "
                                 "without images", param_hint=f"'{flag}'")


def check_face_flags(faces: bool, from_hr: bool, face_only: bool, no_paste: bool, photo_flags: list[str]) -> None:
    """The photo flags need --faces and agree with each other."""
    if not faces:
        if photo_flags:
            raise typer.BadParameter("applies to photos: add --faces", param_hint=f"'{photo_flags[0]}'")
        return
    if from_hr:
        raise typer.BadParameter("--faces chooses per face between the LR crop and a degraded HR crop; drop "
                                 "--from-hr", param_hint="'--from-hr'")
    if face_only and no_paste:
        raise typer.BadParameter("--face-only makes whole-photo outputs, --no-paste makes none: choose one",
                                 param_hint="'--face-only'")


def chosen_format(name: str | None, quality: int | None, face_only: bool) -> PhotoFormat:
    """``--format`` and ``--quality`` as the library's choice, refused here when they cannot work."""
    try:
        choice = PhotoFormat(name and name.lower(), quality)
        choice.chosen(None, face_only)
    except CVDVAEError as err:
        raise typer.BadParameter(str(err), param_hint="'--quality'" if "quality" in str(err) else "'--format'")
    return choice


def input_paths(shape: ModelShape, input: list[str] | None, settings: RunSettings, record: RunRecord,
                check_outputs: bool) -> list[Path]:
    """The inputs to work on (a prior-only model: the one stem its draws are named by); problems
    with the rest go to ``record``."""
    if not shape.conditional:
        return accepted_paths([Path(UNCONDITIONAL_STEM)], settings, record, check_outputs)
    paths, problems = expand_inputs(input or [])
    for problem in problems:
        record.fail(problem.split(":")[0], problem)
    return accepted_paths(paths, settings, record, check_outputs)


def accepted_paths(paths: list[Path], settings: RunSettings, record: RunRecord, check_outputs: bool) -> list[Path]:
    """Drop inputs whose outputs exist (without --overwrite) or whose names collide (photos: their
    outputs are known, and checked, once their faces are found)."""
    from cvdvae.errors import InputError

    seen: dict[str, Path] = {}
    keep = []
    for path in paths:
        if path.stem in seen:
            record.fail(path, f"{path}: has the same name as {seen[path.stem]}; outputs would collide, rename one")
            continue
        seen[path.stem] = path
        try:
            if check_outputs:
                refuse_existing(path, settings.planned(path.stem), settings.replaceable)
        except InputError as err:
            record.fail(path, err.describe(flag_for))
            continue
        keep.append(path)
    return keep


def run_inputs(pipe: Pipeline, paths: list[Path], settings: RunSettings, record: RunRecord, quiet: bool) -> None:
    """LR faces (or prior draws), a group of images per engine call (``runtime.run_files``)."""

    def progressed(inputs: int) -> None:
        progress.update(inputs)
        progress.note(f"{record.samples / (time.perf_counter() - record.start):.2f} samples/s")
        say_converted(record, quiet)

    with ProgressBar(len(paths), "inputs", disable=quiet or not paths) as progress:
        write_lr_inputs(pipe, paths, settings, record, flag_for, progressed)


def run_photos(pipe: Pipeline, paths: list[Path], settings: RunSettings, record: RunRecord, quiet: bool) -> None:
    """--faces: each photo on its own (its faces are one batch). A photo that fails, for what it is
    or while it is worked on (a decoder's error, alignment, memory, the disk), is one line naming
    it, leaves none of its outputs behind, and does not stop the others."""
    with ProgressBar(len(paths), "photos", disable=quiet or not paths) as progress:
        write_photo_inputs(pipe, paths, settings, record, flag_for, lambda: progress.update(1))


def say_converted(record: RunRecord, quiet: bool) -> None:
    """The note on converted inputs, once."""
    if record.converted and not quiet:
        print(f"note: {record.converted}; {CONVERTED_NOTE}", file=sys.stderr)
        record.converted = ""  # said


def report(record: RunRecord, settings: RunSettings, as_json: bool, quiet: bool) -> None:
    """The run's ``--json``, or its summary line."""
    s = record.summary(settings)
    if as_json:
        print(json.dumps(s, indent=2))
        return
    if quiet:
        return
    engine = f"{s['backend'] or 'no engine'}" + (f" ({s['execution_provider']})" if s["execution_provider"] else "")
    where = f" on {s['actors']} actors" if s["actors"] else ""
    print(f"{s['inputs']} inputs: {s['done']} done, {s['skipped']} skipped (complete), {s['failed']} failed; "
          f"{s['samples']} samples in {s['wall_s']:.1f} s, {s['samples_per_s'] or 0:.2f} samples/s, {engine} "
          f"{s['precision'] or ''}{where}, seed {settings.seed} -> {settings.out}/"
          + (f" (failures: {s['failures_file']})" if s["failures_file"] else ""))


if __name__ == "__main__":
    sys.exit(main())
