"""The layout the design names: three installed packages, imports that point down, no circles.

The layers, bottom up: ``cvdvae`` (the model and its maths), ``runtime`` (below its ``serve`` and
``cli``) and ``export`` beside it, then ``runtime.serve``, then ``runtime.cli`` on top. The
import graph is read from the source with ``ast``: every import, lazy ones inside functions too,
and ``importlib.import_module`` of a literal name or prefix. A module that reaches up, or two
that reach each other, fail here.

One upward edge is allowed, by name: the front door, ``cvdvae/__init__.py`` re-exporting
``Pipeline`` from ``runtime.pipeline`` (``FRONT_DOOR``). ``from cvdvae import bicubic`` is an
import of the module ``cvdvae.bicubic``; ``from cvdvae import Pipeline`` (a name of the package
itself) is an import of ``cvdvae``'s ``__init__``, so a runtime module doing it would close a
circle through the front door, and fails here.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO

PACKAGES = ("cvdvae", "export", "runtime")
FRONT_DOOR = {("cvdvae", "runtime.pipeline")}  # (importer, imported): the one documented way up


def layer(module: str) -> int:
    if module.startswith("runtime.cli"):
        return 3
    if module.startswith("runtime.serve"):
        return 2
    return 0 if module.split(".")[0] == "cvdvae" else 1


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, resolved (``from . import x`` -> ``package.x`` when that is a
    module, else ``package``; ``importlib.import_module("a.b")`` -> ``a.b``, ``f"a.{x}"`` -> every ``a.*``)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Call) and dynamic_import(node):
            found |= imported_by_name(node, package, modules)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def dynamic_import(node: ast.Call) -> bool:
    function = node.func
    return (isinstance(function, ast.Attribute) and function.attr == "import_module"
            and isinstance(function.value, ast.Name) and function.value.id == "importlib")


def imported_by_name(node: ast.Call, package: str, modules: set[str]) -> set[str]:
    """What ``importlib.import_module(name[, package])`` may import: the literal name, or every module
    under a literal prefix (an f-string's leading text); relative to ``package`` when it starts with a dot."""
    name = node.args[0]
    if isinstance(name, ast.Constant) and isinstance(name.value, str):
        text, exact = name.value, True
    elif isinstance(name, ast.JoinedStr) and name.values and isinstance(name.values[0], ast.Constant):
        text, exact = name.values[0].value, False
    else:
        raise AssertionError(f"importlib.import_module of a name with no literal prefix in {package}: the layout "
                             "test cannot see where it points")
    if text.startswith("."):
        text = package + text
    if exact:
        return {text}
    return {module for module in modules if module.startswith(text)}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {name: {m for m in imports_of(path, set(modules)) if m in modules and m != name}
            for name, path in modules.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports of a higher layer, and the runtime below the command line importing ``export``
    (export stands on the runtime's backends and folder format, never the other way round)."""
    return sorted(f"{module} imports {target}" for module, targets in edges.items() for target in targets
                  if (module, target) not in FRONT_DOOR
                  and (layer(target) > layer(module) or (module.startswith("runtime") and layer(module) < 3
                                                         and target.startswith("export"))))


def circles(edges: dict[str, set[str]]) -> list[str]:
    state: dict[str, str] = {}
    found: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                found.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def test_every_import_points_down():
    assert upward(graph()) == []


def test_the_front_door_is_seen_and_is_the_only_way_up():
    """``cvdvae``'s lazy re-export of ``Pipeline`` is in the graph (the test sees ``importlib``), and
    nothing below the command line imports the ``cvdvae`` package itself, so it closes no circle."""
    edges = graph()
    assert "runtime.pipeline" in edges["cvdvae"]
    assert sorted(module for module, targets in edges.items() if "cvdvae" in targets) == []


def test_there_is_no_import_circle():
    assert circles(graph()) == []


def test_the_checks_catch_a_module_that_reaches_up_or_round():
    """Not vacuous: the checks flag the edges the layout forbids, in a graph made to have them."""
    edges = graph()
    edges["cvdvae.blocks"] = edges["cvdvae.blocks"] | {"runtime.pipeline"}
    edges["runtime.sampling"] = edges["runtime.sampling"] | {"export.exporter"}
    assert upward(edges) == ["cvdvae.blocks imports runtime.pipeline", "runtime.sampling imports export.exporter"]
    edges = graph()
    edges["runtime.timings"] = {"runtime.backends"}
    assert any("runtime.timings -> runtime.backends" in circle for circle in circles(edges))
    edges = graph()
    edges["runtime.model_files"] = edges["runtime.model_files"] | {"cvdvae"}  # ``from cvdvae import __version__``
    assert any(circle.startswith("cvdvae -> runtime.pipeline") for circle in circles(edges))


def project_files() -> list[str]:
    """The files git tracks or would track (not ignored): the repository's own."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    return [name for name in listed if (REPO / name).exists()]


def test_the_top_level_holds_the_design_folders():
    folders = {name.split("/")[0] for name in project_files() if "/" in name and not name.startswith(".")}
    assert folders == {"cvdvae", "export", "runtime", "benchmarks", "tests", "scripts", "docs", "examples"}


def test_the_wheel_installs_exactly_the_three_packages(tmp_path):
    source = tmp_path / "source"  # a copy: building leaves build/ and *.egg-info beside the sources
    for name in project_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(tmp_path), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("cvdvae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == set(PACKAGES)
    assert {"runtime/serve/static/index.html", "runtime/serve/static/app.js"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for verb in ("cvdvae", "cvdvae-export", "cvdvae-run", "cvdvae-serve", "cvdvae-eval", "cvdvae-train",
                 "cvdvae-fetch", "cvdvae-convert", "cvdvae-demo"):
        assert f"{verb} = runtime.cli." in entry_points
