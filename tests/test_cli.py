"""The ``cvdvae`` command family: verbs and aliases, help, validated flags, list flags, exit codes."""

import subprocess
import sys
import tomllib

import numpy as np
import pytest
import typer
from conftest import REPO, copy_export
from PIL import Image

from runtime.cli.app import VERBS
from runtime.cli.app import main as cvdvae
from runtime.cli.command import command_app, run_app

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def alias(verb):
    """What the installed ``cvdvae-<verb>`` script runs (pyproject.toml's entry point), in this process."""
    import importlib

    module, function = SCRIPTS[f"cvdvae-{verb}"].split(":")
    return getattr(importlib.import_module(module), function).run


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_has_help_ending_in_examples(verb, capsys):
    assert cvdvae([verb, "--help"]) == 0
    umbrella = capsys.readouterr().out
    assert alias(verb)(["--help"]) == 0
    own = capsys.readouterr().out
    for text in (umbrella, own):
        assert "Usage:" in text and "Examples" in text
        assert text.count("cvdvae") >= 2  # real commands in the examples
    assert f"cvdvae {verb}" in umbrella


def test_the_umbrella_lists_every_verb_and_its_version(capsys):
    assert cvdvae(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(verb in out for verb in VERBS) and "--install-completion" in out
    assert cvdvae(["--version"]) == 0
    assert capsys.readouterr().out.startswith("cvdvae 0.")


@pytest.fixture(scope="module")
def model(tmp_path_factory, demo_export):
    return copy_export(demo_export, tmp_path_factory.mktemp("cli") / "demo")


def faces(folder, count):
    folder.mkdir(exist_ok=True)
    for i in range(count):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    return sorted(folder.iterdir())


def pngs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_repeated_input_accumulates_and_several_values_are_taken(model, tmp_path):
    a, b, c = faces(tmp_path / "in", 3)
    assert cvdvae(["run", str(model), "--input", str(a), "--input", str(b), "-i", str(c), "--n", "1",
                   "--out", str(tmp_path / "o1"), "--quiet"]) == 0
    assert sorted(pngs(tmp_path / "o1")) == ["f0_s0_00.png", "f0_s0_grid.png", "f1_s0_00.png", "f1_s0_grid.png",
                                             "f2_s0_00.png", "f2_s0_grid.png"]
    assert cvdvae(["run", str(model), "--input", str(a), str(b), str(c), "--n", "1", "--out", str(tmp_path / "o2"),
                   "--quiet"]) == 0
    assert pngs(tmp_path / "o2") == pngs(tmp_path / "o1")


def test_repeated_temperature_accumulates(model, tmp_path):
    a, = faces(tmp_path / "in", 1)
    common = ["run", str(model), "--input", str(a), "--quiet"]
    assert cvdvae([*common, "-t", "0", "-t", "0.5,1", "--out", str(tmp_path / "o1")]) == 0
    assert cvdvae([*common, "--temperature", "0,0.5,1", "--out", str(tmp_path / "o2")]) == 0
    assert pngs(tmp_path / "o1") == pngs(tmp_path / "o2") and len(pngs(tmp_path / "o1")) == 4


def test_the_umbrella_and_the_alias_give_the_same_bytes(model, tmp_path):
    a, b = faces(tmp_path / "in", 2)
    args = [str(model), "--input", str(a), str(b), "--n", "3", "--seed", "5", "--quiet"]
    assert cvdvae(["run", *args, "--out", str(tmp_path / "u")]) == 0
    assert alias("run")([*args, "--out", str(tmp_path / "a")]) == 0
    assert pngs(tmp_path / "u") == pngs(tmp_path / "a") and len(pngs(tmp_path / "u")) == 8


BAD_FLAGS = [
    ("run", ["--n", "0"], "--n"),
    ("run", ["--max-batch", "0"], "--max-batch"),
    ("run", ["--max-n", "0"], "--max-n"),
    ("run", ["--max-batch", "-1"], "--max-batch"),
    ("run", ["--seed", "-1"], "--seed"),
    ("run", ["--seed", str(2**64)], "--seed"),
    ("run", ["--temperature", "-1"], "--temperature"),
    ("run", ["--temperature", "0.5,nan"], "--temperature"),
    ("run", ["--temperature", "0.5,1", "--n", "3"], "--temperature"),
    ("run", ["--backend", "cuda"], "--backend"),
    ("eval", ["--temperature", "-1"], "--temperature"),
    ("eval", ["--count", "0"], "--count"),
    ("eval", ["--n", "0"], "--n"),
    ("eval", ["--seed", "-1"], "--seed"),
    ("eval", ["--split", "train"], "--split"),
    ("export", ["--min-n", "0"], "--min-n"),
    ("export", ["--max-n", "2", "--min-n", "3"], "--min/opt/max"),
    ("export", ["--opt-level", "9"], "--opt-level"),
    ("export", ["--workspace", "0"], "--workspace"),
    ("export", ["--scale", "5"], "--scale"),
    ("export", ["--opset", "0"], "--opset"),
    ("export", ["--fp16", "--bf16"], "--bf16"),
    ("export", ["--config", "missing.yaml"], "--config"),
    ("export", ["--validate-shapes", "2y3"], "--validate-shapes"),
    ("train", ["--steps", "0"], "--steps"),
    ("train", ["--batch-size", "0"], "--batch-size"),
    ("train", ["--lr", "0"], "--lr"),
    ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--ema", "1"], "--ema"),
    ("convert", ["--checkpoint", "missing.ckpt"], "--checkpoint"),
    ("fetch", ["vdvae-celeba"], "NAME"),
    ("demo", ["--n", "0"], "--n"),
]


@pytest.mark.parametrize("verb,flags,named", BAD_FLAGS, ids=[f"{v}{' '.join(f)}" for v, f, _ in BAD_FLAGS])
def test_a_bad_flag_value_exits_2_with_one_line_naming_the_flag(verb, flags, named, model, tmp_path, capsys):
    positional = {"run": [str(model), "--input", str(faces(tmp_path / "in", 1)[0])],
                  "eval": [str(model), "--data", str(tmp_path)],
                  "convert": ["--out", str(tmp_path / "x.safetensors")],
                  "train": ["--data", str(tmp_path), "--out", str(tmp_path / "run")]}.get(verb, [])
    code = cvdvae([verb, *positional, *flags, "--quiet"] if verb not in ("demo", "convert") else
                  [verb, *positional, *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"cvdvae {verb}: error:") and named in err[0], err[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "x.safetensors").exists()


def test_ctrl_c_is_130_and_a_failure_1(capsys):
    app = command_app("test")

    @app.command("boom")
    def boom(kind: str) -> int:
        raise KeyboardInterrupt if kind == "interrupt" else RuntimeError("disk full")

    assert run_app(app, ["interrupt"], prog="t") == 130
    assert run_app(app, ["fail"], prog="t") == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["t: interrupted", "t: error: disk full (run with --debug for the traceback)"]


def test_cvdvae_run_through_the_umbrella_imports_no_torch(model, tmp_path):
    a, = faces(tmp_path / "in", 1)
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from runtime.cli.app import main
assert main(["run", {str(model)!r}, "--input", {str(a)!r}, "--n", "2", "--out", {str(tmp_path / 'o')!r},
             "--quiet"]) == 0
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_the_installed_commands_exist():
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    for name in ["cvdvae", *(f"cvdvae-{verb}" for verb in VERBS)]:
        assert (bin_dir / name).is_file(), name
    r = subprocess.run([str(bin_dir / "cvdvae"), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("cvdvae ")


def test_a_script_process_ends_after_its_threads_and_exit_handlers_without_freeing_objects(tmp_path):
    """What the installed scripts run: Python's exit as usual (threads joined, exit handlers run, output
    flushed), the command's status, and no object freed one at a time (no ``__del__`` runs)."""
    code = f"""
import atexit, pathlib, sys, threading, time
from runtime.cli.command import Script
out = pathlib.Path({str(tmp_path)!r})

class Engine:
    def __del__(self):
        (out / "freed").touch()

def command(argv):
    global engine
    engine = Engine()
    atexit.register(lambda: (out / "handler").touch())
    threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").touch())).start()
    sys.stdout.write("no newline")
    return 3

sys.exit(Script(command)())
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert (r.returncode, r.stdout, r.stderr) == (3, "no newline", "")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["handler", "thread"]


def test_a_typer_exit_keeps_its_status():
    app = command_app("test")

    @app.command("stop")
    def stop() -> int:
        raise typer.Exit(3)

    assert run_app(app, [], prog="t") == 3


HEAVY = ("torch", "onnx", "polygraphy", "openvino", "onnxruntime", "ray", "numpy", "PIL")


def imported_by(argv: list[str], banned: tuple[str, ...] = ()) -> tuple[int, set[str], str]:
    """A fresh interpreter runs ``cvdvae ARGV`` (``banned`` modules made unimportable): its exit status,
    the top-level packages it imported, and its stderr."""
    code = f"""
import sys
for name in {list(banned)!r}:
    sys.modules[name] = None  # importing it now fails; looking it up finds nothing
from runtime.cli.app import main
status = main({argv!r})
print(sorted({{name.split(".")[0] for name, module in sys.modules.items() if module is not None}}))
print("verbs:", sorted(name for name in sys.modules if name.startswith("runtime.cli.")))
sys.exit(status)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    packages, verbs = r.stdout.strip().splitlines()[-2:]
    return r.returncode, set(eval(packages)) | set(eval(verbs.removeprefix("verbs: "))), r.stderr


def test_help_loads_no_engine_and_no_verb():
    """``cvdvae --help`` lists the verbs without importing them, and imports no PyTorch, ONNX,
    engine, Ray, numpy or Pillow; ``cvdvae run --help`` imports its own verb and still no engine."""
    code, imported, err = imported_by(["--help"])
    assert code == 0, err
    assert not imported & set(HEAVY), imported & set(HEAVY)
    assert imported & {f"runtime.cli.{verb}" for verb in VERBS} == set()
    code, imported, err = imported_by(["run", "--help"])
    assert code == 0, err
    assert not imported & {"torch", "onnx", "polygraphy", "openvino", "onnxruntime", "ray"}
    assert "runtime.cli.run" in imported and "runtime.cli.export" not in imported


@pytest.mark.parametrize("argv, banned, job, extra", [
    (["export", "--demo"], ("torch",), "cvdvae export", "export"),
    (["train", "--help"], ("onnx",), "cvdvae train", "export"),
    (["eval", "--help"], ("polygraphy",), "cvdvae eval", "export"),
    (["demo"], ("safetensors",), "cvdvae demo", "export"),
    (["serve", "--help"], ("ray",), "cvdvae serve", "serve"),
    (["run", "MODEL", "--ray", "--input", "x.png"], ("pandas",), "cvdvae run --ray", "cluster"),
    (["fetch", "vdvae-ffhq256"], ("torch",), "cvdvae fetch vdvae-ffhq256", "export"),
])
def test_a_verb_without_its_extra_says_which_to_install(argv, banned, job, extra, model, tmp_path, monkeypatch):
    """One line naming the extra and the pip command, exit 2, and nothing of the verb's work done."""
    monkeypatch.setenv("CVDVAE_HOME", str(tmp_path / "home"))
    argv = [str(model) if a == "MODEL" else a for a in argv]
    code, _, err = imported_by(argv, banned)
    assert code == 2, err
    assert err.strip().splitlines() == [f"cvdvae {argv[0]}: error: {job} needs the {extra} extra: pip install "
                                        f"'cvdvae[{extra}]'"]
    assert not (tmp_path / "home").exists()


def test_an_alias_without_its_extra_says_which_to_install():
    code = """
import sys
sys.modules["torch"] = None
from runtime.cli.app import export_main
sys.exit(export_main.run(["--demo"]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip() == "cvdvae-export: error: cvdvae export needs the export extra: pip install 'cvdvae[export]'"


def test_debug_is_declared_once_and_shows_the_traceback(capsys):
    """Every verb takes ``--debug`` (the app adds it): a failure shows its traceback with it, one line without."""
    app = command_app("test")

    @app.command("boom")
    def boom() -> int:
        raise RuntimeError("disk full")

    assert run_app(app, ["--debug"], prog="t") == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "RuntimeError: disk full" in err
    assert run_app(app, [], prog="t") == 1
    assert capsys.readouterr().err == "t: error: disk full (run with --debug for the traceback)\n"
