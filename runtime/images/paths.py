"""Input paths: files, folders (their images, sorted) and globs -> the image files to read."""

from __future__ import annotations

import glob
from pathlib import Path

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def expand_inputs(specs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders and globs -> (image paths, each once, in order; problems, one line each)."""
    paths: list[Path] = []
    problems: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in EXTENSIONS and f.is_file())
            if not found:
                problems.append(f"{spec}: no {'/'.join(e[1:] for e in EXTENSIONS)} images in this folder")
            paths += found
        elif any(ch in spec for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).suffix.lower() in EXTENSIONS)
            if not found:
                problems.append(f"{spec}: the pattern matches no image")
            paths += found
        else:
            paths.append(p)
    return list(dict.fromkeys(paths)), problems
