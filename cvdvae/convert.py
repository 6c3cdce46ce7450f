"""``cvdvae-convert``: any accepted weight file(s) -> our ``.safetensors`` with the config inside."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from .cli import add_common_options, run_command
from .config import PRESETS
from .errors import CVDVAEError
from .weights import resolve_weights, save_safetensors


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cvdvae-convert",
        description="Check weight files strictly against a config and write one .safetensors file "
                    "holding every tensor and the resolved config.")
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="CVDVAE .ckpt, our .safetensors, or a VD-VAE .th/.pt/.pth")
    p.add_argument("--vdvae", type=Path, help="VD-VAE .th giving the prior weights the checkpoint lacks")
    p.add_argument("--config", type=Path, help="YAML/JSON of official hyper-parameter names (wins over all)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="base config (default: the FFHQ-256 VD-VAE)")
    p.add_argument("--out", required=True, type=Path, help="output file, X.safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--verbose", action="store_true", help="list the config keys that were ignored")
    add_common_options(p)
    return p


def convert(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.suffix != ".safetensors":
        raise CVDVAEError(f"--out {out} must end in .safetensors")
    if out.exists() and not args.overwrite:
        raise CVDVAEError(f"{out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise CVDVAEError(f"folder {out.parent} does not exist")
    resolved = resolve_weights(args.checkpoint, args.vdvae, args.config, args.preset)
    if args.verbose and resolved.ignored_config_keys:
        print(f"ignored config keys: {', '.join(resolved.ignored_config_keys)}", file=sys.stderr)
    save_safetensors(out, resolved.tensors, resolved.config)
    cfg = resolved.config
    n_params = sum(math.prod(t.shape) for k, t in resolved.tensors.items() if k not in ("shift", "scale"))
    kind = f"x{cfg.scale_factor} (ky={cfg.ky})" if cfg.has_lr_encoder else "prior only"
    print(f"wrote {out}: {len(resolved.tensors)} tensors, {n_params:,} parameters, {kind}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(convert, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
