"""The flags verbs share: the same name, meaning and checks on every verb that has them.

A list flag (``--input``, ``--temperature``) may be repeated and accumulates. Running a verb,
its errors and exit codes: ``runtime.cli.command``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from cvdvae.errors import CVDVAEError
from cvdvae.seeding import MAX_SEED

from ..limits import DEFAULT_TEMPERATURE, MAX_TEMPERATURE

# The same name and meaning on every verb that has them.
Seed = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED,
                                   help="noise seed, 0 .. 2^64-1: the same seed, the same samples on every backend")]
Samples = Annotated[Optional[int], typer.Option("--n", min=1, help="samples per input (default 8, or one per "
                                                                   "--temperature value)")]
Temperatures = Annotated[Optional[list[str]], typer.Option(
    "--temperature", "-t", help=f"prior temperature, 0 to {MAX_TEMPERATURE:g} (default {DEFAULT_TEMPERATURE}); repeat "
                                "it or give a comma list for one per sample, a sweep")]
# Noise by level (cvdvae.noise_recipe): run and eval.
Like = Annotated[Optional[int], typer.Option("--like", min=0, help=(
    "keep sample LIKE's coarse levels (below --vary-from) in every sample; sample LIKE itself is among them"))]
LikeSeed = Annotated[Optional[int], typer.Option("--like-seed", min=0, max=MAX_SEED, help=(
    "--like names a sample of this seed (default: --seed)"))]
VaryFrom = Annotated[Optional[int], typer.Option("--vary-from", min=1, help=(
    "with --like: the level (px) from which the samples differ; the model's levels are its decoder's resolutions "
    "(1, 4, 8, 16, 32, 64, 128, 256 for FFHQ-256)"))]
TemperatureAt = Annotated[Optional[list[str]], typer.Option("--temperature-at", help=(
    "LEVEL=FACTOR: multiply the temperature of the prior's latent groups from LEVEL px up (to the next LEVEL); "
    "repeat it or give a comma list, e.g. 128=0.5,256=0.3"))]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace what exists (never done without it)")]
Json = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout (and nothing else there)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar and no summary")]
Precision = Annotated[str, typer.Option("--precision", help=(
    "auto: the export's own (FP32 on a CPU); bf16: OpenVINO in bf16 on CPUs with AVX512-BF16 or AMX: faster, "
    "samples slightly off FP32's (docs/concepts/precision.md)"))]
Tf32 = Annotated[bool, typer.Option("--tf32", help="allow TF32 on CUDA (off: FP32 means FP32)")]

# Where the weights come from (export, train, eval, convert).
Checkpoint = Annotated[Optional[Path], typer.Option(
    "--checkpoint", exists=True, dir_okay=False, help=".ckpt, .safetensors or .th/.pt/.pth weights")]
Vdvae = Annotated[Optional[Path], typer.Option(
    "--vdvae", exists=True, dir_okay=False, help="VD-VAE .th (or our .safetensors) with the prior weights "
                                                 "(default: the one cvdvae fetch vdvae-ffhq256 put in $CVDVAE_HOME)")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", exists=True, dir_okay=False, help="YAML/JSON of official hyper-parameter names (wins over all)")]
Scale = Annotated[int, typer.Option("--scale", help="picks the ffhq256-x{scale} preset: 4, 8 or 16")]


def check_choice(value: int | str | None, choices: Sequence, flag: str) -> None:
    if value is not None and value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(str, choices))}", param_hint=f"'{flag}'")


def check_preset(name: str | None) -> None:
    from cvdvae.config import PRESETS

    check_choice(name, sorted(PRESETS), "--preset")


def parse_temperatures(values: list[str] | None, n: int | None) -> list[float]:
    """--temperature values (repeated and/or comma lists) -> one per sample, checked as the
    library checks them (``runtime.pipeline.check_temperatures``)."""
    try:
        parsed = [float(v) for text in values or [] for v in text.split(",") if v.strip()]
    except ValueError:
        parsed = [math.nan]
    if values and not parsed:
        parsed = [math.nan]
    if n is not None and len(parsed) > 1 and n != len(parsed):
        raise typer.BadParameter(f"{len(parsed)} values but --n is {n}: give one per sample",
                                 param_hint="'--temperature'")
    from ..pipeline import check_temperatures

    try:
        return check_temperatures(parsed or DEFAULT_TEMPERATURE, n).tolist()
    except CVDVAEError:
        raise typer.BadParameter(f"{','.join(values or [])!r}: expected numbers from 0 to {MAX_TEMPERATURE:g}",
                                 param_hint="'--temperature'") from None




def parse_temperature_at(values: list[str] | None) -> dict[int, float] | None:
    """--temperature-at LEVEL=FACTOR values (repeated and/or comma lists) -> {level: factor}; the
    library checks them against the model (``cvdvae.noise_recipe.check_recipe``)."""
    pairs: dict[int, float] = {}
    for text in (v for value in values or [] for v in value.split(",") if v.strip()):
        level, _, factor = text.partition("=")
        try:
            parsed_level, parsed_factor = int(level), float(factor)
        except ValueError:
            raise typer.BadParameter(f"{text!r}: expected LEVEL=FACTOR, a level in px and a number, e.g. 128=0.5",
                                     param_hint="'--temperature-at'") from None
        if parsed_level in pairs:
            raise typer.BadParameter(f"level {parsed_level} given twice", param_hint="'--temperature-at'")
        pairs[parsed_level] = parsed_factor
    return pairs or None
