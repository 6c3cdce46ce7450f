"""Where the diversity lives: per level L, n samples that keep sample 0's latent groups below L and draw
the others afresh, scored as ``cvdvae eval --levels`` scores them; a plot and a figure grid.

    python benchmarks/levels.py MODEL --data HR_FOLDER [--n 8] [--temperature 0.8]
    python benchmarks/levels.py --demo       # the demo model (random weights) on its synthetic face

Writes ``benchmarks/results/<machine>-levels.json`` (the machine, the date, per level APD as MSE and
LPIPS, mean std, LR-PSNR and BRISQUE), ``docs/levels-plot.png`` (diversity against level) and
``docs/levels-grid.png`` (a row per level, a column per sample, the first input enlarged 4x).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import environment  # noqa: E402

from runtime.backends.cpu_features import cpu_flags  # noqa: E402

ENLARGE = 4
SERIES = (("apd_mse", "APD (MSE)", (31, 119, 180)), ("apd_lpips", "APD (LPIPS)", (255, 127, 14)),
          ("mean_std", "mean std", (44, 160, 44)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="an export folder or weights (default with --demo: the demo model)")
    parser.add_argument("--data", type=Path, help="a folder of HR images")
    parser.add_argument("--demo", action="store_true", help="the demo model (random weights) on its synthetic face")
    parser.add_argument("--count", type=int, default=4, help="inputs")
    parser.add_argument("--n", type=int, default=8, help="samples per input and level")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--figures", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)

    from cvdvae import Pipeline
    from runtime.cli.demo import demo_engine, write_face
    from runtime.cli.eval import load_brisque
    from runtime.evaluation.evaluate import EvalSettings, evaluate

    model = args.model or demo_engine(Path("outputs/demo/engine"))
    pipe = Pipeline.from_pretrained(model)
    levels = tuple(pipe.shape.levels.resolutions)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if args.demo:
            data = Path(tmp)
            write_face(data / "face.png", pipe.shape.hr_size)
        settings = EvalSettings(data, np.full(args.n, args.temperature, np.float32), "all", args.count, 0,
                                lpips_if_fetched(), False, load_brisque(), levels)
        start = time.perf_counter()
        results = evaluate(pipe, settings)
        wall = time.perf_counter() - start
        first = sorted(p for p in data.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[0]
        rows = [pipe(first, n=args.n, seed=0, temperature=args.temperature, from_hr=True, like=0,
                     vary_from=level).samples[0] for level in levels]
    machine = environment(threads=0)
    record = {"what": "where the diversity lives: per level L, sample 0's groups below L kept, the rest drawn afresh",
              "model": "demo (random weights)" if args.demo else str(model), "date": time.strftime("%Y-%m-%d"),
              "machine": machine, "cpu_flags": " ".join(sorted(cpu_flags() or [])) or None, "n": args.n,
              "temperature": args.temperature,
              "inputs": results["protocol"]["inputs"], "levels": results["levels"], "wall_s": round(wall, 1)}
    args.results.mkdir(parents=True, exist_ok=True)
    name = "-".join(machine["cpu"].lower().replace("(r)", "").split()[:3])
    (args.results / f"cpu-{name}-levels.json").write_text(json.dumps(record, indent=2) + "\n")
    write_plot(args.figures / "levels-plot.png", results["levels"])
    write_grid(args.figures / "levels-grid.png", levels, rows)
    print(json.dumps(results["levels"], indent=2))


def lpips_if_fetched():
    from cvdvae.hub.lpips import default_weights_path, load_lpips

    return load_lpips(default_weights_path()) if default_weights_path().is_file() else None


def write_plot(path: Path, rows: dict[str, dict]) -> None:
    """Each series against level (px, log scale), each scaled to its own largest value."""
    from PIL import Image, ImageDraw

    width, height, left, bottom, top, right = 560, 320, 50, 40, 20, 150
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    levels = [int(level) for level in rows]
    x_of = {level: left + i * (width - left - right) / max(1, len(levels) - 1) for i, level in enumerate(levels)}
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill="black")
    for level, x in x_of.items():
        draw.text((x - 8, height - bottom + 6), str(level), fill="black")
    draw.text(((width - right) / 2 - 40, height - 16), "varied from level (px)", fill="black")
    draw.text((4, top - 14), "relative to its largest value", fill="black")
    for j, (key, label, colour) in enumerate(SERIES):
        values = [rows[str(level)][key] for level in levels]
        if any(v is None for v in values) or max(values) <= 0:
            continue
        points = [(x_of[level], height - bottom - (height - bottom - top) * v / max(values))
                  for level, v in zip(levels, values)]
        draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((width - right + 10, top + 18 * j), f"{label} (max {max(values):.3g})", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_grid(path: Path, levels: tuple[int, ...], rows: list[np.ndarray]) -> None:
    """A row per level (its label on the left), a column per sample, enlarged ``ENLARGE`` times."""
    from PIL import Image, ImageDraw

    from runtime.images.outputs import grid, write_png

    tiles = []
    for level, samples in zip(levels, rows):
        size = samples.shape[1] * ENLARGE
        label = Image.new("RGB", (size, size), "white")
        ImageDraw.Draw(label).text((6, size // 2 - 6), f"from {level} px", fill="black")
        tiles += [np.asarray(label)] + [s.repeat(ENLARGE, 0).repeat(ENLARGE, 1) for s in samples]
    write_png(path, grid(tiles, columns=1 + len(rows[0])))


if __name__ == "__main__":
    main()
