"""Every Python and shell block of README.md and docs/ runs, as it stands, on the demo model, so the
documentation cannot drift from the code.

A block that cannot run here is marked on the line before it with ``<!-- not run: REASON -->`` (the
reason is required: hardware, a network, a trained model). The blocks of one page run in order, in
one process per language (a reader types them into one session), in a fresh folder holding what the
pages assume: ``engines/demo-x4-fp32`` and ``outputs/demo/engine`` (what ``cvdvae export --demo`` and
``cvdvae demo`` write: the session's demo export, so no block traces a model), an LR ``face.png``
of the demo model's size, ``photo.jpg`` and ``astronaut.png`` (scikit-image's astronaut). A page
whose blocks find faces needs the MTCNN graphs (``cvdvae fetch mtcnn``, which scripts/test.sh runs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"^<!-- not run: (.+?) -->$")
LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str      # "python" or "bash"
    code: str
    not_run: str | None  # the reason, when marked


def blocks_of(page: Path, text: str | None = None) -> list[Block]:
    text = page.read_text() if text is None else text
    found = []
    for match in FENCE.finditer(text):
        language = LANGUAGES.get(match.group(1))
        if language is None:
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marked = NOT_RUN.match(before)
        found.append(Block(page, text.count("\n", 0, match.start()) + 1, language, match.group(2),
                           marked.group(1).strip() if marked else None))
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page)]
RUNS = sorted({(b.page, b.language) for b in BLOCKS if b.not_run is None})


def test_the_collector_sees_the_pages_blocks():
    """The collector finds what the pages hold: the README's Python entry, the docs' shell blocks, and
    the reasons of the blocks that do not run."""
    assert any(b.page.name == "README.md" and "Pipeline.from_pretrained" in b.code for b in BLOCKS)
    assert sum(b.language == "bash" and b.not_run is None for b in BLOCKS) >= 3
    assert all(b.not_run for b in BLOCKS if b.not_run is not None)
    text = "<!-- not run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```python\nprint(1)\n```\n"
    marked = blocks_of(Path("page.md"), text)
    assert [(b.language, b.not_run, b.line) for b in marked] == [("bash", "needs a GPU", 2), ("python", None, 6)]


def test_every_code_block_runs_or_says_why_not():
    """An unmarked block in another language than python or bash would be neither run nor excused."""
    for page in PAGES:
        for match in FENCE.finditer(page.read_text()):
            language = match.group(1)
            assert language in LANGUAGES or language in ("", "text", "json", "yaml", "toml", "console", "http"), (
                f"{page.relative_to(REPO)}: a ```{language} block: run it (python, bash) or show it as text")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_export):
    folder = tmp_path_factory.mktemp("docs")
    shutil.copytree(demo_export, folder / "engines" / "demo-x4-fp32")
    shutil.copytree(demo_export, folder / "outputs" / "demo" / "engine")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "face.png")
    astronaut = Path(__import__("skimage").__file__).parent / "data" / "astronaut.png"
    shutil.copy(astronaut, folder / "astronaut.png")
    Image.open(astronaut).convert("RGB").save(folder / "photo.jpg", quality=90)
    return folder


@pytest.mark.parametrize("page, language", RUNS, ids=[f"{p.relative_to(REPO)}:{lang}" for p, lang in RUNS])
def test_the_pages_blocks_run_on_the_demo_model(page, language, workdir, tmp_path):
    blocks = [b for b in BLOCKS if b.page == page and b.language == language and b.not_run is None]
    code = "\n".join(b.code for b in blocks)
    if "faces" in code:
        from cvdvae.hub.home import cvdvae_home

        if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
            pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")
    here = tmp_path / "work"
    shutil.copytree(workdir, here)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    if language == "python":
        command = [sys.executable, "-c", code]
    else:
        command = ["bash", "-c", "set -euo pipefail\n" + code]
    r = subprocess.run(command, capture_output=True, text=True, cwd=here, env=env, timeout=600)
    lines = ", ".join(str(b.line) for b in blocks)
    assert r.returncode == 0, f"{page.relative_to(REPO)} ({language} blocks at lines {lines}):\n{r.stderr[-3000:]}"


def test_every_meta_json_key_is_in_the_contract(demo_export):
    """docs/contract/graph.md names every key a fresh export's meta.json holds (a new key fails here
    until the contract says what it is)."""
    import json

    contract = (REPO / "docs" / "contract" / "graph.md").read_text()
    meta = json.loads((demo_export / "meta.json").read_text())
    missing = [key for key in meta if f"`{key}`" not in contract]
    assert not missing, f"meta.json keys the contract does not describe: {missing}"
    assert meta["format"] == 2 and "non_finite" in meta["outputs"]


def hooks():
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_references_follow_the_code():
    """The site's generated parts: every verb and every one of its options from the typer app, every
    route of the service, every results file with its date, and the FFHQ-256 levels adding up to the
    published D."""
    from runtime.cli.app import VERBS, load_verb
    from runtime.serve.ingress import api

    site = hooks()
    cli = site.cli_reference()
    for name in VERBS:
        assert f"## `cvdvae {name}`" in cli
        for param in load_verb(name).params:
            if param.param_type_name == "option" and not getattr(param, "hidden", False):
                assert f"`{param.opts[0]}`" in cli, (name, param.opts)
    from runtime.serve.requests import FIELDS

    http = site.http_reference()
    assert all(f"{path}`" in http for path in api.openapi()["paths"])
    assert all(f"| `{name}` |" in http for name in FIELDS)  # the fields the parser takes, each described
    tables = site.benchmark_tables()
    for path, data in site.results_files():
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", data["date"]), path
        assert f"### `{path.name}`\n\nMeasured **{data['date']}**" in tables
    levels = site.levels("ffhq256")
    assert "`D` = 5,322,784 values per sample" in levels  # 4,470,816 + 13 * 65,536 (the contract's figure)
    assert "| 256x256 | 65..65 | 1 |" in levels
    with pytest.raises(KeyError):
        site.expand("<!-- generated: no-such-part -->")


def test_the_readme_is_short_and_starts_with_the_demo_and_the_tests():
    """README.md stays a two-minute read that points at the site; its first commands are the demo and
    the test suite (.ci/run runs the latter)."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    first = next(b for b in blocks_of(REPO / "README.md") if b.language == "bash")
    assert [line.split()[0] for line in first.code.splitlines()] == ["./scripts/demo.sh", "./scripts/test.sh"]
    assert "./scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert "mkdocs build --strict" in (REPO / ".ci" / "run").read_text()
