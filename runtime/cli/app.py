"""``cvdvae <verb>``: one command over the verbs, each loaded only when it runs.

Each verb is a module of ``runtime.cli`` that parses its flags and calls the library that
owns the work (``runtime.cli.export`` calls ``export``, ``runtime.cli.train`` calls
``cvdvae.train``, ...). ``VERBS`` says, without importing them, what each verb is for and which
extra it needs (``cvdvae.extras``): ``cvdvae --help`` lists them from here alone, and a verb
whose extra is missing is one line naming it before its module is imported. Each verb also
runs as ``cvdvae-<verb>`` (the functions at the end, pyproject.toml's scripts).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, Sequence

import typer
from typer.core import TyperCommand, TyperGroup

from cvdvae.version import __version__

from .command import Script, as_command, run_app


@dataclass(frozen=True)
class Verb:
    help: str                   # one line, for the umbrella's --help
    extras: tuple[str, ...] = ()  # what it needs beyond the base install (each: pip install 'cvdvae[extra]')


VERBS = {
    "fetch": Verb("Fetch the public weights cvdvae uses (the VD-VAE prior, the face detector) into $CVDVAE_HOME."),
    "export": Verb("Trace a model into one ONNX graph with explicit noise, validate it, build a TensorRT engine.",
                   ("export",)),
    "run": Verb("Super-resolve LR faces or whole photos into n seeded, diverse samples each."),
    "demo": Verb("The whole pipeline on the built-in untrained tiny model.", ("export",)),
    "convert": Verb("Check weight files against a config and write one .safetensors file.", ("export",)),
    "train": Verb("Train the LR encoder against a frozen VD-VAE.", ("export",)),
    "eval": Verb("The paper's metrics (LR-PSNR, APD, PSNR, SSIM, LPIPS) on any backend.", ("export",)),
    "serve": Verb("Serve a model over HTTP on Ray Serve, with a web page.", ("serve",)),
}


class LazyVerb(TyperCommand):
    """A verb as the umbrella lists it; its module is imported, after its extras are checked, when it runs."""

    def __init__(self, name: str, verb: Verb):
        super().__init__(name, help=verb.help, short_help=verb.help, add_help_option=False)
        self.verb = verb

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        return load_verb(self.name).make_context(info_name, args, parent=parent, **extra)


def load_verb(name: str) -> Any:
    """Verb ``name``'s click command; ``MissingExtra`` first when one of its extras is not installed."""
    from cvdvae.extras import require

    for extra in VERBS[name].extras:
        require(extra, f"cvdvae {name}")
    return as_command(importlib.import_module(f"runtime.cli.{name}").app)


class Verbs(TyperGroup):
    """The umbrella group: verbs listed from ``VERBS``, each loaded on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: Any, name: str) -> Any:
        return LazyVerb(name, VERBS[name]) if name in VERBS else None


def show_version(value: bool) -> None:
    if value:
        print(f"cvdvae {__version__}")
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
    return run_app(app, argv, prog="cvdvae", verbs=tuple(VERBS))


def run_verb(name: str, argv: Sequence[str] | None = None) -> int:
    """Verb ``name`` as its own command, ``cvdvae-<name>``."""
    return run_app(lambda: load_verb(name), argv, prog=f"cvdvae-{name}")


# pyproject.toml's scripts: ``cvdvae`` and the ``cvdvae-<verb>`` aliases.
cvdvae_main = Script(main)
fetch_main, export_main, run_main, demo_main = (Script(partial(run_verb, verb))
                                                for verb in ("fetch", "export", "run", "demo"))
convert_main, train_main, eval_main, serve_main = (Script(partial(run_verb, verb))
                                                   for verb in ("convert", "train", "eval", "serve"))

if __name__ == "__main__":
    sys.exit(cvdvae_main())
