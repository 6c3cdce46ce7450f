"""``cvdvae convert`` (alias ``cvdvae-convert``): any accepted weight file(s) -> our ``.safetensors``
with the config inside (``cvdvae.weights``)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from cvdvae.errors import CVDVAEError

from .command import command_app, examples, run_app
from .common import Checkpoint, ConfigFile, Overwrite, Vdvae, check_preset

app = command_app("Check weight files strictly against a config and write one .safetensors file holding every "
                  "tensor and the resolved config.")


@app.command("convert", epilog=examples(
    "cvdvae convert --checkpoint SR_x8.ckpt --out x8.safetensors",
    "cvdvae convert --checkpoint lr_encoder.safetensors --vdvae ffhq256-iter-1700000-model-ema.th "
    "--out x8.safetensors"))
def convert_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="output file, X.safetensors", show_default=False)],
    checkpoint: Checkpoint = None,
    vdvae: Vdvae = None,
    config: ConfigFile = None,
    preset: Annotated[Optional[str], typer.Option(help="base config (default: the FFHQ-256 VD-VAE)")] = None,
    overwrite: Overwrite = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="list the config keys that were ignored")] = False,
) -> int:
    from cvdvae.weights import resolve_weights, save_safetensors

    check_preset(preset)
    if checkpoint is None and vdvae is None:
        raise typer.BadParameter("give the weights to convert", param_hint="'--checkpoint'")
    if out.suffix != ".safetensors":
        raise typer.BadParameter(f"{out} must end in .safetensors", param_hint="'--out'")
    if out.exists() and not overwrite:
        raise CVDVAEError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise CVDVAEError(f"folder {out.parent} does not exist")
    resolved = resolve_weights(checkpoint, vdvae, config, preset)
    if verbose and resolved.ignored_config_keys:
        print(f"ignored config keys: {', '.join(resolved.ignored_config_keys)}", file=sys.stderr)
    save_safetensors(out, resolved.tensors, resolved.config)
    cfg = resolved.config
    n_params = sum(math.prod(t.shape) for k, t in resolved.tensors.items() if k not in ("shift", "scale"))
    kind = f"x{cfg.scale_factor} (ky={cfg.ky})" if cfg.has_lr_encoder else "prior only"
    print(f"wrote {out}: {len(resolved.tensors)} tensors, {n_params:,} parameters, {kind}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_app(app, argv, prog="cvdvae-convert")


if __name__ == "__main__":
    sys.exit(main())
