"""Running a verb as a command: its typer app, one-line errors, exit codes and ``--debug``.

Each verb is a one-command typer app in its own module (``runtime.cli.run``,
``runtime.cli.export``, ...); ``runtime.cli.app`` puts them under one ``cvdvae`` command, and
each keeps its ``cvdvae-<verb>`` alias. ``run_app`` runs either. The library's errors name
settings, not flags (``cvdvae.errors``); ``flag_for`` writes them as this command line's flags.

Exit status (docs/reference/errors.md): 0 success, 1 a failure while working, 2 bad usage or
bad input (a bad flag value and a missing extra included: the one-line message names the flag
or the extra), 130 on Ctrl-C. Only ``--debug``, which every verb takes, shows a traceback.
``--input`` takes several values at once (``--input a b``, what a shell glob expands to), up
to the next flag.

This module imports typer and nothing heavy: ``cvdvae --help`` runs on it alone.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import inspect
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Sequence

import typer

from cvdvae.errors import CVDVAEError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
GREEDY_FLAGS = ("--input", "-i")
DEBUG = contextvars.ContextVar("cvdvae_debug", default=False)  # this command's --debug, once parsed


def remember_debug(value: bool) -> bool:
    if value:
        DEBUG.set(True)
    return value


# Eager: set before any other flag is checked, so a bad flag value's error shows its traceback too.
DebugFlag = Annotated[bool, typer.Option("--debug", is_eager=True, callback=remember_debug,
                                         help="show the traceback of an error")]

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


class VerbApp(typer.Typer):
    """A one-command typer app whose command also takes ``--debug`` (declared here, once, for every verb)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)

        def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
            register(with_debug_flag(function))
            return function

        return decorator


def with_debug_flag(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with a ``--debug`` option (``DebugFlag``), which it does not see."""
    signature = inspect.signature(function, eval_str=True)
    debug = inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugFlag)

    @functools.wraps(function)
    def command(*args: Any, debug: bool = False, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    command.__signature__ = signature.replace(parameters=[*signature.parameters.values(), debug])  # type: ignore
    command.__annotations__ = {**{p.name: p.annotation for p in signature.parameters.values()}, "debug": DebugFlag}
    return command


def command_app(help: str) -> typer.Typer:
    """A one-command typer app with this project's settings."""
    return VerbApp(help=help, add_completion=False, pretty_exceptions_enable=False,
                   context_settings={"help_option_names": ["--help", "-h"]})


def as_command(app: typer.Typer) -> Any:
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


def run_app(app: typer.Typer | Callable[[], Any], argv: Sequence[str] | None = None, prog: str = "cvdvae",
            verbs: Sequence[str] = ()) -> int:
    """Run a typer app (or the click command ``app()`` loads) as a command: its return value, or a
    one-line error and the exit status."""
    args = expand_greedy(list(sys.argv[1:] if argv is None else argv))
    label = f"{prog} {args[0]}" if args and args[0] in verbs else prog
    DEBUG.set(False)
    try:
        command = as_command(app) if isinstance(app, typer.Typer) else app()
        result = command.main(args, prog_name=prog, standalone_mode=False)
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CVDVAEError as err:
        return _fail(label, err.describe(flag_for), EXIT_BAD_INPUT, DEBUG.get())
    except typer.Abort:
        print(f"{label}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the last line of defence for a command
        if hasattr(err, "format_message") and getattr(err, "exit_code", None) in (1, 2):  # click's usage errors
            return _fail(label, err.format_message(), err.exit_code, DEBUG.get())
        return _fail(label, str(err) or type(err).__name__, EXIT_FAILURE, DEBUG.get(),
                     hint=" (run with --debug for the traceback)")
    if result == EXIT_INTERRUPTED:  # typer turns Ctrl-C inside a command into this status
        print(f"{label}: interrupted", file=sys.stderr)
    return result if isinstance(result, int) else EXIT_OK


@dataclass(frozen=True)
class Script:
    """One of pyproject.toml's scripts. ``run(argv)``: the command in this process, its exit status.
    Called as the installed script calls it, the command is the process's whole work: Python then
    exits as usual, joining threads and running the exit handlers, but the process ends with the
    last handler, without freeing one object at a time what it holds; the operating system takes it
    back whole (a loaded engine takes a fifth of a second to free, after all the work is done)."""

    run: Callable[[Sequence[str] | None], int]

    def __call__(self) -> int:
        status = [EXIT_FAILURE]
        atexit.register(_end_process, status)  # registered first, run last
        status[0] = self.run(None)
        return status[0]


def _end_process(status: list[int]) -> None:
    if "logging" in sys.modules:  # its own handler was registered before ours, so would run after it
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: what is left cannot be written anyway
            pass
    os._exit(status[0])


def _fail(label: str, message: str, code: int, debug: bool, hint: str = "") -> int:
    if debug:
        traceback.print_exc()
    message = message.strip().replace("\n", " ")
    print(f"{label}: error: {message}{hint}", file=sys.stderr)
    return code
