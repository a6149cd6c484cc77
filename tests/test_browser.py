"""The node pack in ComfyUI's real web front end, in a real browser, as a user meets it.

ComfyUI 0.3.75 runs headless with the front end its requirements pin (`comfyui-frontend-package`
from PyPI) and Debian's Chromium drives the page through Playwright (from PyPI, told to use that
Chromium: no browser is downloaded). Every example workflow (and every workflow saved with the
previous version of the upscale node) is loaded through the page as a user's file would be; a
run is queued by clicking Run; the output, the info node's text and the template browser are
checked where the user sees them. Screenshots go to $TILEWISE_ARTIFACTS (default: the test
cache's `artifacts/browser`), never into the repository; `docs/images/` holds copies chosen for
the README.

Without Chromium the module skips, naming the package to install; `.ci/run` installs it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import urllib.parse
from pathlib import Path

import comfy_harness as harness
import numpy as np
import pytest
import torch
from clips import make_video
from PIL import Image
from tilewise.engine import ScaleTarget, UpscaleOptions, load_model, upscale

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "example_workflows"
V1_WORKFLOWS = ROOT / "tests" / "fixtures" / "workflows_v1"
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json")) + sorted(V1_WORKFLOWS.glob("*.json"))

READY = """() => !!(window.app && app.graph && app.vueAppReady && window.LiteGraph
    && document.querySelector('canvas') && LiteGraph.registered_node_types['TilewiseUpscaleImage'])"""
DIALOGS = "() => [...document.querySelectorAll('.p-dialog')].map(d => d.innerText)"
# what the page holds after loading a workflow as a user's file: the same call as drag-and-drop
LOAD = """async ([workflow, name]) => {
  await app.loadGraphData(workflow, true, true, name);
  return app.graph.nodes.map(n => ({
    id: n.id, type: n.type, registered: n.type in LiteGraph.registered_node_types, has_errors: !!n.has_errors,
    widgets: (n.widgets || []).filter(w => w.serialize !== false).map(w => ({name: w.name, value: w.value,
        options: Array.isArray(w.options?.values) ? w.options.values : null})),
  }));
}"""
TEXT_OF = """(id) => {
  const node = app.graph.getNodeById(id);
  const widget = node?.widgets?.find(w => w.name === 'shown_text');
  return {value: widget?.value ?? null, dom: widget?.element?.value ?? null,
          visible: !!widget?.element && widget.element.offsetParent !== null};
}"""
FRAME = """([ids, maxScale]) => {
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of app.graph.nodes) {
    if (ids && !ids.includes(n.id)) continue;
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const el = app.canvas.canvas, left = 80, top = 120, margin = 40;
  const s = Math.min((el.clientWidth - left - margin) / (x1 - x0),
                     (el.clientHeight - top - margin) / (y1 - y0), maxScale);
  app.canvas.ds.scale = s; app.canvas.ds.offset[0] = left / s - x0; app.canvas.ds.offset[1] = top / s - y0;
  app.canvas.setDirty(true, true);
}"""


def artifacts() -> Path:
    folder = Path(os.environ.get("TILEWISE_ARTIFACTS") or harness.cache_root() / "artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if os.environ.get(harness.SKIP_ENV) == "1":
        pytest.skip(f"{harness.SKIP_ENV}=1: the real-ComfyUI tests are switched off")
    if harness.chromium() is None:
        pytest.skip(
            f"no Chromium: install Debian's `chromium` (apt-get install chromium) or set {harness.CHROMIUM_ENV}"
        )
    try:
        python, comfy_dir = harness.comfy_python(), harness.comfyui_dir()
        packages = harness.browser_packages()
    except harness.HarnessError as error:
        pytest.fail(f"could not set up ComfyUI and its front end: {error}", pytrace=False)
    sys.path.insert(0, str(packages))
    base = tmp_path_factory.mktemp("comfyui-browser")
    harness.link_pack(base / "custom_nodes")
    (base / "models" / "upscale_models").mkdir(parents=True)
    (base / "input").mkdir()
    shutil.copy(comfy_dir / "input" / "example.png", base / "input" / "example.png")
    make_video(base / "input" / "tilewise_clip.mp4", frames=6, fps=12)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text('{"Comfy.Minimap.Visible": false, "Comfy.TutorialCompleted": true}\n')
    front_end = packages / "comfyui_frontend_package" / "static"
    comfy = harness.ComfyServer(python, comfy_dir, base, front_end_root=front_end)
    try:
        comfy.start()
    except harness.HarnessError as error:
        pytest.fail(str(error), pytrace=False)
    yield comfy
    comfy.stop()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(harness.chromium()), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        # the page is ComfyUI's only: nothing leaves this machine (and ComfyUI's API nodes are off)
        context.route("**/*", lambda route: route.continue_() if "127.0.0.1" in route.request.url else route.abort())
        context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.goto(server.url)
        tab.wait_for_function(READY, timeout=60_000)
        tab.page_errors = errors  # type: ignore[attr-defined]
        yield tab
        browser.close()


def load(page, path: Path, name: str) -> list[dict]:
    nodes = page.evaluate(LOAD, [json.loads(path.read_text()), name])
    page.wait_for_timeout(400)
    return nodes


def close_dialogs(page) -> None:
    for _ in range(3):
        if not page.evaluate(DIALOGS):
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


def shot(page, name: str, ids: list[int] | None = None, max_scale: float = 1.4) -> Path:
    page.evaluate(FRAME, [ids, max_scale])
    page.wait_for_timeout(300)
    path = artifacts() / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def run_from_page(page, server, timeout: float = 300) -> dict:
    """Clicks Run, as a user does; returns the prompt's /history entry once the page is idle again."""

    def is_queue(response) -> bool:
        return response.url.endswith("/api/prompt") and response.request.method == "POST"

    with page.expect_response(is_queue, timeout=60_000) as answer:
        page.locator('[data-testid="queue-button"] button[aria-label="Run"]').click()
    body = answer.value.json()
    assert "prompt_id" in body, f"the page's prompt was refused: {json.dumps(body)[:2000]}"
    entry = server.wait(body["prompt_id"], timeout=timeout)
    deadline = time.monotonic() + 30
    while page.locator('[data-testid="queue-button"] .p-button-loading').count() and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    page.wait_for_timeout(800)  # the page hears 'executed' over its websocket just after /history has it
    return entry


def saved_images(server, entry: dict, node_id: int) -> list[np.ndarray]:
    images = []
    for item in entry["outputs"].get(str(node_id), {}).get("images", []):
        query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
        images.append(np.asarray(Image.open(io.BytesIO(server.get_bytes(f"/view?{query}"))).convert("RGB")))
    return images


def engine_result(server, model_name: str, target: ScaleTarget) -> np.ndarray:
    """What the engine makes of the input, quantised as SaveImage quantises."""
    pixels = np.asarray(Image.open(server.base / "input" / "example.png").convert("RGB"), np.float32) / 255
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    out = upscale(load_model(model_name), image, UpscaleOptions(device="cpu", target=target))
    return np.clip(255.0 * out[0].permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_workflow_loads_with_every_node_and_widget_value(page, path):
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in load(page, path, f"{path.parent.name}-{path.stem}")}
    dialogs = page.evaluate(DIALOGS)
    assert not [d for d in dialogs if "missing" in d.lower()], dialogs
    for saved in workflow["nodes"]:
        shown = nodes[saved["id"]]
        assert shown["registered"] and not shown["has_errors"], f"{saved['type']} is missing in the front end"
        values = [widget["value"] for widget in shown["widgets"]]
        assert values == (saved.get("widgets_values") or []), f"node {saved['id']} {saved['type']}"
        for widget in shown["widgets"]:
            assert widget["options"] is None or widget["value"] in widget["options"], widget
    if path.parent == WORKFLOWS:
        shot(page, f"workflow_{path.stem}")
    close_dialogs(page)


def test_a_missing_node_type_is_reported_by_the_page(page, tmp_path):
    """The check above can fail: a workflow naming an unknown node raises the front end's dialog."""
    workflow = json.loads((WORKFLOWS / "upscale_with_builtin_model.json").read_text())
    next(node for node in workflow["nodes"] if node["type"] == "TilewiseModelInfo")["type"] = "TilewiseNoSuchNode"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(workflow))
    nodes = load(page, path, "broken")
    assert [node["type"] for node in nodes if node["has_errors"] or not node["registered"]] == ["TilewiseNoSuchNode"]
    assert any("TilewiseNoSuchNode" in dialog for dialog in page.evaluate(DIALOGS))
    close_dialogs(page)


def test_run_from_the_page_gives_the_engine_pixels_and_shows_the_model_info(page, server):
    path = WORKFLOWS / "upscale_with_builtin_model.json"
    workflow = json.loads(path.read_text())
    load(page, path, "run-builtin")
    close_dialogs(page)
    info = next(node for node in workflow["nodes"] if node["type"] == "TilewiseModelInfo")
    assert page.evaluate(TEXT_OF, info["id"])["value"] in ("", None), "no text before the run"
    entry = run_from_page(page, server)
    assert entry["status"]["status_str"] == "success", harness.messages(entry, "execution_error")
    loader = next(node for node in workflow["nodes"] if node["type"] == "TilewiseModelLoader")
    save = next(node for node in workflow["nodes"] if node["type"] == "SaveImage")
    (saved,) = saved_images(server, entry, save["id"])
    np.testing.assert_array_equal(saved, engine_result(server, loader["widgets_values"][0], ScaleTarget("native")))
    text = page.evaluate(TEXT_OF, info["id"])
    assert text["value"].startswith("architecture: MagicKernelSharp") and "scale: 2x" in text["value"], text
    assert text["dom"] == text["value"] and text["visible"], "the text is on the node, where the user looks"
    tilewise = [node["id"] for node in workflow["nodes"] if node["type"].startswith("Tilewise")]
    shot(page, "after_run_nodes", tilewise, max_scale=1.2)
    assert not page.page_errors or all("reading 'id'" in e for e in page.page_errors), page.page_errors


def test_exact_size_run_from_the_page_equals_the_engine(page, server):
    path = WORKFLOWS / "upscale_to_exact_size.json"
    workflow = json.loads(path.read_text())
    load(page, path, "run-exact")
    close_dialogs(page)
    entry = run_from_page(page, server)
    assert entry["status"]["status_str"] == "success", harness.messages(entry, "execution_error")
    node = next(node for node in workflow["nodes"] if node["type"] == "TilewiseUpscaleImage")
    mode, _, width, height, _ = node["widgets_values"]
    assert mode == "width x height"
    save = next(node for node in workflow["nodes"] if node["type"] == "SaveImage")
    (saved,) = saved_images(server, entry, save["id"])
    assert saved.shape[:2] == (height, width)
    loader = next(node for node in workflow["nodes"] if node["type"] == "TilewiseModelLoader")
    expected = engine_result(server, loader["widgets_values"][0], ScaleTarget("size", width=width, height=height))
    np.testing.assert_array_equal(saved, expected)


def test_template_browser_shows_every_template_with_a_thumbnail(page, server):
    status, listed = server.get("/api/workflow_templates")
    names = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
    assert status == 200 and sorted(listed[harness.PACK_DIR_NAME]) == names
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator(".p-dialog").filter(has_text="Templates").first
    dialog.wait_for(timeout=15_000)
    dialog.get_by_text(harness.PACK_DIR_NAME, exact=True).first.click()
    page.wait_for_timeout(1500)  # thumbnails
    text = dialog.inner_text()
    assert [name for name in names if name not in text] == []
    page.screenshot(path=str(artifacts() / "template_browser.png"))
    for name in names:
        thumbnail = Image.open(
            io.BytesIO(server.get_bytes(f"/api/workflow_templates/{harness.PACK_DIR_NAME}/{name}.jpg"))
        )
        assert thumbnail.format == "JPEG" and min(thumbnail.size) >= 64
    dialog.get_by_text("upscale_with_builtin_model", exact=True).first.click()
    page.wait_for_function("() => app.graph.nodes.some(n => n.type === 'TilewiseModelInfo')", timeout=30_000)
    close_dialogs(page)
