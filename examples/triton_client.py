"""Faces from Triton Inference Server: a small HTTP client for a model repository that
``cvdvae export --triton-repo`` (or ``python -m runtime.cli.triton``) wrote.

The server runs the graph alone. This client makes the contract's seeded noise itself, with the
runtime's generator (``cvdvae.seeding.noise_numpy``, docs/contract/noise-and-seeds.md), so a seed gives the faces
``cvdvae run`` gives for it, file names and rounding included. One request is one LR image
(B = 1) with n samples; Triton's dynamic batcher joins concurrent requests of equal n.

    pip install 'tritonclient[http]'
    python examples/triton_client.py --input face_lr.png --n 8 --seed 0 --out faces/
    python examples/triton_client.py --model prior --n 4 -t 0.8,0.6 ...   # a prior-only model: no --input
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional, Sequence

import numpy as np
import typer

from cvdvae.seeding import noise_numpy
from runtime.backends.interface import Sampled, sampled
from runtime.cli.command import command_app, examples, run_app
from runtime.cli.common import Quiet, Samples, Seed, Temperatures, parse_temperatures
from runtime.images.decode import InputError, decode_image
from runtime.images.outputs import write_samples
from runtime.limits import Limits
from runtime.pipeline import broken_samples, to_uint8_samples


def build_inputs(lr_uint8_chw: np.ndarray | None, seed: int, n: int, noise_dim: int,
                 temperatures: Sequence[float] | float) -> dict[str, np.ndarray]:
    """One request's tensors (docs/contract/graph.md), B = 1: ``lr`` float32 [1, 3, h, w] 0..255 from
    ``lr_uint8_chw`` [3, h, w] uint8 (left out for a prior-only model), ``noise`` float32
    [1, n, D] (samples 0 .. n-1 of ``seed``), ``temperature`` float32 [1, n] (one value for all
    samples, or one each)."""
    temperature = np.asarray(temperatures, dtype=np.float32).reshape(-1)
    if temperature.size == 1:
        temperature = np.repeat(temperature, n)
    if temperature.shape != (n,):
        raise ValueError(f"{temperature.size} temperatures for {n} samples: give one, or one per sample")
    inputs = {"noise": noise_numpy(seed, n, noise_dim)[None], "temperature": temperature[None]}
    if lr_uint8_chw is not None:
        if lr_uint8_chw.dtype != np.uint8 or lr_uint8_chw.ndim != 3 or lr_uint8_chw.shape[0] != 3:
            raise ValueError(f"lr must be uint8 [3, h, w], not {lr_uint8_chw.dtype} {list(lr_uint8_chw.shape)}")
        inputs["lr"] = lr_uint8_chw.astype(np.float32)[None]
    return inputs


def model_signature(config: dict[str, Any]) -> tuple[int | None, int, bool]:
    """(LR size, or None for a prior-only model; D; whether the graph counts NaN/Inf itself) from the
    server's model config (JSON)."""
    dims = {tensor["name"]: [int(d) for d in tensor["dims"]] for tensor in config["input"]}
    counts = any(tensor["name"] == "non_finite" for tensor in config["output"])
    return (dims["lr"][-1] if "lr" in dims else None), dims["noise"][-1], counts


def read_lr(path: Path, size: int) -> np.ndarray:
    def check(img: Any) -> None:
        if img.size != (size, size):
            raise InputError(f"{path}: is {img.width}x{img.height}, the model takes {size}x{size} LR images")

    return np.ascontiguousarray(decode_image(path, Limits().max_image_pixels, check).pixels.transpose(2, 0, 1))


def infer(client: Any, model: str, inputs: dict[str, np.ndarray], counts: bool) -> Sampled:
    """``sr`` float32 [1, n, 3, H, W] in [0, 1] and each sample's NaN/Inf count (the graph's own
    ``non_finite`` output where the model has it)."""
    import tritonclient.http as http

    tensors = []
    for name, array in inputs.items():
        tensor = http.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
        tensors.append(tensor)
    names = ["sr", "non_finite"] if counts else ["sr"]
    result = client.infer(model, tensors, outputs=[http.InferRequestedOutput(name, binary_data=True) for name in names])
    return sampled(result.as_numpy("sr"), result.as_numpy("non_finite") if counts else None)


app = command_app("Sample faces from a cvdvae model served by Triton Inference Server (HTTP), with the seeded "
                  "noise made here.")


@app.command("triton-client", epilog=examples(
    "python examples/triton_client.py --input face_lr.png --n 8 --seed 0 --out faces/",
    "python examples/triton_client.py --url gpu-box:8000 --model prior --n 4 -t 0.8"))
def client_command(
    input: Annotated[Optional[Path], typer.Option("--input", "-i", dir_okay=False, help=(
        "the LR image (a PNG of the model's LR size); none for a prior-only model"))] = None,
    url: Annotated[str, typer.Option(help="the server's HTTP endpoint")] = "localhost:8000",
    model: Annotated[str, typer.Option(help="the model's name in the repository")] = "cvdvae",
    seed: Seed = 0,
    n: Samples = None,
    temperature: Temperatures = None,
    out: Annotated[Path, typer.Option("--out", "-o", file_okay=False, help="output folder")] = Path("outputs/triton"),
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for an answer")] = 600.0,
    quiet: Quiet = False,
) -> int:
    import tritonclient.http as http

    temperatures = parse_temperatures(temperature, n)
    client = http.InferenceServerClient(url, network_timeout=timeout)
    lr_size, noise_dim, counts = model_signature(client.get_model_config(model))
    if (lr_size is None) != (input is None):
        raise typer.BadParameter(f"{model} is a prior-only model: it takes no LR image" if input else
                                 f"{model} needs an LR image of {lr_size}x{lr_size}", param_hint="'--input'")
    lr = None if input is None else read_lr(input, lr_size)
    result = infer(client, model, build_inputs(lr, seed, len(temperatures), noise_dim, temperatures), counts)
    samples = Sampled(result.samples[0], result.non_finite[0])
    broken = broken_samples(samples)
    out.mkdir(parents=True, exist_ok=True)
    stem = "sample" if input is None else input.stem
    written = write_samples(out, stem, seed, to_uint8_samples(samples.samples, broken), None, frozenset(broken))
    if not quiet:
        print(f"wrote {len(written)} samples to {out}/ ({stem}_s{seed}_NN.png)")
    if broken:
        print(f"triton_client.py: error: {len(broken)} samples held NaN or Inf and were not written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_app(app, prog="triton_client.py"))
