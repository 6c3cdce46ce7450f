"""``cvdvae <verb>``: one command over the verbs, each loaded when used.

Each verb is a module of ``runtime.cli`` that parses its flags and calls the library that
owns the work (``runtime.cli.export`` calls ``export``, ``runtime.cli.train`` calls
``cvdvae.train``, ...). ``cvdvae run`` imports the runtime alone (no PyTorch for an exported
graph); ``cvdvae --help`` loads every verb to list it. Each verb also runs as ``cvdvae-<verb>``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any, Sequence

import typer
from typer.core import TyperGroup

import cvdvae

from .common import as_command, run_app

VERBS = ("fetch", "export", "run", "demo", "convert", "train", "eval", "serve")  # each a module runtime.cli.<verb>


class Verbs(TyperGroup):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in VERBS:
            return None
        return as_command(importlib.import_module(f"runtime.cli.{name}").app)


def show_version(value: bool) -> None:
    if value:
        print(f"cvdvae {cvdvae.__version__}")
        raise typer.Exit()


app = typer.Typer(cls=Verbs, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["--help", "-h"]},
                  help="Diverse face super-resolution with a hierarchical VAE prior (CVDVAE on VD-VAE): fetch the "
                       "prior, export graphs and TensorRT engines, sample faces, train and evaluate.",
                  epilog="Examples:\n\n  cvdvae fetch vdvae-ffhq256 && cvdvae export --prior && "
                         "cvdvae run engines/vdvae-ffhq256-fp32 --n 16\n\n"
                         "  cvdvae run engines/x4-fp16 --input faces/ --n 8 --seed 0\n\n"
                         "  cvdvae demo")


@app.callback()
def umbrella(version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                                   help="print the version and exit")] = False) -> None:
    """Every verb has its own --help."""


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae", verbs=VERBS)


if __name__ == "__main__":
    sys.exit(main())
