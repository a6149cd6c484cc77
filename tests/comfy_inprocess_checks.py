"""In-process checks of each Tilewise node's `execute`, with ComfyUI 0.3.75 imported as a library.

Not collected by the main test run (its name does not start with `test_`): it needs ComfyUI's
own environment, so `test_comfyui.py::test_nodes_in_process` runs it with that environment's
Python (`TILEWISE_COMFYUI_DIR` names the ComfyUI folder). ComfyUI is initialised once, as its
main.py would, with only this pack among the custom nodes.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import comfy_harness
import pytest
import torch
from clips import describe_video, make_video
from model_zoo import ZOO

COMFY_DIR = Path(os.environ.get("TILEWISE_COMFYUI_DIR", ""))
ROOT = Path(__file__).resolve().parents[1]
HTML_PAGE = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>\n"


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    if not (COMFY_DIR / "main.py").is_file():
        pytest.fail(
            "TILEWISE_COMFYUI_DIR must name a ComfyUI folder; run this through tests/test_comfyui.py", pytrace=False
        )
    base = tmp_path_factory.mktemp("comfy-inprocess")
    models = base / "models" / "upscale_models"
    models.mkdir(parents=True)
    ZOO["Compact"].save(models / "compact_x2.safetensors", seed=0, scale=2)
    ZOO["SPAN"].save(models / "span_x2.safetensors", seed=0, scale=2)
    ZOO["SwinIR"].save(models / "swinir_x2.safetensors", seed=0, scale=2)
    (models / "broken.pth").write_text(HTML_PAGE)
    nodes = comfy_harness.start_in_process(COMFY_DIR, base)
    entry = str(base / "custom_nodes" / "tilewise" / "__init__.py")
    pack_name = next(name for name, module in list(sys.modules.items()) if getattr(module, "__file__", None) == entry)
    import comfy.model_management as mm
    import comfy.utils

    return SimpleNamespace(
        base=base,
        models=models,
        nodes=nodes.NODE_CLASS_MAPPINGS,
        mm=mm,
        utils=comfy.utils,
        engine=importlib.import_module(pack_name + ".engine"),
        precision=importlib.import_module(pack_name + ".engine.compute.precision"),
        host=importlib.import_module(pack_name + ".nodes.host"),
        upscale_module=importlib.import_module(pack_name + ".nodes.upscale"),
        loader_module=importlib.import_module(pack_name + ".nodes.loader"),
        video_module=importlib.import_module(pack_name + ".nodes.video"),
    )


@pytest.fixture(autouse=True)
def like_comfyui_execution():
    """ComfyUI runs every node inside torch.inference_mode(): so do these checks."""
    with torch.inference_mode():
        yield


@pytest.fixture
def compact(comfy):
    return comfy.nodes["TilewiseModelLoader"].execute("compact_x2.safetensors")[0]


def image(batch=1, height=40, width=56, channels=3, seed=0) -> torch.Tensor:
    """A ComfyUI IMAGE: (B, H, W, C) float32 in [0, 1] with some structure."""
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(
        torch.rand(batch, channels, height // 4, width // 4, generator=generator), size=(height, width), mode="bilinear"
    )
    return (
        (0.8 * smooth + 0.2 * torch.rand(batch, channels, height, width, generator=generator))
        .permute(0, 2, 3, 1)
        .contiguous()
    )


def engine_result(comfy, model, pixels, **options) -> torch.Tensor:
    result = comfy.engine.upscale(model, pixels.movedim(-1, 1), comfy.engine.UpscaleOptions(device="cpu", **options))
    return result.movedim(1, -1)


@pytest.fixture
def progress_calls(comfy):
    calls = []
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview=None, node_id=None: calls.append((value, total))
    )
    yield calls
    comfy.utils.set_progress_bar_global_hook(None)


# -- registration -------------------------------------------------------------------------------


def test_nodes_registered_through_the_v3_entry(comfy):
    from comfy_api.latest import io

    for node_id in (
        "TilewiseModelLoader",
        "TilewiseUpscaleImage",
        "TilewiseOptions",
        "TilewiseUpscale",
        "TilewiseModelInfo",
    ):
        assert issubclass(comfy.nodes[node_id], io.ComfyNode)
        assert comfy.nodes[node_id].define_schema().node_id == node_id


# -- loader ---------------------------------------------------------------------------------------


def test_loader_reads_files_and_builtins(comfy, compact):
    from spandrel import ImageModelDescriptor

    assert isinstance(compact, ImageModelDescriptor) and compact.scale == 2
    builtin = comfy.nodes["TilewiseModelLoader"].execute("builtin:magic-kernel-sharp-3x")[0]
    assert builtin.scale == 3
    options = comfy.nodes["TilewiseModelLoader"].define_schema().inputs[0].options
    assert "compact_x2.safetensors" in options and "builtin:magic-kernel-sharp-2x" in options


def test_loader_passes_hints(comfy, monkeypatch):
    seen = []
    monkeypatch.setattr(
        comfy.loader_module, "load_model", lambda source, hints: seen.append((source, hints)) or object()
    )
    monkeypatch.setattr(comfy.host, "attach_patcher", lambda descriptor: None)
    loader = comfy.nodes["TilewiseModelLoader"]
    loader.execute("compact_x2.safetensors")
    loader.execute("compact_x2.safetensors", scale_hint=3, upsampler_alpha=0.5)
    assert seen[0][0] == str(comfy.models / "compact_x2.safetensors")
    assert (seen[0][1].scale, seen[0][1].upsampler_alpha) == (None, None)
    assert (seen[1][1].scale, seen[1][1].upsampler_alpha) == (3, 0.5)


def test_loader_errors_carry_the_engine_message(comfy):
    loader = comfy.nodes["TilewiseModelLoader"]
    with pytest.raises(comfy.engine.ModelFileError, match=r"broken.pth: is a web page"):
        loader.execute("broken.pth")
    with pytest.raises(FileNotFoundError):
        loader.execute("missing.safetensors")


def test_loader_fingerprint_follows_the_file(comfy):
    loader = comfy.nodes["TilewiseModelLoader"]
    before = loader.fingerprint_inputs(model_name="compact_x2.safetensors")
    path = comfy.models / "compact_x2.safetensors"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert loader.fingerprint_inputs(model_name="compact_x2.safetensors") != before
    assert loader.fingerprint_inputs(model_name="builtin:magic-kernel-sharp-2x") == loader.fingerprint_inputs(
        model_name="builtin:magic-kernel-sharp-2x"
    )


# -- upscale --------------------------------------------------------------------------------------


def test_upscale_equals_the_engine(comfy, compact):
    pixels = image(batch=2)
    out = comfy.nodes["TilewiseUpscale"].execute(compact, pixels, tile_size=24, tile_padding=-1)[0]
    assert out.shape == (2, 80, 112, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    expected = engine_result(comfy, compact, pixels, tiles=comfy.engine.TileSettings(tile=24))
    assert torch.equal(out, expected)
    untiled = engine_result(comfy, compact, pixels, tiles=comfy.engine.TileSettings(tile=-1))
    assert torch.allclose(out, untiled, atol=1e-5)


def test_widgets_map_onto_engine_options(comfy, compact, monkeypatch):
    seen = []
    real = comfy.upscale_module.upscale
    monkeypatch.setattr(
        comfy.upscale_module,
        "upscale",
        lambda model, x, options, **kw: seen.append(options) or real(model, x, options, **kw),
    )
    node = comfy.nodes["TilewiseUpscale"]
    node.execute(compact, image())
    node.execute(
        compact,
        image(),
        tile_size=-1,
        tile_padding=6,
        merge="blend",
        precision="bf16",
        tile_batch=2,
        resample="bicubic",
        alpha="discard",
        device="cpu",
        output_device="processing",
    )
    default, custom = seen
    assert default.tiles == comfy.engine.TileSettings(tile=0, pad=None, merge="crop", batch=4)
    assert (
        default.precision,
        default.device,
        default.output_device,
        default.target.mode,
        default.resample,
        default.alpha,
    ) == ("auto", "cpu", "cpu", "native", "lanczos", "resize")
    assert custom.tiles == comfy.engine.TileSettings(tile=-1, pad=6, merge="blend", batch=2)
    assert (custom.precision, custom.device, custom.output_device, custom.resample, custom.alpha) == (
        "bf16",
        "cpu",
        "cpu",
        "bicubic",
        "discard",
    )


@pytest.mark.parametrize(
    "widgets, size",
    [
        ({"scale_mode": "native"}, (80, 112)),
        ({"scale_mode": "factor", "scale_factor": 1.5}, (60, 84)),
        ({"scale_mode": "width x height", "width": 100, "height": 50}, (50, 100)),
        ({"scale_mode": "width x height", "width": 112, "height": 0}, (80, 112)),
        ({"scale_mode": "width x height", "width": 0, "height": 120}, (120, 168)),
        ({"scale_mode": "longest side", "longest_side": 280}, (200, 280)),
        ({"scale_mode": "megapixels", "megapixels": 0.00896}, (80, 112)),
        ({"scale_mode": "factor", "scale_factor": 5.0}, (200, 280)),
    ],
)
def test_scale_modes(comfy, compact, widgets, size):
    out = comfy.nodes["TilewiseUpscale"].execute(compact, image(), **widgets)[0]
    assert tuple(out.shape[1:3]) == size


LEGACY_SIZE = {"scale_factor": "scale_by"}  # legacy widget -> Upscale Image (Tilewise) widget
SIZE_WIDGETS = ("scale_mode", "scale_by", "width", "height", "megapixels")


@pytest.mark.parametrize(
    "widgets",
    [
        {},
        {"tile_size": 32, "tile_padding": 4, "tile_batch": 3},
        {"tile_size": 40, "merge": "blend", "resample": "bicubic", "scale_mode": "factor", "scale_factor": 1.3},
        {"scale_mode": "width x height", "width": 100, "height": 0, "precision": "bf16"},
        {"scale_mode": "megapixels", "megapixels": 0.02, "alpha": "model", "output_device": "cpu", "device": "cpu"},
    ],
    ids=["defaults", "tiles", "blend-factor", "width-bf16", "megapixels-alpha"],
)
def test_upscale_image_with_options_equals_the_legacy_node(comfy, compact, widgets):
    pixels = image(channels=4)
    legacy = comfy.nodes["TilewiseUpscale"].execute(compact, pixels, **widgets)[0]
    renamed = {LEGACY_SIZE.get(name, name): value for name, value in widgets.items()}
    size = {name: value for name, value in renamed.items() if name in SIZE_WIDGETS}
    rest = {name: value for name, value in renamed.items() if name not in SIZE_WIDGETS}
    options = comfy.nodes["TilewiseOptions"].execute(**rest)[0] if rest else None
    new = comfy.nodes["TilewiseUpscaleImage"].execute(compact, pixels, **size, options=options)[0]
    assert torch.equal(new, legacy)


def test_tileable_option_gives_the_engines_tileable_result(comfy, compact):
    """Tilewise Options' `tileable` reaches the engine: the node's result is the engine's tileable
    one, which differs from the plain one at the edges."""
    pixels = image()
    options = comfy.nodes["TilewiseOptions"].execute(tileable=True, device="cpu")[0]
    out = comfy.nodes["TilewiseUpscaleImage"].execute(compact, pixels, options=options)[0]
    assert torch.equal(out, engine_result(comfy, compact, pixels, tileable=True))
    assert not torch.allclose(out, engine_result(comfy, compact, pixels), atol=1e-3)


def test_upscale_image_fits_inside_a_box(comfy, compact):
    node = comfy.nodes["TilewiseUpscaleImage"]
    assert node.execute(compact, image(), scale_mode="fit inside", width=100, height=100)[0].shape == (1, 71, 100, 3)
    assert node.execute(compact, image(), scale_mode="fit inside", width=500, height=60)[0].shape == (1, 60, 84, 3)
    with pytest.raises(ValueError, match="scale_mode"):
        node.execute(compact, image(), scale_mode="longest side")


def test_rgba_and_gray_images_keep_their_channels(comfy, compact):
    node = comfy.nodes["TilewiseUpscale"]
    assert node.execute(compact, image(channels=4))[0].shape == (1, 80, 112, 4)
    assert node.execute(compact, image(channels=4), alpha="discard")[0].shape == (1, 80, 112, 3)
    assert node.execute(compact, image(channels=1))[0].shape == (1, 80, 112, 1)


def test_core_loader_model_works_in_tilewise_upscale(comfy, compact):
    core_model = comfy.nodes["UpscaleModelLoader"].execute("compact_x2.safetensors")[0]
    pixels = image()
    out = comfy.nodes["TilewiseUpscale"].execute(core_model, pixels, tile_size=32)[0]
    assert torch.equal(out, engine_result(comfy, compact, pixels, tiles=comfy.engine.TileSettings(tile=32)))


def test_tilewise_model_works_in_core_upscale(comfy, compact):
    pixels = image()
    out = comfy.nodes["ImageUpscaleWithModel"].execute(compact, pixels)[0]
    assert out.shape == (1, 80, 112, 3)
    assert torch.allclose(
        out, engine_result(comfy, compact, pixels, tiles=comfy.engine.TileSettings(tile=-1)), atol=1e-5
    )


@pytest.mark.parametrize("file", ["span_x2.safetensors", "swinir_x2.safetensors"])
def test_core_node_after_tilewise_runs_spandrels_own_classes_with_the_same_pixels(comfy, file):
    """SPAN and SwinIR have inference forms in Tilewise; they must apply to Tilewise's private
    copy only, never to the UPSCALE_MODEL ComfyUI's core node (and other packs) share."""
    model = comfy.nodes["UpscaleModelLoader"].execute(file)[0]
    pixels = image(height=48, width=40)
    classes = [type(m) for m in model.model.modules()]
    before = comfy.nodes["ImageUpscaleWithModel"].execute(model, pixels)[0]
    ours = comfy.nodes["TilewiseUpscale"].execute(model, pixels, tile_size=-1)[0]
    after = comfy.nodes["ImageUpscaleWithModel"].execute(model, pixels)[0]
    assert [type(m) for m in model.model.modules()] == classes
    assert torch.equal(before, after)
    assert (ours - before).abs().max() < 1e-3  # the same model (the core node feathers 512-px tiles)


def test_node_passes_comfyuis_device_policy(comfy, compact, monkeypatch):
    """Free memory, precision and cache emptying come from comfy.model_management."""
    seen = []

    def get_free_memory(dev=None, torch_free_too=False):
        seen.append(dev)
        return (1 << 34, 1 << 30) if torch_free_too else 1 << 34

    monkeypatch.setattr(comfy.mm, "get_free_memory", get_free_memory)
    comfy.nodes["TilewiseUpscale"].execute(compact, image(height=200, width=200))
    assert seen, "the engine asked ComfyUI for free memory"
    policy = comfy.host.devices()
    assert policy.free_memory(torch.device("cpu")) == 1 << 34
    assert policy.default_device() == comfy.mm.get_torch_device()


def test_rejects_what_is_not_an_image_model(comfy):
    with pytest.raises(comfy.engine.ImageError, match="upscale_model must be"):
        comfy.nodes["TilewiseUpscale"].execute("not a model", image())


def test_rejects_tiles_too_small_to_be_useful(comfy, compact):
    with pytest.raises(
        ValueError,
        match=r"tile_size: tile size must be 0 \(automatic\), -1 \(whole image\) or at least 16 pixels, got 10",
    ):
        comfy.nodes["TilewiseUpscale"].execute(compact, image(), tile_size=10)  # refused alike by the CLI and the WebUI


# -- progress, interrupt, memory --------------------------------------------------------------------


def test_progress_counts_tiles_times_images(comfy, compact, progress_calls):
    comfy.nodes["TilewiseUpscale"].execute(
        compact, image(batch=3, height=48, width=48), tile_size=24, tile_padding=4, tile_batch=1
    )
    tiles = len(
        comfy.engine.plan_run(compact, 48, 48, comfy.engine.TileSettings(tile=24, pad=4), torch.device("cpu")).tiles
    )
    assert tiles > 1
    assert progress_calls[-1] == (tiles * 3, tiles * 3)
    assert [value for value, _ in progress_calls] == list(range(1, tiles * 3 + 1))


def test_interrupt_stops_within_one_tile(comfy, compact, progress_calls):
    from comfy.model_management import InterruptProcessingException

    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview=None, node_id=None: (
            progress_calls.append((value, total)),
            comfy.mm.interrupt_current_processing(True),
        )
    )
    with pytest.raises(InterruptProcessingException):
        comfy.nodes["TilewiseUpscale"].execute(
            compact, image(batch=2, height=96, width=96), tile_size=24, tile_padding=4, tile_batch=1
        )
    assert len(progress_calls) == 1
    assert not comfy.mm.processing_interrupted(), "the interrupt flag is consumed, as ComfyUI's own nodes do"


def test_makes_room_keeps_copies_in_system_memory_and_releases_device_copies(comfy, compact, monkeypatch):
    requests, emptied = [], []
    monkeypatch.setattr(
        comfy.mm, "free_memory", lambda needed, device, keep_loaded=[]: requests.append((needed, device))
    )
    comfy.nodes["TilewiseUpscale"].execute(compact, image(), precision="bf16")
    ((needed, device),) = requests
    weights = sum(p.numel() for p in compact.model.parameters()) * 2
    assert device == torch.device("cpu") and needed > weights
    key = ("cpu", torch.bfloat16)
    kept = comfy.precision._variants[compact.model][key]
    assert ("cpu", torch.float32) not in comfy.precision._variants[compact.model], "no fp32 copy a bf16 run never used"
    comfy.nodes["TilewiseUpscale"].execute(compact, image(), precision="bf16")
    assert comfy.precision._variants[compact.model][key] is kept, "the next call reuses the bf16 copy"
    # on a GPU the copies go after the run: ComfyUI budgets that memory for its own models
    monkeypatch.setattr(comfy.mm, "soft_empty_cache", lambda *args, **kwargs: emptied.append(1))
    with comfy.host.run_on(compact, torch.device("meta")):
        pass
    assert compact.model not in comfy.precision._variants and emptied


def test_patcher_only_where_the_host_has_core_model_patcher(comfy, monkeypatch):
    import comfy.model_patcher as model_patcher

    fresh = lambda: comfy.engine.load_model(comfy.models / "compact_x2.safetensors", cache=None)  # noqa: E731
    if not hasattr(model_patcher, "CoreModelPatcher"):  # ComfyUI 0.3.x: its core node needs no patcher
        plain = fresh()
        comfy.host.attach_patcher(plain)
        assert getattr(plain, "patcher", None) is None

    class FakeCorePatcher:
        def __init__(self, model, load_device, offload_device):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    monkeypatch.setattr(model_patcher, "CoreModelPatcher", FakeCorePatcher, raising=False)
    descriptor = fresh()
    comfy.host.attach_patcher(descriptor)
    assert isinstance(descriptor.patcher, FakeCorePatcher)
    assert (
        descriptor.patcher.model is descriptor.model and descriptor.patcher.load_device == comfy.mm.get_torch_device()
    )
    first = descriptor.patcher
    comfy.host.attach_patcher(descriptor)
    assert descriptor.patcher is first


# -- info -----------------------------------------------------------------------------------------


def test_info_describes_the_model(comfy, compact):
    output = comfy.nodes["TilewiseModelInfo"].execute(compact)
    text = output[0]
    assert "architecture: " + compact.architecture.id in text
    assert "scale: 2x" in text and "channels: 3 in, 3 out" in text
    assert f"params: {sum(p.numel() for p in compact.model.parameters()):,}" in text
    assert "precisions: fp32" in text
    assert output.ui.as_dict() == {"text": (text,)}


# -- ONNX export ----------------------------------------------------------------------------------


def test_export_onnx_node_writes_a_validated_file_in_the_output_folder(comfy, compact):
    import folder_paths
    import onnxruntime

    node = comfy.nodes["TilewiseExportONNX"]
    first = Path(node.execute(compact, filename_prefix="exports/compact")[0])
    second = Path(node.execute(compact, filename_prefix="exports/compact")[0])
    output = Path(folder_paths.get_output_directory()).resolve()
    assert first.parent == second.parent == output / "exports" and first != second and first.is_file()
    session = onnxruntime.InferenceSession(str(first), providers=["CPUExecutionProvider"])
    pixels = image(height=24, width=32).movedim(-1, 1).contiguous()
    got = torch.from_numpy(session.run(None, {"input": pixels.numpy()})[0]).clamp(0, 1)
    with torch.inference_mode(False):
        want = comfy.engine.run_tiled(compact, pixels.clone(), settings=comfy.engine.TileSettings(tile=-1))
    assert (got - want).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="outside ComfyUI's output folder"):
        node.execute(compact, filename_prefix="../../escape")


# -- video ----------------------------------------------------------------------------------------


def clip(frames=8, height=40, width=56, noise=0.01, seed=0) -> torch.Tensor:
    """A static shot with sensor noise, as a ComfyUI IMAGE batch (T, H, W, 3): no scene cuts, so
    the temporal state matters on every frame."""
    generator = torch.Generator().manual_seed(seed)
    base = image(height=height, width=width, seed=seed)
    return (base + noise * torch.randn(frames, height, width, 3, generator=generator)).clamp(0, 1)


def video_engine(comfy, model, frames, temporal="stabilize", **tiles) -> torch.Tensor:
    """The engine's VideoUpscaler over (T, H, W, C) frames, one by one, as (T, H', W', C)."""
    options = comfy.engine.VideoOptions(
        upscale=comfy.engine.UpscaleOptions(
            tiles=comfy.engine.TileSettings(**tiles), device="cpu", output_device="cpu"
        ),
        temporal=temporal,
    )
    runner = comfy.engine.VideoUpscaler(model, options)
    return torch.cat([runner.process(frames[t : t + 1].movedim(-1, 1)) for t in range(frames.shape[0])]).movedim(1, -1)


@pytest.fixture
def video_node(comfy, monkeypatch):
    """TilewiseUpscaleVideo as ComfyUI calls it for node "7" (the hidden unique_id set on the class)."""
    node = comfy.nodes["TilewiseUpscaleVideo"]
    monkeypatch.setattr(node, "hidden", SimpleNamespace(unique_id="7"), raising=False)
    comfy.video_module.forget_streams()
    yield node
    comfy.video_module.forget_streams()


@pytest.mark.parametrize("mode", ["off", "auto", "stabilize"])
def test_video_node_equals_the_engine(comfy, compact, video_node, mode):
    frames = clip(frames=4)
    out = video_node.execute(compact, frames, temporal_mode=mode, tile_size=24, tile_padding=-1, device="cpu")[0]
    assert out.shape == (4, 80, 112, 3) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.equal(out, video_engine(comfy, compact, frames, temporal=mode, tile=24))
    if mode == "off":
        assert torch.equal(out, engine_result(comfy, compact, frames, tiles=comfy.engine.TileSettings(tile=24)))


def test_video_node_half_precision_output(comfy, compact, video_node):
    frames = clip(frames=2)
    full = video_node.execute(compact, frames, temporal_mode="off", device="cpu")[0]
    half = video_node.execute(compact, frames, temporal_mode="off", device="cpu", output_dtype="fp16")[0]
    assert half.dtype == torch.float16 and half.shape == full.shape
    assert (half.float() - full).abs().max().item() < 1e-3


def test_video_meta_batch_chunks_continue_one_run(comfy, compact, video_node):
    frames = clip(frames=8)
    whole = video_engine(comfy, compact, frames, tile=-1)
    manager = SimpleNamespace(unique_id="1", has_closed_inputs=False)  # what VHS's loader flips on the last chunk
    parts = []
    for start, stop in ((0, 3), (3, 6), (6, 8)):
        manager.has_closed_inputs = stop == 8
        parts.append(
            video_node.execute(
                compact, frames[start:stop], temporal_mode="stabilize", tile_size=-1, device="cpu", meta_batch=manager
            )[0]
        )
    assert torch.equal(torch.cat(parts), whole)
    independent = video_engine(comfy, compact, frames[3:6], tile=-1)
    assert not torch.equal(parts[1], independent), "the stabiliser has no effect on this clip: the check proves nothing"
    # the run is over: the same manager starting again (VHS resets it) is a new video
    manager.has_closed_inputs = False
    again = video_node.execute(
        compact, frames[3:6], temporal_mode="stabilize", tile_size=-1, device="cpu", meta_batch=manager
    )[0]
    assert torch.equal(again, independent)
    # a different manager, or changed options, start afresh too
    video_node.execute(compact, frames[0:3], temporal_mode="stabilize", tile_size=-1, device="cpu", meta_batch=manager)
    other = SimpleNamespace(unique_id="1", has_closed_inputs=False)
    assert torch.equal(
        video_node.execute(
            compact, frames[3:6], temporal_mode="stabilize", tile_size=-1, device="cpu", meta_batch=other
        )[0],
        independent,
    )
    assert torch.equal(
        video_node.execute(
            compact, frames[3:6], temporal_mode="stabilize", tile_size=-1, tile_batch=2, device="cpu", meta_batch=other
        )[0],
        independent,
    )


def test_video_continuity_without_meta_batch(comfy, compact, video_node):
    frames = clip(frames=6)
    whole = video_engine(comfy, compact, frames, tile=-1)

    def run(part, **kw):
        return video_node.execute(compact, part, temporal_mode="stabilize", tile_size=-1, device="cpu", **kw)[0]

    # auto without a manager: every execution is a whole video (reproducible runs)
    run(frames[:3])
    assert torch.equal(run(frames[3:]), video_engine(comfy, compact, frames[3:], tile=-1))
    # continue: chunks fed by hand are one video; new video: always afresh
    first = run(frames[:3], continuity="continue")
    second = run(frames[3:], continuity="continue")
    assert torch.equal(torch.cat([first, second]), whole)
    assert torch.equal(run(frames[3:], continuity="new video"), video_engine(comfy, compact, frames[3:], tile=-1))


def test_video_progress_counts_frames_times_tiles(comfy, compact, video_node, progress_calls):
    video_node.execute(
        compact,
        clip(frames=3, height=48, width=48),
        temporal_mode="stabilize",
        tile_size=24,
        tile_padding=4,
        tile_batch=1,
        device="cpu",
    )
    tiles = len(
        comfy.engine.plan_run(compact, 48, 48, comfy.engine.TileSettings(tile=24, pad=4), torch.device("cpu")).tiles
    )
    assert tiles > 1
    assert progress_calls[-1] == (tiles * 3, tiles * 3)
    assert [value for value, _ in progress_calls] == list(range(1, tiles * 3 + 1))


def test_video_interrupt_stops_within_one_tile_and_drops_the_state(comfy, compact, video_node, progress_calls):
    from comfy.model_management import InterruptProcessingException

    manager = SimpleNamespace(unique_id="1", has_closed_inputs=False)
    frames = clip(frames=4, height=96, width=96)
    video_node.execute(compact, frames[:1], temporal_mode="stabilize", tile_size=-1, device="cpu", meta_batch=manager)
    assert "7" in comfy.video_module._streams
    progress_calls.clear()
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview=None, node_id=None: (
            progress_calls.append((value, total)),
            comfy.mm.interrupt_current_processing(True),
        )
    )
    with pytest.raises(InterruptProcessingException):
        video_node.execute(
            compact,
            frames[1:],
            temporal_mode="stabilize",
            tile_size=24,
            tile_padding=4,
            tile_batch=1,
            device="cpu",
            meta_batch=manager,
        )
    assert len(progress_calls) == 1
    assert not comfy.mm.processing_interrupted()
    assert "7" not in comfy.video_module._streams, "an interrupted chunk must not be continued"


def test_video_file_node_round_trip_keeps_frames_rate_and_audio(comfy, compact, tmp_path, progress_calls):
    import folder_paths
    from comfy_api.latest import InputImpl

    source = make_video(tmp_path / "clip.mp4", frames=10)
    node = comfy.nodes["TilewiseUpscaleVideoFile"]
    result = node.execute(compact, InputImpl.VideoFromFile(str(source)), temporal_mode="auto", device="cpu")[0]
    assert isinstance(result, InputImpl.VideoFromFile)
    path = Path(result.get_stream_source())
    assert path.is_file() and Path(folder_paths.get_temp_directory()).resolve() in path.resolve().parents
    before, after = describe_video(source), describe_video(path)
    assert after["size"] == (64, 48)
    assert (after["frames"], after["rate"], after["audio"]) == (before["frames"], before["rate"], before["audio"])
    assert result.get_dimensions() == (64, 48)
    assert progress_calls[-1] == (before["frames"], before["frames"])
    # a VIDEO made from components (no file behind it) works too
    components = result.get_components()
    assert components.images.shape[0] == before["frames"]
    from_components = node.execute(
        compact, InputImpl.VideoFromComponents(components), temporal_mode="off", device="cpu"
    )[0]
    assert describe_video(from_components.get_stream_source())["size"] == (128, 96)


def test_video_file_node_interrupt_leaves_no_file(comfy, compact, tmp_path, progress_calls):
    import folder_paths
    from comfy.model_management import InterruptProcessingException
    from comfy_api.latest import InputImpl

    folder = Path(folder_paths.get_temp_directory()) / "tilewise"
    before = set(folder.glob("*")) if folder.exists() else set()
    comfy.utils.set_progress_bar_global_hook(
        lambda value, total, preview=None, node_id=None: (
            progress_calls.append((value, total)),
            comfy.mm.interrupt_current_processing(True),
        )
    )
    with pytest.raises(InterruptProcessingException):
        comfy.nodes["TilewiseUpscaleVideoFile"].execute(
            compact, InputImpl.VideoFromFile(str(make_video(tmp_path / "clip.mp4", frames=10))), device="cpu"
        )
    assert len(progress_calls) == 1
    assert set(folder.glob("*")) == before
