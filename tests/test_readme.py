"""README.md's Python code blocks, run as they stand on the demo model, so the documentation cannot drift.

Each block runs in its own interpreter, in a folder holding what the README's text assumes:
``engines/demo-x4-fp32`` (``cvdvae export --demo``), an LR ``face.png`` of the demo model's
size, and ``photo.jpg`` (scikit-image's astronaut). A block that finds faces needs the MTCNN
graphs (``cvdvae fetch mtcnn``, which scripts/test.sh runs).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
BLOCKS = BLOCK.findall((REPO / "README.md").read_text())


def test_the_readme_has_the_python_examples_it_promises():
    assert len(BLOCKS) >= 3
    assert any("Pipeline.from_pretrained" in block for block in BLOCKS)
    assert any("pipe.faces(" in block for block in BLOCKS)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_export):
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(demo_export, folder / "engines" / "demo-x4-fp32")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "face.png")
    astronaut = Path(__import__("skimage").__file__).parent / "data" / "astronaut.png"
    Image.open(astronaut).convert("RGB").save(folder / "photo.jpg", quality=90)
    return folder


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_python_block_runs_on_the_demo_model(index, workdir):
    block = BLOCKS[index]
    if "pipe.faces(" in block:
        from cvdvae.hub.home import cvdvae_home

        if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
            pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")
    # Blocks continue the ones before them, as a reader types them into one session.
    script = "\n".join(BLOCKS[:index + 1])
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=workdir, timeout=300)
    assert r.returncode == 0, f"README block {index}:\n{block}\n{r.stderr[-3000:]}"
