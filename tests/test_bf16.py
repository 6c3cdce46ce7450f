"""bf16 on OpenVINO's CPU plugin: the CPU feature check, the precision groups against the
PyTorch model's own structure, the pinning OpenVINO reports, and ``--precision bf16`` end to end."""

import json

import numpy as np
import pytest
import torch
from conftest import copy_export

from cvdvae.blocks import Block
from cvdvae.decoder import DecBlock
from cvdvae.errors import CVDVAEError
from cvdvae.random_weights import demo_model
from runtime.backends import cpu_features, open_backend
from runtime.cli.run import main as run_main
from runtime.model_files import locate
from runtime.pipeline import Pipeline

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino, or the cpu extra)")

NO_BF16 = cpu_features.bf16_missing_here()
needs_bf16 = pytest.mark.skipif(NO_BF16 is not None, reason=f"this CPU has no native bf16: {NO_BF16}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_export):
    return locate(copy_export(demo_export, tmp_path_factory.mktemp("bf16") / "demo"))


# ------------------------------------------------------------------ the CPU feature check
@pytest.mark.parametrize("flags,capabilities,missing", [
    ({"avx512f", "avx512_bf16"}, [], False),          # Cooper Lake, Zen 4
    ({"avx512f", "amx_bf16", "amx_tile"}, [], False),  # AMX without the flag OpenVINO also uses
    ({"avx2", "avx512f", "avx512_vnni"}, ["BF16"], True),  # the flags decide, not OpenVINO's emulation
    (None, ["FP32", "BF16"], False),                   # no /proc/cpuinfo: OpenVINO's own word
    (None, ["FP32", "INT8"], True),
])
def test_bf16_is_offered_only_where_the_cpu_has_it(flags, capabilities, missing):
    reason = cpu_features.bf16_missing(flags, capabilities)
    assert (reason is not None) == missing
    if missing:
        assert "\n" not in reason and ("AVX512-BF16" in reason or "AMX" in reason)
    if missing and flags is not None:
        assert "AVX512-BF16" in reason and "AMX-BF16" in reason


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f amx_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_features.cpu_flags(x86) == {"fpu", "avx512f", "amx_bf16"}
    assert cpu_features.cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_features.cpu_flags(tmp_path / "absent") is None


def test_a_cpu_without_bf16_gets_one_line_naming_the_missing_feature(demo, monkeypatch, capsys, tmp_path):
    """Driven by a fake flag list (this CPU's own does not matter): the library and the command."""
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: {"fpu", "avx2", "avx512f"})
    with pytest.raises(CVDVAEError) as err:
        Pipeline.from_pretrained(demo.folder, "openvino", precision="bf16")
    assert "AVX512-BF16" in str(err.value) and "AMX-BF16" in str(err.value) and "precision='fp32'" in str(err.value)
    image = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert run_main([str(demo.folder), "--input", str(image), "--out", str(tmp_path / "out"), "--precision", "bf16",
                     "-q"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "AVX512-BF16" in lines[0] and "--precision fp32" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_bf16_runs_on_openvino_from_an_fp32_export_only(demo, tmp_path):
    with pytest.raises(CVDVAEError, match="backend='openvino'"):
        open_backend(demo, "onnxruntime", precision="bf16")
    with pytest.raises(CVDVAEError, match="unknown precision"):
        open_backend(demo, "openvino", precision="int4")
    weights = tmp_path / "demo.safetensors"
    from cvdvae.weights import save_safetensors

    model = demo_model()
    save_safetensors(weights, model.state_dict(), model.config)
    with pytest.raises(CVDVAEError, match="export"):
        Pipeline.from_pretrained(weights, precision="bf16")


# ------------------------------------------------------------------ the groups, against PyTorch
def torch_two_activation_adds(model) -> tuple[int, int]:
    """(residual-stream adds, latent-draw adds) in ``torch.export``'s graph of the sampler: adds of
    4-D tensors before the output conv, at least one depending on the graph's inputs and
    neither a parameter, a buffer or an input itself. A draw's add takes ``exp(.) * eps``; the
    prior's log-std shift feeds an ``exp``."""
    from export.graph import example_inputs, sampler_graph

    program = torch.export.export(sampler_graph(model.eval()), example_inputs(model))
    aten = torch.ops.aten
    from_inputs = set(program.graph_signature.user_inputs)
    head: set[str] = set()
    for node in program.graph.nodes:  # topological order
        sources = [a for a in node.all_input_nodes]
        if any(a.name in from_inputs for a in sources):
            from_inputs.add(node.name)
        if any(a.name in head for a in sources) or (
                node.target == aten.conv2d.default and node.args[1].name.endswith("out_net_out_conv_weight")):
            head.add(node.name)

    def is_op(arg, op) -> bool:
        return isinstance(arg, torch.fx.Node) and arg.target == op

    placeholders = {node.name for node in program.graph.nodes if node.op == "placeholder"}
    residual = latent = 0
    for node in program.graph.nodes:
        args = node.args[:2]
        if node.target != aten.add.Tensor or node.name in head or not all(
                isinstance(a, torch.fx.Node) and a.meta["val"].dim() == 4 for a in args):
            continue
        if not any(a.name in from_inputs for a in args) or any(a.name in placeholders for a in args):
            continue
        draws = any(is_op(a, aten.mul.Tensor) and any(is_op(b, aten.exp.default) for b in a.args) for a in args)
        shift = any(user.target == aten.exp.default for user in node.users)
        if draws or shift:
            latent += 1
        else:
            residual += 1
    return residual, latent


def test_precision_groups_match_the_pytorch_models_structure(demo):
    """Found in OpenVINO's graph of ``model.onnx``; counted independently in the PyTorch model
    (its modules, and ``torch.export``'s graph)."""
    from runtime.backends.openvino_precision import classify

    model = demo_model()
    graph = ov.Core().read_model(str(demo.onnx))
    groups = classify(graph)
    ops = {op.get_friendly_name(): op.get_type_name() for op in graph.get_ops()}

    def count(group: str, kind: str) -> int:
        return sum(ops[name] == kind for name in groups[group])

    used = [m for name, m in model.named_modules() if name.startswith(("decoder", "encoder_y"))]
    dec_blocks = [m for m in used if isinstance(m, DecBlock)]
    assert count("latents", "Exp") == len(dec_blocks) == len(model.config.decoder_layers)
    assert count("latents", "Multiply") == len(dec_blocks)
    assert count("stream_writes", "Convolution") == sum(isinstance(m, Block) for m in used) + len(dec_blocks)
    assert count("lr_encoder", "Convolution") == sum(isinstance(m, torch.nn.Conv2d)
                                                      for name, m in model.named_modules()
                                                      if name.startswith("encoder_y"))
    assert count("mixture_head", "Convolution") == 1 and count("mixture_head", "TopK") == 1
    residual, latent_adds = torch_two_activation_adds(model)
    assert (count("residual", "Add"), count("latents", "Add")) == (residual, latent_adds)
    sizes = {layer[0] for layer in model.config.decoder_layers}
    edge_convs = sum(isinstance(m, torch.nn.Conv2d) for b in dec_blocks if b.res in (min(sizes), max(sizes))
                     for m in b.modules()) + 1  # and the output conv, at the image's size
    assert count("edge_resolutions", "Convolution") == edge_convs


@needs_bf16
def test_pinned_groups_run_in_float32_as_openvino_reports(demo):
    """OpenVINO's own report of the compiled model: the pinned convolutions (counted in the
    PyTorch model: every block's last conv, every latent projection, the output conv) run in
    f32, every other one in bf16."""
    from runtime.backends.openvino import compile_config, load_model
    from runtime.backends.openvino_precision import SHIPPED_FP32_GROUPS, runtime_precisions

    core = ov.Core()
    model = demo_model()
    writers = sum(isinstance(m, Block) for name, m in model.named_modules()
                  if name.startswith(("decoder", "encoder_y"))) + len(model.decoder.dec_blocks)
    convs = sum(isinstance(m, torch.nn.Conv2d) for name, m in model.named_modules()
                if name.startswith(("decoder", "encoder_y")))
    plain = runtime_precisions(core.compile_model(load_model(ov, core, demo.onnx), "CPU", compile_config("bf16")))
    pinned = runtime_precisions(core.compile_model(load_model(ov, core, demo.onnx, SHIPPED_FP32_GROUPS), "CPU",
                                                   compile_config("bf16")))
    assert plain["Convolution"] == {"bf16": convs}
    assert pinned["Convolution"] == {"bf16": convs - writers - 1, "f32": writers + 1}
    with pytest.raises(CVDVAEError, match="only with residual and mixture_head"):
        load_model(ov, core, demo.onnx, ("stream_writes",))


# ------------------------------------------------------------------ --precision bf16 end to end
@needs_bf16
def test_run_precision_bf16_records_what_ran_and_stays_near_fp32(demo, tmp_path, capsys):
    from PIL import Image

    from runtime.backends.openvino_precision import SHIPPED_FP32_GROUPS

    images = tmp_path / "in"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"{i}.png")
    outputs = {}
    for name, extra in (("fp32", []), ("bf16", ["--precision", "bf16"]), ("again", ["--precision", "bf16"])):
        assert run_main([str(demo.folder), "--input", str(images), "--out", str(tmp_path / name), "--n", "4",
                         "--seed", "3", "--backend", "openvino", "--json", "--no-grid", *extra]) == 0
        summary = json.loads(capsys.readouterr().out)
        outputs[name] = {p.name: np.asarray(Image.open(p), np.float64) for p in sorted((tmp_path / name).glob("*.png"))}
        assert summary["precision"] == ("fp32" if name == "fp32" else "bf16")
        assert summary["fp32_groups"] == ([] if name == "fp32" else list(SHIPPED_FP32_GROUPS))
    assert outputs["again"].keys() == outputs["bf16"].keys() == outputs["fp32"].keys() and len(outputs["fp32"]) == 8
    for name, fp32 in outputs["fp32"].items():
        bf16 = outputs["bf16"][name]
        assert np.array_equal(bf16, outputs["again"][name])  # seeded: the same bytes every run
        mse = np.mean((bf16 / 255 - fp32 / 255) ** 2)
        assert 0 < mse and 10 * np.log10(1 / mse) >= 30, name  # bf16, yet close (the demo reaches ~40 dB)
