"""Temporal stability of video upscaling: flicker and PSNR for each temporal mode.

The clip: scikit-image's astronaut photograph is the ground truth scene. A camera drifts over
it with smooth sub-pixel motion (about 0.3-0.7 LR px a frame plus a slow sway); each HR frame is
the photograph shifted by that amount (bicubic resampling, `shift`), cropped; the LR frame is
the HR frame downscaled 2x with antialiased bicubic, plus Gaussian sensor noise (sigma
`--noise`/255) and 8-bit quantisation. The models upscale the LR frames back 2x.

Metrics (frames 1..T-1 against their predecessor; the motion is known exactly):

* warp(a): frame t-1 moved by the camera motion between t-1 and t (same bicubic shift).
* static mask: HR pixels (8 px from the border) where the motion-compensated ground truth does
  not change, `box5(mean_c |gt_t - warp(gt_{t-1})|) < 1/255`: there, every change of the output
  is flicker, none is content.
* flicker(out) = mean over the mask of |out_t - warp(out_{t-1})|, in 8-bit steps. The input's
  own flicker is the same measure on the LR frames (mask downscaled); the ratio out / input
  is printed as `rel`. The target is flicker at most half of `off` for the same model.
* PSNR: against the ground-truth HR frames, over all frames, in dB (8-px border excluded).

Models: the bundled `builtin:paragonsr2-realtime-2x` for `off`, `feedback` and `stabilize` (the
stream fixture when the bundled weights are missing), and a seeded Compact (weights as in
`benchmarks/tiling.py`) for `off` and `stabilize`.

    python benchmarks/video.py [--frames 24] [--noise 2.5] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tilewise.engine import TileSettings, UpscaleOptions, load_model  # noqa: E402
from tilewise.engine.video.temporal import VideoOptions, VideoUpscaler  # noqa: E402
from tiling import PARAGONSR2_FIXTURES, seeded  # noqa: E402

SCALE = 2
BORDER = 8
FIXTURE = PARAGONSR2_FIXTURES / "paragonsr2_stream_x2.safetensors"


def shift(image: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """(B, C, H, W) moved by (dy, dx) pixels with bicubic resampling (edges replicated)."""
    _, _, height, width = image.shape
    ys = (torch.arange(height, dtype=torch.float64) - dy + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=torch.float64) - dx + 0.5) / width * 2 - 1
    grid = (
        torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        .float()
        .expand(image.shape[0], -1, -1, -1)
    )
    return F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 1)


def camera_path(frames: int) -> list[tuple[float, float]]:
    """LR-pixel offsets: a steady diagonal drift plus a slow sway, all sub-pixel per frame."""
    return [(0.31 * t + 0.6 * math.sin(t / 4.0), 0.47 * t + 0.5 * math.cos(t / 5.0)) for t in range(frames)]


def make_clip(frames: int, noise: float, height: int = 96, width: int = 128, seed: int = 0):
    """(ground truth HR frames (T, 3, 2h, 2w), LR frames (T, 3, h, w), LR offsets)."""
    photo = torch.from_numpy(data.astronaut().transpose(2, 0, 1).copy()).float().div(255)[None]
    path = camera_path(frames)
    top, left = 60, 150
    hr = torch.cat(
        [
            shift(photo, -SCALE * dy, -SCALE * dx)[..., top : top + SCALE * height, left : left + SCALE * width]
            for dy, dx in path
        ]
    )
    lr = F.interpolate(hr, scale_factor=1 / SCALE, mode="bicubic", antialias=True, align_corners=False)
    generator = torch.Generator().manual_seed(seed)
    lr = (lr + noise / 255 * torch.randn(lr.shape, generator=generator)).clamp(0, 1)
    lr = (lr * 255).round() / 255
    return hr, lr, path


def static_mask(hr: torch.Tensor, path) -> torch.Tensor:
    """(T-1, 1, H, W) bool: where the motion-compensated ground truth stays the same."""
    masks = []
    for t in range(1, hr.shape[0]):
        warped = warp(hr[t - 1 : t], path[t - 1], path[t], SCALE)
        change = F.avg_pool2d((hr[t : t + 1] - warped).abs().mean(1, keepdim=True), 5, 1, 2)
        mask = change < 1 / 255
        mask[..., :BORDER, :] = mask[..., -BORDER:, :] = False
        mask[..., :BORDER] = mask[..., -BORDER:] = False
        masks.append(mask)
    return torch.cat(masks)


def warp(frame: torch.Tensor, before, after, scale: int) -> torch.Tensor:
    """Frame at camera position `before` shown as at `after` (content moves against the camera)."""
    return shift(frame, -scale * (after[0] - before[0]), -scale * (after[1] - before[1]))


def flicker(frames: torch.Tensor, path, mask: torch.Tensor, scale: int) -> float:
    total, count = 0.0, 0
    for t in range(1, frames.shape[0]):
        difference = (
            (frames[t : t + 1] - warp(frames[t - 1 : t], path[t - 1], path[t], scale)).abs().mean(1, keepdim=True)
        )
        m = mask[t - 1 : t]
        total += difference[m].sum().item()
        count += int(m.sum())
    return 255 * total / max(count, 1)


def psnr(out: torch.Tensor, truth: torch.Tensor) -> float:
    crop = (..., slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    mse = ((out.clamp(0, 1) - truth)[crop] ** 2).mean().item()
    return 10 * math.log10(1 / mse)


def run(descriptor, lr: torch.Tensor, mode: str, tile: int) -> tuple[torch.Tensor, float]:
    runner = VideoUpscaler(
        descriptor, VideoOptions(upscale=UpscaleOptions(tiles=TileSettings(tile=tile), device="cpu"), temporal=mode)
    )
    out = torch.empty(lr.shape[0], 3, lr.shape[2] * SCALE, lr.shape[3] * SCALE)
    start = time.perf_counter()
    for t in range(lr.shape[0]):
        out[t : t + 1] = runner.process(lr[t : t + 1])
    return out, (time.perf_counter() - start) / lr.shape[0]


def compact_model():
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    return seeded(Compact(num_in_ch=3, num_out_ch=3, num_feat=32, num_conv=8, upscale=SCALE), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--noise", type=float, default=2.5, help="sensor noise sigma in 8-bit steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tile", type=int, default=-1, help="tile window (-1: whole frame)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    hr, lr, path = make_clip(args.frames, args.noise)
    mask = static_mask(hr, path)
    lr_mask = F.max_pool2d((~mask).float(), SCALE) == 0  # LR pixels whose HR block is all static
    input_flicker = flicker(lr, path, lr_mask, 1)
    print(
        f"clip: {args.frames} frames, LR {lr.shape[-1]}x{lr.shape[-2]}, noise sigma {args.noise}/255, "
        f"static mask {mask.float().mean().item():.0%} of pixels; input flicker {input_flicker:.2f} (8-bit steps)"
    )

    try:
        paragon, paragon_name = load_model("builtin:paragonsr2-realtime-2x"), "builtin:paragonsr2-realtime-2x"
    except Exception as error:  # weights not bundled yet
        print(f"(bundled ParagonSR2 unavailable: {error}; using the stream fixture with random weights)")
        paragon, paragon_name = load_model(FIXTURE), FIXTURE.name
    cases = [
        (paragon_name, paragon, ("off", "feedback", "stabilize")),
        ("Compact (seeded)", compact_model(), ("off", "stabilize")),
    ]
    print(
        f"{'model':34} {'mode':10} {'flicker':>8} {'rel':>6} {'vs off':>7} {'PSNR dB':>8} {'dPSNR':>7} {'s/frame':>8}"
    )
    for name, descriptor, modes in cases:
        baseline = None
        for mode in modes:
            out, seconds = run(descriptor, lr, mode, args.tile)
            value, quality = flicker(out, path, mask, SCALE), psnr(out, hr)
            if baseline is None:
                baseline = (value, quality)
            print(
                f"{name:34} {mode:10} {value:8.3f} {value / input_flicker:6.2f} {value / baseline[0]:7.2f} "
                f"{quality:8.3f} {quality - baseline[1]:+7.3f} {seconds:8.3f}"
            )
    print("target: 'vs off' <= 0.50 with dPSNR > -0.10 dB")


if __name__ == "__main__":
    main()
