"""Tiling cost and exactness: Tilewise's crop-merge tiler vs an untiled forward vs naive tiling.

For a Compact and an RRDB (ESRGAN) model with seeded weights, on a real photograph bundled with
scikit-image, prints (same process, same precision, best of `--repeats` runs each):
  (a) time of Tilewise's default run, and of a forced 512-px tiling, over one untiled forward;
  (b) the same ratio for the naive scheme many hosts use: 512-px tiles, 32-px linear feathering
      on every tile edge, one tile at a time;
  (c) each scheme's max abs difference from the untiled output;
  (d) the context margin (`pad`) Tilewise chose, and whether it is the exact receptive radius.
Target for (a): <= 1.05.

    python benchmarks/tiling.py [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data
from spandrel import ImageModelDescriptor
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN
from tilewise.engine import TileSettings, describe_state_dict, run_tiled
from tilewise.engine.compute.precision import forward_fn
from tilewise.engine.plan.receptive import model_context

#: The ParagonSR2 reference test vectors the tests use (bundled; `$PARAGONSR2_FIXTURES` names the full set).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
PARAGONSR2_FIXTURES = __import__("reference_vectors").folder()


def seeded(model: torch.nn.Module, seed: int) -> ImageModelDescriptor:
    """Seeded weights, rescaled so that outputs look like images (mean ~0.45, not saturated)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            spread = (
                parameter.std() if parameter.numel() > 1 else parameter.new_zeros(())
            )  # one element has no std (NaN)
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02 * spread.clamp_min(1e-3))
        descriptor = describe_state_dict(model.state_dict())
        probe = torch.rand(1, 3, 32, 32, generator=generator)
        out = descriptor.model(probe)
        last = [m for m in descriptor.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        gain = 0.15 / out.std().clamp_min(1e-6)
        last.weight.mul_(gain)
        if last.bias is not None:
            last.bias.mul_(gain).add_(0.45 - (out.mean() * gain).item())
    return descriptor


def _light_transformer(kind: str) -> torch.nn.Module:
    """A light x2 SwinIR or DAT (6+6 blocks, 60 channels, pixel-shuffle-direct)."""
    from spandrel.architectures.DAT import DAT
    from spandrel.architectures.SwinIR import SwinIR

    common = dict(upscale=2, in_chans=3, img_size=64, img_range=1.0, embed_dim=60, num_heads=[6, 6])
    common.update(upsampler="pixelshuffledirect", resi_connection="1conv")
    if kind == "swinir":
        return SwinIR(window_size=8, depths=[6, 6], mlp_ratio=2, **common)
    return DAT(depth=[6, 6], expansion_factor=2, split_size=[8, 16], **common)


def benchmark_model(name: str) -> ImageModelDescriptor:
    """The seeded models the benchmarks share, real architecture classes in the shapes users run:
    `compact` (realesr-animevideov3: 64 x 16, x4), `span` (48 features, x4), `rrdb<N>` (RealESRGAN
    x4plus's RRDB with N blocks: 23 = x4plus, 6 = x4plus anime), `swinir` and `dat` (light x2),
    `paragonsr2photo` (the photo variant, x2). One seed per architecture, set before the
    constructor too, so every benchmark and process measures the same weights."""
    from spandrel.architectures.SPAN import SPAN
    from tilewise.archs.paragonsr2 import ParagonSR2

    if name.startswith("rrdb") and name[4:].isdigit():
        with torch.random.fork_rng():  # the constructor's own initialisation draws from the global RNG
            torch.manual_seed(1)
            return seeded(ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=int(name[4:]), scale=4), 1)
    makers = {
        "compact": lambda: Compact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=4, act_type="prelu"),
        "span": lambda: SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=4),
        "swinir": lambda: _light_transformer("swinir"),
        "dat": lambda: _light_transformer("dat"),
        "paragonsr2photo": lambda: ParagonSR2(scale=2, variant="photo"),
    }
    seeds = {"compact": 0, "span": 2, "swinir": 3, "dat": 5, "paragonsr2photo": 6}
    if name not in makers:
        raise ValueError(f"unknown benchmark model '{name}'; choose from {', '.join(makers)} or rrdb<blocks>")
    with torch.random.fork_rng():  # the same weights in every process, the caller's RNG untouched
        torch.manual_seed(seeds[name])
        return seeded(makers[name](), seeds[name])


def naive_tiled(
    descriptor: ImageModelDescriptor, image: torch.Tensor, tile: int = 512, overlap: int = 32
) -> torch.Tensor:
    """One tile at a time, tiles stepping by tile - overlap, linear feather on every edge."""
    scale = descriptor.scale
    _, channels, height, width = image.shape
    out = torch.zeros(1, descriptor.output_channels, height * scale, width * scale)
    weight = torch.zeros(1, 1, height * scale, width * scale)
    step = tile - overlap
    ys = sorted({min(y, max(height - tile, 0)) for y in range(0, height, step)})
    xs = sorted({min(x, max(width - tile, 0)) for x in range(0, width, step)})
    feather = overlap * scale
    for y in ys:
        for x in xs:
            patch = image[..., y : y + tile, x : x + tile]
            with torch.no_grad():
                result = descriptor.model(patch).clamp(0, 1)
            h, w = result.shape[-2:]
            mask = torch.ones(1, 1, h, w)
            for t in range(min(feather, h // 2, w // 2)):
                ramp = (t + 1) / feather
                mask[..., t, :] *= ramp
                mask[..., h - 1 - t, :] *= ramp
                mask[..., :, t] *= ramp
                mask[..., :, w - 1 - t] *= ramp
            out[..., y * scale : y * scale + h, x * scale : x * scale + w] += result * mask
            weight[..., y * scale : y * scale + h, x * scale : x * scale + w] += mask
    return out / weight


def best_time(fn, repeats: int) -> tuple[float, torch.Tensor]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench(name: str, descriptor: ImageModelDescriptor, image: torch.Tensor, repeats: int) -> None:
    start = time.perf_counter()
    context = model_context(descriptor, forward_fn(descriptor, descriptor.model), torch.device("cpu"))
    probe_time = time.perf_counter() - start
    untiled_time, untiled = best_time(lambda: run_tiled(descriptor, image, settings=TileSettings(tile=-1)), repeats)
    schemes = {
        "tilewise default (auto tile)": lambda: run_tiled(descriptor, image, settings=TileSettings()),
        "tilewise 512-px tiles": lambda: run_tiled(descriptor, image, settings=TileSettings(tile=512)),
        "naive 512 px, 32 px feather": lambda: naive_tiled(descriptor, image),
    }
    print(
        f"\n{name}: {sum(p.numel() for p in descriptor.model.parameters()):,} params, x{descriptor.scale}, "
        f"input {image.shape[-1]}x{image.shape[-2]}"
    )
    print(
        f"  (d) pad = {context.pad} px ({'exact receptive radius' if context.exact else 'effective radius'}; probe "
        f"took {probe_time:.2f} s, once per model)"
    )
    print(f"  untiled forward: {untiled_time:.2f} s")
    print(f"  {'scheme':<32} {'time / untiled':>15} {'max abs diff':>14}")
    for label, fn in schemes.items():
        seconds, result = best_time(fn, repeats)
        print(f"  {label:<32} {seconds / untiled_time:>15.3f} {(result - untiled).abs().max().item():>14.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    photo = data.hubble_deep_field()  # 872 x 1000 RGB photograph
    image = torch.from_numpy(np.ascontiguousarray(photo.transpose(2, 0, 1))).float().div(255)[None]
    print(
        f"photo: skimage.data.hubble_deep_field, {image.shape[-1]}x{image.shape[-2]}, fp32, CPU, {args.threads} threads"
    )
    torch.manual_seed(0)
    compact = seeded(Compact(num_in_ch=3, num_out_ch=3, num_feat=48, num_conv=12, upscale=2, act_type="prelu"), 0)
    bench("Compact", compact, image, args.repeats)
    rrdb = seeded(ESRGAN(in_nc=3, out_nc=3, num_filters=32, num_blocks=4, scale=2), 1)
    bench("ESRGAN (RRDB)", rrdb, image[..., :400, :500].contiguous(), args.repeats)


if __name__ == "__main__":
    main()
