"""Benchmark of the bundled default upscaler on held-out photographs (PSNR-Y, as SR papers).

    python benchmarks/default_model.py            # x2 and x4
    python benchmarks/default_model.py --scale 2 --x2 some/other_x2.safetensors

The four scikit-image photographs never used in training (`astronaut`, `coffee`, `chelsea`,
`rocket`; all CC0 / public domain) are cropped to a multiple of the scale (HR) and downscaled with
Pillow bicubic (antialiased) in 8 bits (LR), as in tools/train_default.py. Each LR image is then
upscaled by

* bicubic: Pillow `Image.BICUBIC` on the 8-bit image;
* MagicKernelSharp: `builtin:magic-kernel-sharp-{s}x`, the model's fixed base path alone;
* the model: `builtin:paragonsr2-realtime-{s}x` (or `--x2/--x4 PATH`),

the last two through `tilewise.engine.load_model` and `tilewise.engine.upscale` with default
options, i.e. exactly what users get (tiling included). Outputs are rounded to 8 bits, converted
to BT.601 studio-range Y (16..235) and compared with `scale` pixels of border cropped.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from PIL import Image
from tilewise import engine

HELD_OUT = ("astronaut", "coffee", "chelsea", "rocket")


def held_out_pair(name: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) uint8 RGB: the photograph cropped to a multiple of `scale`, and its bicubic downscale."""
    from skimage import data

    hr = np.asarray(getattr(data, name)())
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    hr = np.ascontiguousarray(hr[:h, :w, :3])
    lr = np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.Resampling.BICUBIC))
    return hr, lr


def y_channel(image: np.ndarray) -> np.ndarray:
    """BT.601 studio-range luma (16..235) of a uint8 RGB image, as float64."""
    rgb = image.astype(np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def psnr_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    a, b = y_channel(output), y_channel(reference)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    return np.asarray(Image.fromarray(lr).resize((lr.shape[1] * scale, lr.shape[0] * scale), Image.Resampling.BICUBIC))


def engine_up(descriptor, lr: np.ndarray) -> np.ndarray:
    """Runs the model through `tilewise.engine.upscale` (default options) and rounds to 8 bits."""
    tensor = torch.from_numpy(np.array(lr, copy=True)).permute(2, 0, 1)[None].float().div(255)
    out = engine.upscale(descriptor, tensor, engine.UpscaleOptions(device="cpu"))
    return out[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def benchmark(scale: int, model: str) -> list[tuple[str, tuple[int, int], float, float, float]]:
    descriptor = engine.load_model(model)
    if descriptor.scale != scale:
        raise SystemExit(f"{model} is a x{descriptor.scale} model, expected x{scale}")
    base = engine.load_model(f"builtin:magic-kernel-sharp-{scale}x")
    rows = []
    for name in HELD_OUT:
        hr, lr = held_out_pair(name, scale)
        rows.append(
            (
                name,
                lr.shape[:2],
                psnr_y(bicubic_up(lr, scale), hr, scale),
                psnr_y(engine_up(base, lr), hr, scale),
                psnr_y(engine_up(descriptor, lr), hr, scale),
            )
        )
    return rows


def report(scale: int, model: str, rows) -> tuple[float, float]:
    print(f"\nx{scale}  model: {model}   (PSNR-Y in dB, {scale}px border cropped)")
    print(f"{'image':<10} {'LR size':>9} {'bicubic':>8} {'MKS':>8} {'model':>8} {'vs bic':>7} {'vs MKS':>7}")
    for name, (h, w), bic, mks, ours in rows:
        print(f"{name:<10} {f'{w}x{h}':>9} {bic:8.2f} {mks:8.2f} {ours:8.2f} {ours - bic:+7.2f} {ours - mks:+7.2f}")
    bic, mks, ours = (float(np.mean([r[i] for r in rows])) for i in (2, 3, 4))
    print(f"{'mean':<10} {'':>9} {bic:8.2f} {mks:8.2f} {ours:8.2f} {ours - bic:+7.2f} {ours - mks:+7.2f}")
    return ours - bic, ours - mks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="PSNR-Y of the bundled ParagonSR2 realtime models vs bicubic and MagicKernelSharp."
    )
    parser.add_argument("--scale", type=int, choices=(2, 4), action="append", help="scale(s) to run (default both)")
    parser.add_argument("--x2", default="builtin:paragonsr2-realtime-2x", help="x2 model (file or builtin name)")
    parser.add_argument("--x4", default="builtin:paragonsr2-realtime-4x", help="x4 model (file or builtin name)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for scale in args.scale or (2, 4):
        model = args.x2 if scale == 2 else args.x4
        start = time.time()
        rows = benchmark(scale, model)
        gain_bic, gain_mks = report(scale, model, rows)
        print(
            f"mean gain: {gain_bic:+.2f} dB over bicubic, {gain_mks:+.2f} dB over MagicKernelSharp "
            f"({time.time() - start:.0f}s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
