#!/usr/bin/env python3
"""Where a CPU sample's time goes: OpenVINO's per-layer performance counters, by op type and by
the resolution a layer works at, so the next speed-up is chosen from data.

    python benchmarks/where_time_goes.py --engine-dir /tmp/x8 --json benchmarks/results/mine-profile.json

Runs one warm-up call and ``--calls`` profiled calls of ``--n`` samples (B = 1) on the export
folder's ``model.onnx``. A layer's resolution is the spatial size of the ONNX node OpenVINO
reports it under (its output's last dimension, from the graph's shape inference); layers
OpenVINO adds itself (reorders, converts) are counted as "(added by OpenVINO)".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import today  # noqa: E402 - after the path set-up


def resolutions(onnx_path: Path) -> dict[str, int]:
    """ONNX node name -> the spatial size of its first output (0 when it has none)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*proto.graph.value_info, *proto.graph.output]}
    sizes = {}
    for node in proto.graph.node:
        dims = shapes.get(node.output[0], []) if node.output else []
        sizes[node.name] = dims[-1] if len(dims) >= 3 and dims[-1] else 0
    return sizes


def split(layers: list[dict], sizes: dict[str, int]) -> dict:
    by_type: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, float] = defaultdict(float)
    by_resolution: dict[str, float] = defaultdict(float)
    for layer in layers:
        by_type[layer["type"]] += layer["us"]
        by_kernel[layer["kernel"]] += layer["us"]
        size = sizes.get(layer["name"].split("/")[0])  # OpenVINO suffixes what it split off ("/WithoutBiases")
        where = "(added by OpenVINO)" if size is None else f"{size}x{size}" if size else "(no image)"
        by_resolution[where] += layer["us"]
    total = sum(by_type.values())

    def table(times: dict[str, float]) -> list[dict]:
        return [{"what": k, "ms": round(v / 1000, 1), "share": round(v / total, 4)}
                for k, v in sorted(times.items(), key=lambda kv: -kv[1])]

    return {"total_ms": round(total / 1000, 1), "by_op_type": table(by_type), "by_kernel": table(by_kernel),
            "by_resolution": table(by_resolution)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine-dir", type=Path, required=True, help="a cvdvae export folder")
    p.add_argument("--n", type=int, default=1, help="samples per call")
    p.add_argument("--calls", type=int, default=2, help="profiled calls (after one warm-up)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path, help="write the split here")
    args = p.parse_args(argv)
    from runtime.backends.openvino import OpenVINOBackend
    from runtime.model_files import locate

    files = locate(args.engine_dir)
    backend = OpenVINOBackend(files, threads=args.threads, profile=True)
    lr = np.random.default_rng(0).integers(0, 256, (1, 3, files.lr_size, files.lr_size)).astype(np.float32)
    t = np.full(args.n, 0.8, np.float32)
    backend.sample(lr, 0, 0, t)
    layers: list[dict] = []
    for call in range(args.calls):
        backend.sample(lr, 0, args.n * (call + 1), t)
        layers += backend.layer_times()
    result = split(layers, resolutions(files.onnx))
    result.update(date=today(), backend="openvino", n=args.n, calls=args.calls, threads=args.threads,
                  per_call_ms=round(result["total_ms"] / args.calls, 1))
    print(f"{result['per_call_ms']:.0f} ms per call of {args.n} (sum of layer times)")
    for key in ("by_op_type", "by_kernel", "by_resolution"):
        print(key.replace("_", " ") + ":")
        for row in result[key][:12]:
            print(f"  {row['what']:<28}{row['ms'] / args.calls:>10.1f} ms {100 * row['share']:>6.1f}%")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
