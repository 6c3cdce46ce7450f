"""What every command shares: typer apps, the common flags, one-line errors and exit codes.

Each verb is a one-command typer app in its own module here (``runtime.cli.run``,
``runtime.cli.export``, ...); ``runtime.cli.app`` puts them under one ``cvdvae`` command, and
each keeps its ``cvdvae-<verb>`` alias. ``run_app`` runs either. The library's errors name
settings, not flags (``cvdvae.errors``); ``flag_for`` writes them as this command line's flags.

Exit status (contracts.md section 5): 0 success, 1 a failure while working, 2 bad usage or
bad input (a bad flag value included: the one-line message names the flag), 130 on Ctrl-C.
Only ``--debug`` shows a traceback. A list flag (``--input``, ``--temperature``) may be
repeated and accumulates; ``--input`` also takes several values at once (``--input a b``,
what a shell glob expands to), up to the next flag.
"""

from __future__ import annotations

import math
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from cvdvae.errors import CVDVAEError
from cvdvae.seeding import MAX_SEED

from ..pipeline import DEFAULT_TEMPERATURE, MAX_TEMPERATURE, check_temperatures

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
GREEDY_FLAGS = ("--input", "-i")

# ------------------------------------------------------------------ the common flags
# The same name and meaning on every verb that has them.
Seed = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="noise seed, 0 .. 2^64-1 (contracts.md 4)")]
Samples = Annotated[Optional[int], typer.Option("--n", min=1, help="samples per input (default 8, or one per "
                                                                   "--temperature value)")]
Temperatures = Annotated[Optional[list[str]], typer.Option(
    "--temperature", "-t", help=f"prior temperature, 0 to {MAX_TEMPERATURE:g} (default {DEFAULT_TEMPERATURE}); repeat "
                                "it or give a comma list for one per sample, a sweep")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace what exists (never done without it)")]
Json = Annotated[bool, typer.Option("--json", help="print a JSON summary on stdout (and nothing else there)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar and no summary")]
Debug = Annotated[bool, typer.Option("--debug", help="show the traceback of an error")]
Precision = Annotated[str, typer.Option("--precision", help=(
    "auto: the export's own (FP32 on a CPU); bf16: OpenVINO in bf16 on CPUs with AVX512-BF16 or AMX, about 1.8x "
    "FP32's rate, samples at 29.5 dB PSNR from FP32's (README, Precision)"))]
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
    try:
        return check_temperatures(parsed or DEFAULT_TEMPERATURE, n).tolist()
    except CVDVAEError:
        raise typer.BadParameter(f"{','.join(values or [])!r}: expected numbers from 0 to {MAX_TEMPERATURE:g}",
                                 param_hint="'--temperature'") from None


# Settings named in library errors whose flag is not ``--`` and the name with dashes.
FLAGS = {("paste", "none"): "--no-paste", ("paste", "transparent"): "--face-only"}


def flag_for(name: str, value: object) -> str:
    """A library setting as this command line writes it: ``backend="onnxruntime"`` -> ``--backend onnxruntime``,
    ``from_hr=True`` -> ``--from-hr``."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, str) and (name, value) in FLAGS:
        return FLAGS[(name, value)]
    if value is None:
        return flag
    if isinstance(value, bool):
        return flag if value else f"--no-{name.replace('_', '-')}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def examples(*commands: str) -> str:
    """The end of a --help: real commands, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  {c}" for c in commands)


def command_app(help: str) -> typer.Typer:
    """A one-command typer app with this project's settings."""
    return typer.Typer(help=help, add_completion=False, pretty_exceptions_enable=False,
                       context_settings={"help_option_names": ["--help", "-h"]})


def as_command(app: typer.Typer):
    """The app as a click command; a one-command app's command gets the app's help text."""
    command = typer.main.get_command(app)
    if not getattr(command, "help", None):
        command.help = app.info.help
    return command


# ------------------------------------------------------------------------- running
def expand_greedy(argv: Sequence[str]) -> list[str]:
    """``--input a b --n 2`` -> ``--input a --input b --n 2`` (click takes one value per flag)."""
    out: list[str] = []
    flag, values = None, 0
    for token in [*argv, "--"]:  # a sentinel closes the last run
        if flag and (token in GREEDY_FLAGS or (token.startswith("-") and token != "-")):
            if not values:
                out.append(flag)  # no value: click says the flag needs one
            flag = None
        if token in GREEDY_FLAGS:
            flag, values = token, 0
        elif flag:
            out += [flag, token]
            values += 1
        else:
            out.append(token)
    return out[:-1]


def run_app(app: typer.Typer, argv: Sequence[str] | None = None, prog: str = "cvdvae", verbs: Sequence[str] = ()
            ) -> int:
    """Run a typer app as a command: its return value, or a one-line error and the exit status."""
    args = expand_greedy(list(sys.argv[1:] if argv is None else argv))
    label = f"{prog} {args[0]}" if args and args[0] in verbs else prog
    debug = "--debug" in args
    try:
        result = as_command(app).main(args, prog_name=prog, standalone_mode=False)
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CVDVAEError as err:
        return _fail(label, err.describe(flag_for), EXIT_BAD_INPUT, debug)
    except typer.Abort:
        print(f"{label}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the last line of defence for a command
        if hasattr(err, "format_message") and getattr(err, "exit_code", None) in (1, 2):  # click's usage errors
            return _fail(label, err.format_message(), err.exit_code, debug)
        return _fail(label, str(err) or type(err).__name__, EXIT_FAILURE, debug,
                     hint=" (run with --debug for the traceback)")
    if result == EXIT_INTERRUPTED:  # typer turns Ctrl-C inside a command into this status
        print(f"{label}: interrupted", file=sys.stderr)
    return result if isinstance(result, int) else EXIT_OK


def _fail(label: str, message: str, code: int, debug: bool, hint: str = "") -> int:
    if debug:
        traceback.print_exc()
    message = message.strip().replace("\n", " ")
    print(f"{label}: error: {message}{hint}", file=sys.stderr)
    return code
