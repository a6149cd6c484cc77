"""The ComfyUI node pack inside a real ComfyUI 0.3.75, headless on the CPU.

The server runs once for this module (see `comfy_harness` for how ComfyUI is obtained); each
test sends prompts over HTTP as any client would. `test_nodes_in_process` runs the fast
in-process checks (`comfy_inprocess_checks.py`) with the same ComfyUI imported as a library.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import comfy_harness as harness
import hostile_files
import numpy as np
import pytest
import torch
from clips import describe_video, make_video
from model_zoo import ZOO
from PIL import Image
from tilewise.engine import ModelFileError, ScaleTarget, TileSettings, UpscaleOptions, load_model, plan_run, upscale

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "example_workflows"
API_WORKFLOWS = sorted((WORKFLOWS / "api").glob("*.json"))
#: The example workflows as saved before Upscale Image (Tilewise) had five widgets (its legacy node id).
V1_WORKFLOWS = ROOT / "tests" / "fixtures" / "workflows_v1"
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
NODE_IDS = (
    "TilewiseModelLoader",
    "TilewiseUpscaleImage",
    "TilewiseOptions",
    "TilewiseUpscale",
    "TilewiseModelInfo",
    "TilewiseExportONNX",
    "TilewiseUpscaleVideo",
    "TilewiseUpscaleVideoFile",
)
BUILTINS = ("builtin:magic-kernel-sharp-2x", "builtin:magic-kernel-sharp-3x", "builtin:magic-kernel-sharp-4x")
HTML_PAGE = "<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head><body>Download</body></html>\n"
LARGE_SIDE = 1536  # the interrupted run: thousands of small tiles


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    """A started ComfyUI with this pack, seeded model files and input images."""
    if os.environ.get(harness.SKIP_ENV) == "1":
        pytest.skip(f"{harness.SKIP_ENV}=1: the real-ComfyUI tests are switched off")
    try:
        python, comfy_dir = harness.comfy_python(), harness.comfyui_dir()
    except harness.HarnessError as error:
        pytest.fail(
            f"could not set up ComfyUI {harness.COMFY_VERSION} for the tests (set {harness.SKIP_ENV}=1 to skip them): "
            f"{error}",
            pytrace=False,
        )
    base = tmp_path_factory.mktemp("comfyui")
    harness.link_pack(base / "custom_nodes")
    models = base / "models" / "upscale_models"
    (models / "sub").mkdir(parents=True)
    ZOO["Compact"].save(models / "compact_x2.safetensors", seed=0, scale=2)
    ZOO["Compact"].save(models / "sub" / "compact_x2_seed1.pth", seed=1, scale=2)
    (models / "broken.pth").write_text(HTML_PAGE)
    inputs = base / "input"
    inputs.mkdir()
    shutil.copy(comfy_dir / "input" / "example.png", inputs / "example.png")
    gradient = np.linspace(0, 255, LARGE_SIDE, dtype=np.float32)
    large = np.stack(
        [
            gradient[None, :].repeat(LARGE_SIDE, 0),
            gradient[:, None].repeat(LARGE_SIDE, 1),
            np.full((LARGE_SIDE, LARGE_SIDE), 128, np.float32),
        ],
        -1,
    )
    Image.fromarray(large.astype(np.uint8)).save(inputs / "large.png")
    make_video(inputs / "tilewise_clip.mp4", frames=10, fps=12)  # the VIDEO example workflow's input
    server = harness.ComfyServer(python, comfy_dir, base)
    try:
        server.start()
    except harness.HarnessError as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def object_info(comfy):
    status, info = comfy.get("/object_info", timeout=60)
    assert status == 200
    return info


def load_input(comfy, name: str) -> torch.Tensor:
    """An input image as LoadImage makes it, as the engine's (1, 3, H, W)."""
    array = np.asarray(Image.open(comfy.base / "input" / name).convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def as_saved(image: torch.Tensor) -> np.ndarray:
    """The engine's (B, C, H, W) result quantised exactly as ComfyUI's SaveImage does, as (B, H, W, C) uint8."""
    values = 255.0 * image.permute(0, 2, 3, 1).cpu().numpy()
    return np.clip(values, 0, 255).astype(np.uint8)


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def api_workflow(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


SIZE_WIDGETS = ("scale_mode", "scale_by", "width", "height", "megapixels")


def upscale_prompt(model: list | str, image: str, prefix: str, **widgets) -> dict:
    """LoadImage -> [TilewiseModelLoader] -> TilewiseUpscaleImage (+ TilewiseOptions "5" for any widget that is
    not a size widget) -> SaveImage; `model` is a file name or a link."""
    size = {name: value for name, value in widgets.items() if name in SIZE_WIDGETS}
    options = {name: value for name, value in widgets.items() if name not in SIZE_WIDGETS}
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {
            "class_type": "TilewiseUpscaleImage",
            "inputs": {"upscale_model": ["2", 0] if isinstance(model, str) else model, "image": ["1", 0], **size},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
    if options:
        prompt["5"] = {"class_type": "TilewiseOptions", "inputs": options}
        prompt["3"]["inputs"]["options"] = ["5", 0]
    if isinstance(model, str):
        prompt["2"] = {"class_type": "TilewiseModelLoader", "inputs": {"model_name": model}}
    return prompt


def saved_videos(comfy, entry: dict, node: str) -> list[Path]:
    """The files a SaveVideo node wrote (from its UI output)."""
    results = entry["outputs"][node]["images"]
    return [
        comfy.base / "output" / r["subfolder"] / r["filename"]
        for r in results
        if (comfy.base / "output" / r["subfolder"] / r["filename"]).is_file()
    ]


def assert_success(entry: dict) -> None:
    errors = harness.messages(entry, "execution_error")
    assert entry["status"]["status_str"] == "success", json.dumps(errors or entry["status"], indent=1)[:4000]


# -- hosts without the V3 API (no ComfyUI needed) -------------------------------------------------

#: Imports the pack by path as ComfyUI does, with the named modules stubbed in first.
IMPORT_AS_HOST = """
import importlib.util, logging, sys, types
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
for name in sys.argv[2:]:
    sys.modules[name] = types.ModuleType(name)
spec = importlib.util.spec_from_file_location("host_x_tilewise", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
print("exports", hasattr(module, "comfy_entrypoint"), hasattr(module, "NODE_CLASS_MAPPINGS"))
"""


@pytest.mark.parametrize(
    "stubs",
    [("folder_paths", "comfy"), ("folder_paths", "comfy", "comfy_api")],
    ids=["no-comfy_api", "comfy_api-without-latest"],
)
def test_comfyui_without_v3_api_gets_one_clear_log_line(stubs):
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_AS_HOST, str(ROOT / "__init__.py"), *stubs],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "exports False False" in result.stdout
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARNING tilewise")]
    assert len(warnings) == 1 and "0.3.48" in warnings[0] and "not loaded" in warnings[0]


def test_outside_comfyui_the_package_logs_nothing():
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_AS_HOST, str(ROOT / "__init__.py")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "exports False False" in result.stdout
    assert "tilewise" not in result.stdout.replace("host_x_tilewise", "")


# -- import, registration, templates ------------------------------------------------------------


def test_pack_imports_without_failure(comfy, object_info):
    log = comfy.log_text()
    table = [line for line in log.splitlines() if line.rstrip().endswith(f"custom_nodes/{harness.PACK_DIR_NAME}")]
    assert table, f"the pack is missing from the custom-node import table:\n{comfy.log_tail()}"
    assert not [line for line in table if "IMPORT FAILED" in line], "\n".join(table)
    assert not [line for line in log.splitlines() if "IMPORT FAILED" in line and "tilewise" in line.lower()]
    assert "Unable to parse pyproject.toml" not in log
    startup = log.split("Starting server")[0]  # later prompts may log tracebacks on purpose
    frames = [
        line
        for line in startup.splitlines()
        if line.strip().startswith('File "') and f"custom_nodes/{harness.PACK_DIR_NAME}/" in line
    ]
    assert not frames, "a traceback passed through the pack:\n" + "\n".join(frames)


def test_object_info_lists_every_node(object_info):
    for node_id in NODE_IDS:
        assert node_id in object_info, f"{node_id} is not registered"
    loader = object_info["TilewiseModelLoader"]
    options = loader["input"]["required"]["model_name"][1]["options"]
    assert {"compact_x2.safetensors", "broken.pth", "sub/compact_x2_seed1.pth", *BUILTINS} <= set(options)
    assert loader["output"] == ["UPSCALE_MODEL"]
    upscaler = object_info["TilewiseUpscale"]
    names = set(upscaler["input"]["required"]) | set(upscaler["input"].get("optional", {}))
    assert {
        "upscale_model",
        "image",
        "tile_size",
        "tile_padding",
        "merge",
        "precision",
        "scale_mode",
        "resample",
        "alpha",
        "output_device",
    } <= names
    assert upscaler["input"]["required"]["upscale_model"][0] == "UPSCALE_MODEL"
    assert upscaler["input"]["required"]["image"][0] == "IMAGE"
    tile = upscaler["input"]["optional"]["tile_size"][1]
    assert (tile["default"], tile["min"]) == (0, -1)
    assert upscaler["input"]["optional"]["precision"][1]["options"] == ["auto", "fp32", "fp16", "bf16"]
    assert upscaler["output"] == ["IMAGE"]
    video = object_info["TilewiseUpscaleVideo"]
    names = set(video["input"]["required"]) | set(video["input"].get("optional", {}))
    assert {
        "upscale_model",
        "images",
        "temporal_mode",
        "temporal_strength",
        "tile_size",
        "tile_padding",
        "precision",
        "device",
        "output_dtype",
        "continuity",
        "meta_batch",
    } <= names
    assert video["input"]["required"]["temporal_mode"][1]["options"] == ["off", "auto", "feedback", "stabilize"]
    assert video["input"]["optional"]["meta_batch"][0] == "VHS_BatchManager"
    assert video["output"] == ["IMAGE"]
    assert object_info["TilewiseUpscaleVideoFile"]["input"]["required"]["video"][0] == "VIDEO"
    assert object_info["TilewiseUpscaleVideoFile"]["output"] == ["VIDEO"]
    assert object_info["TilewiseModelInfo"]["output"] == ["STRING"]
    assert object_info["TilewiseModelInfo"]["output_node"] is True


def widget_names(node_info: dict) -> list[str]:
    """The inputs of a node that the front end draws as widgets (not sockets)."""
    spec = {**node_info["input"].get("required", {}), **node_info["input"].get("optional", {})}
    return [name for name, value in spec.items() if isinstance(value[0], list) or value[0] in WIDGET_KINDS]


def test_upscale_node_reads_at_a_glance_and_every_option_stays_reachable(object_info):
    node = object_info["TilewiseUpscaleImage"]
    assert widget_names(node) == ["scale_mode", "scale_by", "width", "height", "megapixels"]
    assert node["input"]["optional"]["options"][0] == "TILEWISE_OPTIONS"
    assert node["deprecated"] is False and node["display_name"] == "Upscale Image (Tilewise)"
    options = object_info["TilewiseOptions"]
    assert options["output"] == ["TILEWISE_OPTIONS"]
    legacy = object_info["TilewiseUpscale"]
    assert legacy["deprecated"] is True, "hidden from search, still loads saved workflows"
    # every widget of the legacy node is on the new node or on Tilewise Options, but "longest side",
    # which is "fit inside" N x N (tests/test_pipeline.py shows it is the same size to the pixel)
    reachable = set(widget_names(node)) | set(widget_names(options)) | {"scale_factor", "longest_side"}
    assert set(widget_names(legacy)) <= reachable
    modes = node["input"]["optional"]["scale_mode"][1]["options"]
    assert modes == ["native", "factor", "width x height", "fit inside", "megapixels"]
    spec = {**node["input"]["required"], **node["input"]["optional"], **options["input"]["optional"]}
    for name in widget_names(node) + widget_names(options):
        assert len(spec[name][1].get("tooltip", "")) > 10, f"{name} has no tooltip"


@pytest.mark.parametrize("path", sorted(V1_WORKFLOWS.glob("*.json")), ids=lambda p: p.stem)
def test_workflows_saved_with_the_legacy_node_load_and_give_the_same_pixels(comfy, object_info, path):
    """A workflow saved before the node had five widgets still converts with its positional widget
    values, and runs to the pixels of today's example workflow."""
    legacy_ui = json.loads(path.read_text())
    legacy = harness.ui_to_api(legacy_ui, object_info)
    twin = json.loads((V1_WORKFLOWS / "api" / path.name).read_text())
    assert legacy == {key: {"class_type": n["class_type"], "inputs": n["inputs"]} for key, n in twin.items()}
    assert any(node["class_type"] == "TilewiseUpscale" for node in legacy.values())
    today = api_workflow(path.stem)
    assert not any(node["class_type"] == "TilewiseUpscale" for node in today.values())
    saves = [key for key, node in legacy.items() if node["class_type"] == "SaveImage"]
    for key in saves:
        legacy[key]["inputs"]["filename_prefix"] = f"v1/{path.stem}_{key}"
        today[key]["inputs"]["filename_prefix"] = f"v2/{path.stem}_{key}"
    old_entry, new_entry = comfy.run(legacy, timeout=180), comfy.run(today, timeout=180)
    assert_success(old_entry)
    assert_success(new_entry)
    for key in saves:
        old = [decode(png) for png in comfy.images(old_entry, key)]
        new = [decode(png) for png in comfy.images(new_entry, key)]
        assert old and len(old) == len(new)
        for a, b in zip(old, new):
            np.testing.assert_array_equal(a, b)


def test_fit_inside_equals_the_legacy_longest_side(comfy):
    fit = upscale_prompt(BUILTINS[0], "example.png", "fit/new", scale_mode="fit inside", width=1000, height=1000)
    legacy = upscale_prompt(BUILTINS[0], "example.png", "fit/legacy")
    legacy["3"] = {
        "class_type": "TilewiseUpscale",
        "inputs": {"upscale_model": ["2", 0], "image": ["1", 0], "scale_mode": "longest side", "longest_side": 1000},
    }
    entries = comfy.run(fit, timeout=180), comfy.run(legacy, timeout=180)
    for entry in entries:
        assert_success(entry)
    (new,), (old,) = (comfy.images(entry, "4") for entry in entries)
    assert max(decode(new).shape[:2]) == 1000
    np.testing.assert_array_equal(decode(new), decode(old))


def test_template_browser_lists_the_ui_workflows_only(comfy):
    status, templates = comfy.get("/workflow_templates")
    assert status == 200
    expected = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    assert len(expected) >= 4
    assert sorted(templates.get(harness.PACK_DIR_NAME, [])) == expected
    served = json.loads(comfy.get_bytes(f"/api/workflow_templates/{harness.PACK_DIR_NAME}/{expected[0]}.json"))
    assert served == json.loads((WORKFLOWS / f"{expected[0]}.json").read_text())


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_ui_workflow_matches_its_api_twin(object_info, path):
    ui = json.loads((WORKFLOWS / path.name).read_text())
    twin = {
        key: {"class_type": node["class_type"], "inputs": node["inputs"]}
        for key, node in json.loads(path.read_text()).items()
    }
    assert harness.ui_to_api(ui, object_info) == twin


# -- running prompts ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_runs(comfy, path):
    prompt = json.loads(path.read_text())
    entry = comfy.run(prompt, timeout=180)
    assert_success(entry)
    saves = [key for key, node in prompt.items() if node["class_type"] == "SaveImage"]
    videos = [key for key, node in prompt.items() if node["class_type"] == "SaveVideo"]
    assert saves or videos
    for key in saves:
        images = [decode(png) for png in comfy.images(entry, key)]
        assert images and all(image.ndim == 3 and min(image.shape[:2]) > 0 and image.std() > 0 for image in images), (
            "a real, non-blank picture"
        )
    for key in videos:
        assert saved_videos(comfy, entry, key)
    for key, node in prompt.items():
        if node["class_type"] == "TilewiseModelInfo":
            assert "architecture:" in entry["outputs"][key]["text"][0]


def test_builtin_workflow_output_equals_the_engine(comfy):
    prompt = api_workflow("upscale_with_builtin_model")
    prompt["4"]["inputs"]["filename_prefix"] = "equal/builtin"
    entry = comfy.run(prompt, timeout=180)
    assert_success(entry)
    assert prompt["3"]["inputs"]["scale_mode"] == "native" and "options" not in prompt["3"]["inputs"]
    model = load_model(prompt["2"]["inputs"]["model_name"])
    expected = as_saved(upscale(model, load_input(comfy, "example.png"), UpscaleOptions(device="cpu")))
    (saved,) = comfy.images(entry, "4")
    np.testing.assert_array_equal(decode(saved), expected[0])
    assert "magic" in entry["outputs"]["5"]["text"][0].lower()


def test_exact_size_workflow_equals_the_engine(comfy):
    prompt = api_workflow("upscale_to_exact_size")
    prompt["4"]["inputs"]["filename_prefix"] = "equal/exact"
    entry = comfy.run(prompt, timeout=180)
    assert_success(entry)
    widgets = prompt["3"]["inputs"]
    assert widgets["scale_mode"] == "width x height" and "options" not in widgets
    options = UpscaleOptions(device="cpu", target=ScaleTarget("size", width=widgets["width"], height=widgets["height"]))
    expected = as_saved(
        upscale(load_model(prompt["2"]["inputs"]["model_name"]), load_input(comfy, "example.png"), options)
    )
    (saved,) = comfy.images(entry, "4")
    image = decode(saved)
    assert image.shape[:2] == (widgets["height"], widgets["width"])
    np.testing.assert_array_equal(image, expected[0])


def test_tileable_texture_workflow_equals_the_engine(comfy):
    prompt = api_workflow("upscale_tileable_texture")
    prompt["4"]["inputs"]["filename_prefix"] = "equal/tileable"
    entry = comfy.run(prompt, timeout=180)
    assert_success(entry)
    assert prompt["6"]["inputs"]["tileable"] is True and prompt["3"]["inputs"]["options"] == ["6", 0]
    options = UpscaleOptions(device="cpu", tileable=True)
    expected = as_saved(
        upscale(load_model(prompt["2"]["inputs"]["model_name"]), load_input(comfy, "example.png"), options)
    )
    (saved,) = comfy.images(entry, "4")
    np.testing.assert_array_equal(decode(saved), expected[0])


def test_batch_progress_counts_tiles_times_images(comfy):
    prompt = api_workflow("upscale_image_batch")
    assert prompt["5"]["inputs"]["options"] == ["8", 0]
    prompt["8"]["inputs"]["tile_batch"] = 3  # a different node signature: not served from the cache
    prompt["6"]["inputs"]["filename_prefix"] = "progress/batch"
    client = uuid.uuid4().hex
    events = harness.WebSocketEvents(comfy, client)
    try:
        prompt_id = comfy.queue(prompt, client_id=client)
        entry = comfy.wait(prompt_id, timeout=180)
        assert_success(entry)
        deadline = time.monotonic() + 5
        while (
            not events.of_type("executing", prompt_id)
            or events.of_type("executing", prompt_id)[-1].get("node") is not None
        ):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        progress = [e for e in events.of_type("progress", prompt_id) if e["node"] == "5"]
    finally:
        events.close()
    widgets = prompt["8"]["inputs"]
    model = load_model(prompt["4"]["inputs"]["model_name"])
    tiles = len(plan_run(model, 768, 768, TileSettings(tile=widgets["tile_size"]), torch.device("cpu")).tiles)
    assert tiles > 1
    assert progress, "no progress events from the Tilewise node"
    assert progress[-1]["value"] == progress[-1]["max"] == tiles * 2
    assert [e["value"] for e in progress] == sorted(e["value"] for e in progress)
    saved = [decode(png) for png in comfy.images(entry, "6")]
    assert len(saved) == 2 and saved[0].shape == saved[1].shape == (1536, 1536, 3)
    assert not np.array_equal(saved[0], saved[1])


def test_core_loader_into_tilewise_upscale_equals_the_engine(comfy):
    options = {"tile_size": 96, "tile_padding": -1, "merge": "crop", "tile_batch": 2}
    prompt = upscale_prompt(["2", 0], "example.png", "interop/core_loader", **options)
    prompt["2"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "compact_x2.safetensors"}}
    entry = comfy.run(prompt, timeout=180)
    assert_success(entry)
    model = load_model(comfy.base / "models" / "upscale_models" / "compact_x2.safetensors")
    settings = TileSettings(tile=96, pad=None, merge="crop", batch=2)
    expected = as_saved(upscale(model, load_input(comfy, "example.png"), UpscaleOptions(tiles=settings, device="cpu")))
    (saved,) = comfy.images(entry, "4")
    np.testing.assert_array_equal(decode(saved), expected[0])


def test_tilewise_loader_into_core_upscale(comfy):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "TilewiseModelLoader", "inputs": {"model_name": "sub/compact_x2_seed1.pth"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "interop/core_upscale"}},
    }
    entry = comfy.run(prompt, timeout=180)
    assert_success(entry)
    (saved,) = comfy.images(entry, "4")
    image = decode(saved).astype(np.float32)
    model = load_model(comfy.base / "models" / "upscale_models" / "sub" / "compact_x2_seed1.pth")
    untiled = as_saved(
        upscale(model, load_input(comfy, "example.png"), UpscaleOptions(tiles=TileSettings(tile=-1), device="cpu"))
    )[0].astype(np.float32)
    assert image.shape == untiled.shape == (1536, 1536, 3)
    # the core node feathers its own 512-pixel tiles: close to the untiled result, not equal
    assert np.abs(image - untiled).mean() < 1.0


def test_broken_model_file_is_a_comfyui_error_with_the_engine_message(comfy):
    with pytest.raises(ModelFileError) as expected:
        load_model(comfy.base / "models" / "upscale_models" / "broken.pth", cache=None)
    entry = comfy.run(upscale_prompt("broken.pth", "example.png", "errors/broken"), timeout=120)
    assert entry["status"]["status_str"] == "error"
    (error,) = harness.messages(entry, "execution_error")
    assert error["node_type"] == "TilewiseModelLoader"
    assert str(expected.value) in error["exception_message"]
    assert "web page" in error["exception_message"]
    # the server keeps serving
    assert comfy.get("/system_stats")[0] == 200
    after = comfy.run(upscale_prompt(BUILTINS[0], "example.png", "errors/after", tile_size=-1), timeout=120)
    assert_success(after)


def test_hostile_model_files_are_comfyui_errors_and_the_server_survives(comfy):
    """Round two of the hostile files (crashers, hangs, memory bombs), each queued through the
    loader of the real server: an error on the loader node naming the file, and the server
    keeps serving."""
    folder = comfy.base / "models" / "upscale_models" / "hostile"
    made = hostile_files.write_all(folder)
    for name in made:
        entry = comfy.run(upscale_prompt(f"hostile{os.sep}{name}", "example.png", "errors/hostile"), timeout=120)
        assert entry["status"]["status_str"] == "error", name
        (error,) = harness.messages(entry, "execution_error")
        assert error["node_type"] == "TilewiseModelLoader", error
        assert name in error["exception_message"] and "\x1b" not in error["exception_message"], error[
            "exception_message"
        ][:300]
        assert len(error["exception_message"]) < 2500
    assert comfy.get("/system_stats")[0] == 200
    assert_success(
        comfy.run(upscale_prompt(BUILTINS[0], "example.png", "errors/after-hostile", tile_size=-1), timeout=120)
    )


def test_interrupt_stops_a_run_within_a_tile(comfy):
    prompt = upscale_prompt(
        "compact_x2.safetensors", "large.png", "interrupt/large", tile_size=40, tile_padding=8, tile_batch=1
    )
    client = uuid.uuid4().hex
    events = harness.WebSocketEvents(comfy, client)
    try:
        prompt_id = comfy.queue(prompt, client_id=client)
        deadline = time.monotonic() + 120
        while not [e for e in events.of_type("progress", prompt_id) if e["node"] == "3" and e["value"] >= 5]:
            assert time.monotonic() < deadline, f"the run never reported progress:\n{comfy.log_tail()}"
            time.sleep(0.02)
        assert comfy.post("/interrupt", {})[0] == 200
        interrupted_at = time.monotonic()
        entry = comfy.wait(prompt_id, timeout=60)
        stopped_after = time.monotonic() - interrupted_at
        progress = [e for e in events.of_type("progress", prompt_id) if e["node"] == "3"]
    finally:
        events.close()
    assert entry["status"]["status_str"] == "error"
    assert harness.messages(entry, "execution_interrupted"), entry["status"]
    assert not harness.messages(entry, "execution_error"), "an interrupt must not be reported as an error"
    assert progress[-1]["value"] < progress[-1]["max"] / 2, "the run was not stopped early"
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"
    assert "4" not in entry.get("outputs", {})
    after = comfy.run(upscale_prompt(BUILTINS[1], "example.png", "interrupt/after"), timeout=120)
    assert_success(after)


# -- video ----------------------------------------------------------------------------------------


def test_video_file_workflow_keeps_frames_rate_and_audio(comfy):
    prompt = api_workflow("upscale_video_file")
    prompt["4"]["inputs"]["filename_prefix"] = "video/roundtrip"
    entry = comfy.run(prompt, timeout=180)
    assert_success(entry)
    (written,) = saved_videos(comfy, entry, "4")
    before, after = describe_video(comfy.base / "input" / "tilewise_clip.mp4"), describe_video(written)
    assert after["size"] == (2 * before["size"][0], 2 * before["size"][1])
    assert (after["frames"], after["rate"]) == (before["frames"], before["rate"])
    assert before["audio"] and len(after["audio"]) == len(before["audio"])


def test_video_frames_workflow_equals_the_engine(comfy):
    from tilewise.engine import VideoOptions, VideoUpscaler

    prompt = api_workflow("upscale_video_frames")
    prompt["6"]["inputs"]["filename_prefix"] = "video/frames"
    entry = comfy.run(prompt, timeout=180)
    assert_success(entry)
    saved = [decode(png) for png in comfy.images(entry, "6")]
    assert len(saved) == prompt["3"]["inputs"]["amount"] and saved[0].shape == (512, 512, 3)
    example = torch.from_numpy(
        np.asarray(Image.open(comfy.base / "input" / "example.png").convert("RGB")).astype(np.float32) / 255.0
    )
    frame = torch.nn.functional.interpolate(
        example.movedim(-1, 0)[None], size=(256, 256), mode="area"
    )  # what ImageScale "area" does
    widgets = prompt["5"]["inputs"]
    runner = VideoUpscaler(
        load_model(prompt["4"]["inputs"]["model_name"]),
        VideoOptions(
            upscale=UpscaleOptions(device="cpu"), temporal=widgets["temporal_mode"], scene_cut=widgets["scene_cut"]
        ),
    )
    for index, image in enumerate(saved):
        expected = as_saved(runner.process(frame))[0]
        assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1, index


# -- in-process -----------------------------------------------------------------------------------


def test_nodes_in_process(comfy):
    """Each node's `execute` with ComfyUI imported as a library (comfy_inprocess_checks.py)."""
    checks = Path(__file__).with_name("comfy_inprocess_checks.py")
    env = dict(os.environ, TILEWISE_COMFYUI_DIR=str(comfy.comfy), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(comfy.python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(checks)],
        cwd=comfy.base,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # not the repo: its nodes/ would shadow ComfyUI's nodes.py
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=* ?\d+ passed(, \d+ warnings?)? in [\d.]+s( \([\d:]+\))? ?=*", summary), (
        summary
    )  # every check ran: none skipped
