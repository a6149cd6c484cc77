"""Makes the README's pictures and the template thumbnails the workflows lack.

    python tools/make_pictures.py            # after `pytest tests/test_browser.py` for the screenshots

- docs/images/before_after.png: the bundled example, the input enlarged without smoothing beside
  the default model's output (what `python -m tilewise upscale examples/astronaut.png` writes);
- docs/images/seams.png: a naive overlap tile merge (tiles fed without context, borders
  feathered, as many upscaler nodes do) against Tilewise's crop merge, each with its difference
  to an untiled run, magnified;
- docs/images/comfyui_*.png: crops of the screenshots `tests/test_browser.py` leaves in its
  artifacts folder ($TILEWISE_ARTIFACTS or the test cache);
- example_workflows/<name>.jpg for every template without a thumbnail (the video workflows: a
  strip of frames of a panning photo, low resolution left, upscaled right; the tileable texture:
  a texture upscaled tileable, and plain and tileable upscales' differences to a seamless
  reference, magnified).
Needs the test extra (scikit-image for the photo).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "images"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from tilewise.engine import TileSettings, UpscaleOptions, load_model, read_image, run_tiled, upscale  # noqa: E402

DEFAULT_MODEL = "builtin:paragonsr2-realtime-2x"


def to_pil(tensor: torch.Tensor) -> Image.Image:
    array = tensor[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def label(image: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((8, 6), text)
    draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
    draw.text((8, 6), text, fill=(255, 255, 255))
    return image


def side_by_side(images: list[Image.Image], gap: int = 6) -> Image.Image:
    width = sum(i.width for i in images) + gap * (len(images) - 1)
    height = max(i.height for i in images)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    return canvas


def before_after() -> None:
    model = load_model(DEFAULT_MODEL)
    image = read_image(ROOT / "examples" / "astronaut.png").tensor
    out = upscale(model, image, UpscaleOptions(device="cpu"))
    y, x, size = 40, 70, 96  # the face
    crop_in = to_pil(image[..., y : y + size, x : x + size]).resize((size * 4, size * 4), Image.Resampling.NEAREST)
    s = model.scale
    crop_out = to_pil(out[..., y * s : (y + size) * s, x * s : (x + size) * s]).resize((size * 4, size * 4))
    picture = side_by_side([label(crop_in, "input (pixels enlarged)"), label(crop_out, f"Tilewise, {DEFAULT_MODEL}")])
    picture.save(DOCS / "before_after.png", optimize=True)


def seams() -> None:
    from tiling import naive_tiled

    model = load_model(DEFAULT_MODEL)
    image = read_image(ROOT / "examples" / "astronaut.png").tensor
    whole = run_tiled(model, image, settings=TileSettings(tile=-1))
    naive = naive_tiled(model, image, tile=64, overlap=8)
    ours = run_tiled(model, image, settings=TileSettings(tile=64))
    y, x, size, zoom = 150, 150, 120, 3  # output pixels around where four naive tiles meet (at 112 and 224)
    panels = []
    for name, result in (("naive overlap tiles", naive), ("Tilewise crop merge", ours)):
        crop = (slice(None), slice(None), slice(y, y + size), slice(x, x + size))
        difference = (result - whole).abs().mul(64).clamp(0, 1)
        big = (size * zoom, size * zoom)
        panels.append(label(to_pil(result[crop]).resize(big, Image.Resampling.NEAREST), f"{name}, 64-px tiles"))
        panels.append(
            label(to_pil(difference[crop]).resize(big, Image.Resampling.NEAREST), "difference to untiled x64")
        )
        print(f"{name}: max difference to untiled {float((result - whole).abs().max()):.4f}")
    side_by_side(panels).save(DOCS / "seams.png", optimize=True)


def screenshots() -> None:
    shots = Path(os.environ.get("TILEWISE_ARTIFACTS") or Path.home() / ".cache" / "tilewise-test" / "artifacts")
    shots = shots / "browser"
    crops = {
        "after_run_nodes.png": ("comfyui_upscale_and_info.png", (60, 110, 1080, 970)),
        "workflow_upscale_image_batch.png": ("comfyui_options.png", (60, 330, 1580, 880)),
        "template_browser.png": ("comfyui_templates.png", (100, 70, 1500, 930)),
    }
    for source, (target, box) in crops.items():
        if not (shots / source).is_file():
            print(f"no {shots / source}: run pytest tests/test_browser.py first")
            continue
        Image.open(shots / source).convert("RGB").crop(box).save(DOCS / target, optimize=True)


def video_thumbnails() -> None:
    from skimage import data

    model = load_model("builtin:magic-kernel-sharp-2x")
    photo = torch.from_numpy(data.astronaut().astype(np.float32) / 255).permute(2, 0, 1)[None]
    frames = []
    for step in range(3):
        low = photo[..., 20 + 24 * step : 20 + 24 * step + 256, 140 : 140 + 192][..., ::2, ::2].contiguous()
        high = upscale(model, low, UpscaleOptions(device="cpu"))
        left = to_pil(low).resize((high.shape[-1], high.shape[-2]), Image.Resampling.NEAREST)
        half = left.width // 2
        frame = to_pil(high)
        frame.paste(left.crop((0, 0, half, left.height)), (0, 0))
        ImageDraw.Draw(frame).line((half, 0, half, frame.height), fill=(255, 255, 255), width=2)
        frames.append(frame)
    strip = side_by_side(frames, gap=8).convert("RGB")
    for name in ("upscale_video_frames", "upscale_video_file"):
        target = ROOT / "example_workflows" / f"{name}.jpg"
        if not target.is_file():
            strip.save(target, quality=88)


def periodic_component(image: np.ndarray) -> np.ndarray:
    """The periodic part of a photograph (Moisan's periodic plus smooth decomposition): the
    photo less the smooth image that carries the jumps between its opposite edges, so the rest
    repeats seamlessly and looks like the photo."""
    height, width = image.shape
    jumps = np.zeros_like(image)
    jumps[0, :] += image[-1, :] - image[0, :]
    jumps[-1, :] -= image[-1, :] - image[0, :]
    jumps[:, 0] += image[:, -1] - image[:, 0]
    jumps[:, -1] -= image[:, -1] - image[:, 0]
    q = np.cos(2 * np.pi * np.arange(height) / height)[:, None]
    r = np.cos(2 * np.pi * np.arange(width) / width)[None, :]
    denominator = 2 * q + 2 * r - 4
    denominator[0, 0] = 1
    smooth = np.fft.fft2(jumps) / denominator
    smooth[0, 0] = 0
    return image - np.real(np.fft.ifft2(smooth))


def tileable_thumbnail() -> None:
    """A repeating texture (the periodic part of a photograph of gravel) upscaled by the default
    model and laid out 2 x 2, beside the difference of a plain and a tileable upscale to the
    texture laid out 4 x 4 and upscaled whole (magnified 16 times): the plain one shows a cross
    where the copies meet."""
    from skimage import data

    target = ROOT / "example_workflows" / "upscale_tileable_texture.jpg"
    if target.is_file():
        return
    gravel = periodic_component(data.gravel()[100:196, 100:196].astype(np.float64) / 255)
    texture = torch.from_numpy(gravel.astype(np.float32)).clamp(0, 1).expand(1, 3, -1, -1)
    model = load_model(DEFAULT_MODEL)
    options = UpscaleOptions(device="cpu")
    whole = upscale(model, texture.repeat(1, 1, 4, 4), options)
    size = whole.shape[-1] // 4
    reference = whole[..., size : 3 * size, size : 3 * size]  # 2 x 2 copies away from the borders
    tileable = upscale(model, texture, replace(options, tileable=True)).repeat(1, 1, 2, 2)
    plain = upscale(model, texture, options).repeat(1, 1, 2, 2)
    shown = {
        "tileable, 2 x 2": tileable,
        "plain: difference x16": (plain - reference).abs().mul(16),
        "tileable: difference x16": (tileable - reference).abs().mul(16),
    }
    pictures = [label(to_pil(p).resize((256, 256), Image.Resampling.LANCZOS), text) for text, p in shown.items()]
    side_by_side(pictures, gap=8).convert("RGB").save(target, quality=90)


if __name__ == "__main__":
    DOCS.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    before_after()
    seams()
    screenshots()
    video_thumbnails()
    tileable_thumbnail()
