"""What each install brings: a fresh venv per extra, its site-packages measured (MB) and its largest packages.

    python benchmarks/install_size.py --json benchmarks/results/<machine>-install-size.json
    python benchmarks/install_size.py --only cpu --before 1305b1c   # also main's .[cpu] at a commit, to compare

PyTorch is installed first, pinned (``torch==2.13.0``, the CPU build on this machine's disk), for
every install that needs it, as scripts/setup.sh does; a bare ``pip install 'cvdvae[export]'``
elsewhere takes PyPI's CUDA build instead (several GB more). The ``gpu`` extra cannot be installed
here (TensorRT's libraries come from NVIDIA's own index), and is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import environment, today  # noqa: E402 - after the path set-up

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
INSTALLS = {  # name -> (extras, whether PyTorch comes first)
    "base": ("", False),
    "cpu": ("cpu", False),
    "export": ("export", True),
    "cpu,export": ("cpu,export", True),
    "serve": ("cpu,serve", False),
    "cluster": ("cpu,cluster", False),
    "everything": ("cpu,export,serve,cluster,dev", True),
}


def pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *args], check=True)


def measure(source: Path, extras: str, torch_first: bool, workdir: Path) -> dict:
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip(python, "--upgrade", "pip")
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    baseline = folder_bytes(site)  # pip itself
    start = time.perf_counter()
    if torch_first:
        pip(python, TORCH)
    pip(python, f"{source}[{extras}]" if extras else str(source))
    seconds = time.perf_counter() - start
    sizes = {path.name: folder_bytes(path) for path in site.iterdir() if path.is_dir()
             and not path.name.endswith((".dist-info", "__pycache__"))}
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:8]
    importable = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in "
                                 "('torch', 'onnx', 'polygraphy', 'openvino', 'onnxruntime', 'ray') if u.find_spec(m)])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    return {"extras": extras or None, "torch_first": torch_first, "site_packages_mb": round(
        (folder_bytes(site) - baseline) / 2**20, 1), "install_s": round(seconds, 1),
        "largest_mb": {name: round(size / 2**20, 1) for name, size in largest}, "importable": importable}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def source_at(commit: str, workdir: Path) -> Path:
    """The repository as it was at ``commit`` (an archive: no build files of the working tree)."""
    folder = workdir / f"cvdvae-{commit}"
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(INSTALLS), help="these installs (default: all)")
    parser.add_argument("--before", metavar="COMMIT", help="also measure .[cpu] at COMMIT (torch first, as then)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results: dict = {"date": today(), "environment": environment(os.cpu_count() or 1), "installs": {}, "gpu": (
        "not measured: the gpu extra's TensorRT libraries (tensorrt-cu13-libs) come from NVIDIA's package index, "
        "which this machine cannot reach; on PyPI they are a stub")}
    with tempfile.TemporaryDirectory(prefix="cvdvae-install-") as tmp:
        for name in args.only or INSTALLS:
            extras, torch_first = INSTALLS[name]
            work = Path(tmp) / name
            work.mkdir()
            results["installs"][name] = row = measure(REPO, extras, torch_first, work)
            print(f"{name:<12} {row['site_packages_mb']:>8.1f} MB  {row['largest_mb']}", flush=True)
        if args.before:
            work = Path(tmp) / "before"
            work.mkdir()
            source = source_at(args.before, work)
            results["installs"][f"cpu at {args.before}"] = row = measure(source, "cpu", True, work)
            print(f"cpu at {args.before}: {row['site_packages_mb']:.1f} MB  {row['largest_mb']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
