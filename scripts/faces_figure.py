#!/usr/bin/env python3
"""The docs' picture of ``cvdvae run --faces``: the photo with what was found (box, landmarks,
FFHQ square), whole-photo sample 0, and the first face's grid.

    cvdvae run outputs/demo/engine --input astronaut.png --faces --n 8 --out outputs/faces --json > faces.json
    python scripts/faces_figure.py faces.json docs/assets/faces-astronaut.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HEIGHT = 384


def square_in_photo(face: dict, sample_size: int, upscale: float) -> list[tuple[float, float]]:
    """The sample square's outline in input-photo pixels (output = upscale (input + 0.5) - 0.5)."""
    m = np.array(face["sample_to_output"])
    edge = [(-0.5, -0.5), (-0.5, sample_size - 0.5), (sample_size - 0.5, sample_size - 0.5),
            (sample_size - 0.5, -0.5), (-0.5, -0.5)]
    return [tuple((m[:, :2] @ uv + m[:, 2] + 0.5) / upscale - 0.5) for uv in edge]


def annotated(photo: Image.Image, faces: list[dict], sample_size: int, upscale: float) -> Image.Image:
    image = photo.convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, image.width // 256)
    for face in faces:
        draw.rectangle(face["box"], outline=(255, 220, 0), width=width)
        draw.line(square_in_photo(face, sample_size, upscale), fill=(0, 200, 255), width=width)
        for x, y in face["landmarks"]:
            draw.ellipse([x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width], fill=(255, 40, 40))
    return image


def fit(image: Image.Image, resample=Image.LANCZOS) -> Image.Image:
    return image.convert("RGB").resize((round(image.width * HEIGHT / image.height), HEIGHT), resample)


def main(report_path: str, out: str) -> int:
    photo = json.loads(Path(report_path).read_text())["photos"][0]
    outputs = [Path(p) for p in photo["outputs"]]
    stem = Path(photo["input"]).stem
    sample_size = Image.open(next(p for p in outputs if p.name == f"{stem}_face0_s0_00.png")).width
    panels = [fit(annotated(Image.open(photo["input"]), photo["faces"], sample_size, photo["upscale"])),
              fit(Image.open(next(p for p in outputs if p.name == f"{stem}_s0_00.png"))),
              fit(Image.open(next(p for p in outputs if p.name == f"{stem}_face0_s0_grid.png")), Image.NEAREST)]
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), HEIGHT), "white")
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 8
    canvas.save(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
