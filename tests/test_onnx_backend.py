""".onnx models through onnxruntime: the engine runs them as it runs PyTorch models, and every
bad file gets a clear refusal.

Models are seeded spandrel networks exported with the project's own `export_onnx`; the reference
is always the PyTorch module's own untiled forward (clamped as the engine clamps), so a wrong
scale, margin, tile paste or dtype conversion in the ONNX path shows up as a difference.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

onnx = pytest.importorskip("onnx", reason="the optional 'onnx' extra is part of the test extra; install tilewise[test]")
pytest.importorskip("onnxruntime")
from conftest import photo  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from spandrel import ModelTiling  # noqa: E402
from spandrel.architectures.Compact import Compact  # noqa: E402
from tilewise.cli import main  # noqa: E402
from tilewise.engine import (  # noqa: E402
    MODEL_EXTENSIONS,
    ModelFileError,
    ScaleTarget,
    TileSettings,
    TilewiseError,
    UnsafeModelError,
    UpscaleOptions,
    describe_state_dict,
    find_model_files,
    load_model,
    plan_run,
    run_tiled,
    scan_folder,
    upscale,
)
from tilewise.engine.compute.precision import model_on  # noqa: E402
from tilewise.engine.model import onnx_backend  # noqa: E402
from tilewise.engine.model.catalog import model_names_in  # noqa: E402
from tilewise.engine.model.export import export_onnx  # noqa: E402
from tilewise.engine.model.files import ONNX_EXTENSIONS  # noqa: E402
from tilewise.engine.plan.receptive import model_context  # noqa: E402

TOLERANCE = 1e-4
#: Compact with 8 feature maps and 6 body convs: 8 stacked 3x3 convs, a receptive radius of 8.
RADIUS = 8


def compact(seed: int = 0, scale: int = 2, channels: int = 3, num_conv: int = 6):
    """A seeded spandrel Compact descriptor (PyTorch, fp32, CPU)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = Compact(num_in_ch=channels, num_out_ch=channels, num_feat=8, num_conv=num_conv, upscale=scale)
    return describe_state_dict(module.state_dict())


def reference(descriptor, x: torch.Tensor) -> torch.Tensor:
    """The PyTorch module's untiled forward, clamped to [0, 1] as the engine's output is."""
    with torch.no_grad():
        return descriptor.model(x).clamp(0, 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (PyTorch descriptor, .onnx path) for the models most tests share."""
    folder = tmp_path_factory.mktemp("onnx")
    models = {}
    for name, descriptor, size in (
        ("x2", compact(0, 2), None),
        ("x4", compact(1, 4), None),
        ("gray", compact(2, 2, channels=1), None),
        ("fixed", compact(3, 2), (48, 56)),
    ):
        path = folder / f"{name}.onnx"
        export_onnx(descriptor, path, size=size)
        models[name] = (descriptor, path)
    return models


def untiled(options: UpscaleOptions) -> UpscaleOptions:
    """The same options on the whole image at once: the PyTorch side of a comparison."""
    return dataclasses.replace(options, tiles=TileSettings(tile=-1))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- equal to PyTorch
@pytest.mark.parametrize("name", ["x2", "x4"])
def test_tiled_and_untiled_runs_equal_the_pytorch_model(exported, name):
    descriptor, path = exported[name]
    model = load_model(path, cache=None)
    assert model.architecture.id == "ONNX" and model.architecture.name == "ONNX"
    assert (model.scale, model.input_channels, model.output_channels) == (descriptor.scale, 3, 3)
    assert model.tiling == ModelTiling.SUPPORTED and model.size_requirements.multiple_of == 1
    assert not model.supports_half and not model.supports_bfloat16
    assert {"opset17", "fp32"} <= set(model.tags)
    x = photo("astronaut", 100, 180, 45, 61)
    expected = reference(descriptor, x)
    whole = run_tiled(model, x, settings=TileSettings(tile=-1))
    settings = TileSettings(tile=32, batch=3)
    assert len(plan_run(model, 45, 61, settings, torch.device("cpu")).tiles) > 4
    tiled = run_tiled(model, x, settings=settings)
    assert _max_diff(whole, expected) <= TOLERANCE
    assert _max_diff(tiled, expected) <= TOLERANCE
    blended = run_tiled(model, x, settings=TileSettings(tile=32, merge="blend"))
    assert _max_diff(blended, expected) <= TOLERANCE


def test_the_margin_comes_from_the_crop_probe_and_is_needed(exported):
    """onnxruntime gives no gradients: the engine's crop probe sets the margin; a margin below
    the receptive radius visibly breaks the tiled result (so the comparisons above can fail)."""
    descriptor, path = exported["x2"]
    model = load_model(path, cache=None)
    assert model.model.differentiable is False
    forward = lambda t: model.model(t)  # noqa: E731
    context = model_context(model, forward, torch.device("cpu"))
    assert not context.exact and context.bounded and 4 <= context.pad <= 2 * RADIUS
    x = photo("coffee", 80, 200, 45, 61)
    thin = run_tiled(model, x, settings=TileSettings(tile=24, pad=1))
    assert _max_diff(thin, reference(descriptor, x)) > 1e-3
    large = photo("coffee", 0, 0, 150, 170)  # automatic tile size: the memory probe runs the session too
    assert _max_diff(upscale(model, large, UpscaleOptions(device="cpu")), reference(descriptor, large)) <= TOLERANCE


def test_gray_model_on_gray_and_rgb_images(exported):
    descriptor, path = exported["gray"]
    model = load_model(path, cache=None)
    assert (model.input_channels, model.output_channels, model.scale) == (1, 1, 2)
    gray = photo("camera", 200, 200, 40, 52)
    options = UpscaleOptions(device="cpu", tiles=TileSettings(tile=24))
    assert _max_diff(upscale(model, gray, options), reference(descriptor, gray)) <= TOLERANCE
    rgb = photo("astronaut", 30, 60, 40, 52)  # YCbCr around the call: Y through the model
    assert _max_diff(upscale(model, rgb, options), upscale(descriptor, rgb, untiled(options))) <= TOLERANCE


def test_rgba_image_and_exact_target_size(exported):
    descriptor, path = exported["x2"]
    model = load_model(path, cache=None)
    rgb = photo("chelsea", 60, 120, 36, 44)
    alpha = torch.linspace(0, 1, 36 * 44).reshape(1, 1, 36, 44)
    rgba = torch.cat([rgb, alpha], dim=1)
    for mode in ("resize", "model"):
        options = UpscaleOptions(device="cpu", alpha=mode, tiles=TileSettings(tile=24))
        got = upscale(model, rgba, options)
        assert got.shape == (1, 4, 72, 88)
        assert _max_diff(got, upscale(descriptor, rgba, untiled(options))) <= TOLERANCE
    options = UpscaleOptions(
        device="cpu", target=ScaleTarget("size", width=150, height=101), tiles=TileSettings(tile=32)
    )
    got = upscale(model, rgb, options)  # two passes of the 2x model, then Lanczos to the exact size
    assert got.shape == (1, 3, 101, 150)
    assert _max_diff(got, upscale(descriptor, rgb, untiled(options))) <= TOLERANCE


def _with_fp16_io(source: Path, target: Path) -> None:
    """The exported graph behind fp16 input and output (Cast nodes around it)."""
    model = onnx.load(str(source))
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["input_fp32" if name == "input" else name for name in node.input]
        node.output[:] = ["output_fp32" if name == "output" else name for name in node.output]
    graph.node.insert(0, helper.make_node("Cast", ["input"], ["input_fp32"], to=TensorProto.FLOAT))
    graph.node.append(helper.make_node("Cast", ["output_fp32"], ["output"], to=TensorProto.FLOAT16))
    graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(model, str(target))


def test_fp16_graph(exported, tmp_path):
    descriptor, path = exported["x2"]
    _with_fp16_io(path, tmp_path / "half.onnx")
    model = load_model(tmp_path / "half.onnx", cache=None)
    assert model.supports_half and not model.supports_bfloat16 and "fp16" in model.tags
    x = photo("astronaut", 100, 180, 33, 41)
    expected = reference(descriptor, x)
    for precision in ("fp32", "fp16"):  # fp16 in and out of the graph: about one fp16 step
        got = upscale(model, x, UpscaleOptions(device="cpu", precision=precision, tiles=TileSettings(tile=24)))
        assert _max_diff(got, expected) <= 2e-3
    assert load_model(tmp_path / "half.onnx", dtype=torch.float16, cache=None).supports_half
    with pytest.raises(ModelFileError, match="does not support fp16"):
        load_model(path, dtype=torch.float16, cache=None)


def test_fixed_size_graph_is_tiled_internally_at_exactly_its_size(exported, monkeypatch):
    descriptor, path = exported["fixed"]
    model = load_model(path, cache=None)
    assert model.tiling == ModelTiling.INTERNAL and "fixed 48x56" in model.tags
    assert RADIUS <= model.model.fixed_margin < 24
    shapes = []
    run = type(model.model).run
    monkeypatch.setattr(type(model.model), "run", lambda self, x: shapes.append(tuple(x.shape[-2:])) or run(self, x))
    x = torch.cat([photo("astronaut", 100, 150, 97, 131), photo("coffee", 50, 100, 97, 131)])
    plan = plan_run(model, 97, 131, TileSettings(tile=32), torch.device("cpu"))
    assert len(plan.tiles) == 1  # the engine hands over the whole image; the module tiles it
    got = upscale(model, x, UpscaleOptions(device="cpu", tiles=TileSettings(tile=32)))
    assert shapes and set(shapes) == {(48, 56)}
    assert _max_diff(got, reference(descriptor, x)) <= TOLERANCE
    small = upscale(model, photo("astronaut", 0, 0, 20, 30), UpscaleOptions(device="cpu"))  # padded up to 48x56
    assert small.shape == (1, 3, 40, 60)


def test_static_batch_graph_runs_any_batch(exported, tmp_path):
    descriptor, path = exported["x2"]
    graph = onnx.load(str(path))
    for value in (graph.graph.input[0], graph.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(graph, str(tmp_path / "batch1.onnx"))
    model = load_model(tmp_path / "batch1.onnx", cache=None)
    x = torch.cat([photo("astronaut", 0, 0, 30, 34), photo("coffee", 0, 0, 30, 34), photo("chelsea", 0, 0, 30, 34)])
    got = run_tiled(model, x, settings=TileSettings(tile=-1, batch=4))
    assert _max_diff(got, reference(descriptor, x)) <= TOLERANCE


# ------------------------------------------------------------------------------- module manners
def test_module_survives_copies_moves_dtypes_and_threads(exported):
    descriptor, path = exported["x2"]
    model = load_model(path, cache=None)
    module = model.model
    assert list(module.parameters()) == [] and list(module.buffers()) == []
    assert model_on(model, torch.device("cpu"), torch.float32) is module
    assert module.to(torch.float16) is module and module.eval() is module
    x = photo("astronaut", 10, 10, 24, 28)
    expected = reference(descriptor, x)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert _max_diff(clone(x).clamp(0, 1), expected) <= TOLERANCE
    assert module(x.half()).dtype == torch.float16 and module(x.bfloat16()).dtype == torch.bfloat16
    results: list[torch.Tensor] = []
    threads = [threading.Thread(target=lambda: results.append(module(x).clamp(0, 1))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(_max_diff(r, expected) <= TOLERANCE for r in results)
    with pytest.raises(TilewiseError, match="ONNX file already"):
        export_onnx(model, path.with_name("again.onnx"))


def test_compiled_run_keeps_onnxruntime_outside_the_graph(exported):
    descriptor, path = exported["x2"]
    model = load_model(path, cache=None)
    x = photo("astronaut", 10, 10, 30, 34)
    got = run_tiled(model, x, settings=TileSettings(tile=24, compile=True))
    assert _max_diff(got, reference(descriptor, x)) <= TOLERANCE


def test_cache_follows_the_file(exported, tmp_path):
    _, path = exported["x2"]
    target = tmp_path / "cached.onnx"
    target.write_bytes(path.read_bytes())
    first = load_model(target)
    assert load_model(target) is first
    target.write_bytes(exported["x4"][1].read_bytes())
    assert load_model(target).scale == 4


# --------------------------------------------------------------------------------- CLI and hosts
def test_cli_upscale_and_info(exported, tmp_path, capsys):
    descriptor, path = exported["x2"]
    weights = tmp_path / "same.safetensors"
    save_file({k: v.contiguous() for k, v in descriptor.model.state_dict().items()}, str(weights))
    image = tmp_path / "in.png"
    Image.fromarray(
        (photo("chelsea", 50, 100, 40, 52)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ).save(image)
    outputs = []
    for model in (path, weights):
        out = tmp_path / f"out_{model.suffix[1:]}.png"
        assert main(["upscale", str(image), "-o", str(out), "--model", str(model), "--tile", "32", "-q"]) == 0
        outputs.append(np.asarray(Image.open(out)).astype(int))
    assert outputs[0].shape == (80, 104, 3) and np.abs(outputs[0] - outputs[1]).max() <= 1
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "ONNX" and info["backend"] == "onnxruntime" and info["scale"] == 2
    count = sum(p.numel() for p in descriptor.model.parameters())  # the exporter stores equal PReLU slopes once
    assert 0.95 * count <= info["params"] <= count
    assert "opset17" in info["tags"] and info["tiling"] == "supported"
    assert main(["info", str(exported["fixed"][1])]) == 0
    assert "internal" in capsys.readouterr().out
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01garbage" * 50)
    assert main(["info", str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "garbage.onnx" in err and "Traceback" not in err


def test_catalog_lists_and_loads_onnx_files(exported, tmp_path):
    assert ".onnx" in MODEL_EXTENSIONS and ONNX_EXTENSIONS == (".onnx",)
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "sub").mkdir(parents=True)
    second.mkdir()
    (first / "sub" / "good.onnx").write_bytes(exported["x2"][1].read_bytes())
    (first / "broken.onnx").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    save_file(
        {k: v.contiguous() for k, v in exported["x4"][0].model.state_dict().items()}, str(first / "w.safetensors")
    )
    (second / "other.ONNX").write_bytes(exported["x4"][1].read_bytes())
    entries = {e.name: e for e in scan_folder(first)}
    assert set(entries) == {"broken.onnx", "sub/good.onnx", "w.safetensors"}
    assert entries["sub/good.onnx"].model.architecture.id == "ONNX" and entries["w.safetensors"].model.scale == 4
    assert entries["broken.onnx"].error.startswith("broken.onnx: is a web page (HTML)")
    assert [p.name for p in find_model_files(first, extensions=ONNX_EXTENSIONS)] == ["broken.onnx", "good.onnx"]
    assert model_names_in([first, second], ONNX_EXTENSIONS) == [
        "broken.onnx",
        os.path.join("sub", "good.onnx"),
        "other.ONNX",
    ]


def test_a1111_extension_lists_and_runs_onnx_files(exported, tmp_path, monkeypatch):
    test_a1111 = pytest.importorskip("test_a1111")
    host = test_a1111.Host(tmp_path, monkeypatch)
    try:
        target = host.add(exported["x4"][1], "sub/compact.onnx")
        entry = next(d for d in host.start() if d.data_path == str(target))
        assert entry.name == "Tilewise sub/compact" and entry.scale == 4
        image = Image.fromarray(
            (photo("astronaut", 100, 180, 24, 28)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        )
        assert entry.scaler.do_upscale(image, str(target)).size == (112, 96)
    finally:
        test_a1111._forget_host()


COMFY_CHECK = """
import sys
comfy_dir, package_parent, models, expected_path = sys.argv[1:5]
sys.path[:0] = [package_parent, comfy_dir]
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = ["main.py", "--cpu"]
import folder_paths
folder_paths.folder_names_and_paths["upscale_models"] = ([models], folder_paths.supported_pt_extensions)
import torch
from comfy_extras.nodes_upscale_model import ImageUpscaleWithModel
from tilewise.nodes import loader
names = loader.model_names()
assert "sub/c.onnx" in names and "w.pth" in names, names
assert names.index("w.pth") < names.index("builtin:magic-kernel-sharp-2x"), names
assert "sub/c.onnx" not in folder_paths.get_filename_list("upscale_models")
model = loader.TilewiseModelLoader.execute("sub/c.onnx").args[0]
image = torch.load(expected_path)["image"]
out = ImageUpscaleWithModel.execute(model, image.movedim(1, -1)).args[0].movedim(-1, 1)
error = float((out - torch.load(expected_path)["expected"]).abs().max())
assert error <= 1e-4, error
print("ok", model.architecture.id, model.scale)
"""


def test_comfyui_loader_lists_onnx_files_and_core_node_runs_them(exported, tmp_path):
    """In the ComfyUI the ComfyUI tests set up (skipped when it is not there yet): the loader
    lists .onnx files ComfyUI's own list leaves out, and the core upscale node runs the result."""
    harness = pytest.importorskip("comfy_harness")
    comfy_dir = harness.cache_root() / f"comfyui-{harness.COMFY_VERSION}"
    python = (
        harness.cache_root()
        / f"venv-comfyui-{harness.COMFY_VERSION}-py{sys.version_info.major}{sys.version_info.minor}"
        / "bin"
        / "python"
    )
    if not (comfy_dir / "main.py").is_file() or not python.is_file():
        pytest.skip("the ComfyUI test environment is not set up (tests/test_comfyui.py sets it up)")
    python = harness.comfy_python()  # layered over this test environment (another checkout may have set it up)
    descriptor, path = exported["x2"]
    models = tmp_path / "upscale_models"
    (models / "sub").mkdir(parents=True)
    (models / "sub" / "c.onnx").write_bytes(path.read_bytes())
    (models / "w.pth").write_bytes(b"")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "tilewise").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    image = photo("astronaut", 100, 180, 40, 44)
    torch.save({"image": image, "expected": reference(descriptor, image)}, tmp_path / "expected.pt")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [
            str(python),
            "-c",
            COMFY_CHECK,
            str(comfy_dir),
            str(tmp_path / "pkg"),
            str(models),
            str(tmp_path / "expected.pt"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "ok ONNX 2" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


# ------------------------------------------------------------------------------------ bad files
def _save_graph(path: Path, nodes, inputs, outputs, initializers=(), domains=()) -> Path:
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=8), str(path))
    return path


def _image(name: str, elem=TensorProto.FLOAT, shape=("b", 3, "h", "w")):
    return helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None)


def _refusal(path: Path, error=ModelFileError) -> str:
    with pytest.raises(error) as caught:
        load_model(path, cache=None)
    text = str(caught.value)
    assert text.startswith(f"{path.name}: ") and "Traceback" not in text and "\n" not in text
    return text


def test_truncated_and_garbage_files(exported, tmp_path):
    data = exported["x2"][1].read_bytes()
    for cut in (len(data) // 2, 300, 40):
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        assert "truncated or damaged" in _refusal(tmp_path / "cut.onnx") or "no graph" in _refusal(
            tmp_path / "cut.onnx"
        )
    rng = np.random.default_rng(5)
    for index in range(5):
        (tmp_path / f"noise{index}.onnx").write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
        _refusal(tmp_path / f"noise{index}.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "empty" in _refusal(tmp_path / "empty.onnx")
    (tmp_path / "lfs.onnx").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 123\n")
    assert "Git LFS pointer" in _refusal(tmp_path / "lfs.onnx")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.onnx"))
    assert "holds a safetensors file" in _refusal(tmp_path / "weights.onnx")


def test_file_size_is_checked_before_reading(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_backend, "MAX_ONNX_BYTES", 1000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read a file that is too large"))
    assert "at most 2 GiB" in _refusal(exported["x2"][1])


def test_custom_operator_domain_is_refused(tmp_path):
    path = _save_graph(
        tmp_path / "custom.onnx",
        [helper.make_node("Upscale", ["x"], ["y"], domain="com.example.native")],
        [_image("x")],
        [_image("y")],
        domains=["com.example.native"],
    )
    text = _refusal(path, UnsafeModelError)
    assert "custom operators" in text and "com.example.native" in text


def test_external_data_is_refused_without_reading_it(exported, tmp_path):
    model = onnx.load(str(exported["x2"][1]))
    onnx.save(
        model,
        str(tmp_path / "split.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="split.bin",
        size_threshold=0,
    )
    assert (tmp_path / "split.bin").is_file()
    assert "separate files" in _refusal(tmp_path / "split.onnx", UnsafeModelError)
    hostile = onnx.load(str(tmp_path / "split.onnx"), load_external_data=False)
    for tensor in hostile.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../../../etc/passwd"
    onnx.save(hostile, str(tmp_path / "hostile.onnx"))
    assert "onnx.save" in _refusal(tmp_path / "hostile.onnx", UnsafeModelError)


def test_graphs_that_are_not_image_models(tmp_path):
    rank3 = _image("y", shape=("b", "h", "w"))
    mean = helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)
    assert "rank-3 output" in _refusal(_save_graph(tmp_path / "declared.onnx", [mean], [_image("x")], [rank3]))
    declared_4 = _image("y", shape=("b", "c", "h", "w"))  # onnxruntime merges shapes leniently: found by the probe run
    assert "rank-3 output" in _refusal(_save_graph(tmp_path / "probed.onnx", [mean], [_image("x")], [declared_4]))
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 1.5, 1.5])
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    text = _refusal(_save_graph(tmp_path / "x1.5.onnx", [resize], [_image("x")], [_image("y")], [scales]))
    assert "no integer scale" in text
    identity = helper.make_node("Identity", ["x"], ["y"])
    assert "2-channel" in _refusal(
        _save_graph(tmp_path / "two.onnx", [identity], [_image("x", shape=(1, 2, "h", "w"))], [_image("y")])
    )
    assert "UINT8 input" in _refusal(
        _save_graph(
            tmp_path / "u8.onnx", [identity], [_image("x", TensorProto.UINT8)], [_image("y", TensorProto.UINT8)]
        )
    )
    add = helper.make_node("Add", ["x", "z"], ["y"])
    assert "2 inputs" in _refusal(
        _save_graph(tmp_path / "two_inputs.onnx", [add], [_image("x"), _image("z")], [_image("y")])
    )


def test_fixed_size_too_small_for_the_models_reach(tmp_path):
    export_onnx(compact(4, 2), tmp_path / "tiny.onnx", size=(16, 16))
    assert "fixed input size (16x16, height x width)" in _refusal(tmp_path / "tiny.onnx")


@pytest.mark.parametrize("package", ["onnxruntime", "onnx"])
def test_missing_onnxruntime_says_what_to_install(exported, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)
    assert 'pip install "tilewise[onnx]"' in _refusal(exported["x2"][1])
