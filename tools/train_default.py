"""Train Tilewise's bundled default upscaler: a small ParagonSR2 "realtime" model (x2 or x4).

The shipped files (models/README.md) were made with:

    python tools/train_default.py --scale 2 --seed 0 --threads 1
    python tools/train_default.py --scale 4 --seed 0 --threads 1 \
        --init models/tilewise_paragonsr2_realtime_x2.safetensors

Model: `ParagonSR2(variant="realtime", num_feat=16, num_groups=1, num_blocks=3)`, the upstream
`paragonsr2_realtime` layout (~16.8k parameters at x2, ~44.6k at x4). Training starts from the
upstream initial values (detail_gain 0.05, LayerScale 1e-5), or with `--init`, from every tensor
of an earlier file whose shape fits (x4 from x2: all but `up.0`). It uses **upsampler_alpha 0.0**: the
alpha is not stored in checkpoints and Tilewise loads ParagonSR2 files with 0.0, so the shipped
file computes exactly what was trained.

Training data: only photographs bundled with scikit-image (`skimage.data`, no download), under
the licences their scikit-image docstrings state:

    camera                 CC0, by the photographer (Lav Varshney)                     gray
    text                   public domain (Wikipedia "File:Corner.png")                  gray
    coins                  Brooklyn Museum Collection, "no known copyright restrictions" gray
    brick                  CC0 (CC0Textures "Bricks25")                                gray
    grass                  CC0 (DeviantArt, linolafett "Grass-01")                     gray
    gravel                 CC0 (CC0Textures "Gravel04")                                gray
    hubble_deep_field      NASA, public domain (HubbleSite release 2012-37)            RGB
    retina                 CC0 (Wikimedia Commons, Mikael Haggstrom)                   RGB
    immunohistochemistry   CMMI, "no known copyright restrictions"                     RGB

Gray images are used as RGB with three equal channels (the model is applied to gray inputs that
way too). Not used: `astronaut`, `coffee`, `chelsea`, `rocket` (held out for evaluation, see
benchmarks/default_model.py); `stereo_motorcycle`, `moon`, `page`, `colorwheel` (no licence
stated in their docstrings); `clock` (motion-blurred); `horse`, `cell` and the other non-photos.

Degradation (the classic bicubic SR benchmark recipe): each whole 8-bit image, cropped to a
multiple of the scale, is downscaled once with Pillow `Image.resize(..., Image.BICUBIC)` (which
antialiases when reducing) and stays 8-bit. Training pairs are aligned random crops of the LR
image and of the HR image (HR crop `--patch`, LR crop `--patch / scale`), crops with almost no
texture are mostly rejected (the black borders of `retina`, the sky of `hubble_deep_field`),
augmented with the 8 flips/rotations and a random channel permutation.

Optimisation: L1 loss (or Charbonnier with `--loss charbonnier`), Adam (betas 0.9, 0.99), a short
linear warm-up then cosine decay of the learning rate to 1% of `--lr`, fp32 on the CPU. The
shipped weights are an exponential moving average of the trained ones (`--ema`, 0 = off).
Everything random is seeded from `--seed` (numpy for the data, torch for the initial weights); with
the same seed, steps and thread count a run gives the same weights.

The output is a plain safetensors state dict with exactly the upstream ParagonSR2 keys; the
training recipe is written into the safetensors metadata.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    # Run as a script from a checkout: make `tilewise` importable if it is not installed.
    try:
        import tilewise  # noqa: F401
    except ImportError:  # pragma: no cover
        sys.path.insert(0, str(ROOT.parent))

from tilewise.archs.paragonsr2 import ParagonSR2  # noqa: E402

#: name -> (licence and source as stated by scikit-image's docstring, channels of the original)
TRAINING_IMAGES: dict[str, tuple[str, str]] = {
    "camera": ("CC0 by the photographer (Lav Varshney)", "gray"),
    "text": ("public domain (Wikipedia File:Corner.png)", "gray"),
    "coins": ("no known copyright restrictions (Brooklyn Museum Collection)", "gray"),
    "brick": ("CC0 (CC0Textures Bricks25)", "gray"),
    "grass": ("CC0 (DeviantArt linolafett Grass-01)", "gray"),
    "gravel": ("CC0 (CC0Textures Gravel04)", "gray"),
    "hubble_deep_field": ("public domain (NASA, HubbleSite 2012-37)", "rgb"),
    "retina": ("CC0 1.0 (Wikimedia Commons, Mikael Haggstrom)", "rgb"),
    "immunohistochemistry": ("no known copyright restrictions (CMMI)", "rgb"),
}
#: Never trained on: the evaluation photographs.
HELD_OUT = ("astronaut", "coffee", "chelsea", "rocket")

REALTIME = {"num_feat": 16, "num_groups": 1, "num_blocks": 3, "variant": "realtime", "detail_gain": 0.05}
UPSAMPLER_ALPHA = 0.0
#: A crop whose HR standard deviation (0..1 units) is below this is kept only with probability FLAT_KEEP.
FLAT_STD = 0.02
FLAT_KEEP = 0.1
WARMUP = 100


def load_rgb(name: str) -> np.ndarray:
    """(H, W, 3) uint8 of a scikit-image bundled image; gray becomes three equal channels."""
    from skimage import data

    if name in HELD_OUT:
        raise ValueError(f"{name} is held out for evaluation")
    array = np.asarray(getattr(data, name)())
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.dtype != np.uint8 or array.shape[2] != 3:
        raise ValueError(f"{name}: expected 8-bit gray or RGB, got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array)


def bicubic_pair(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """HR cropped to a multiple of `scale` and its 8-bit Pillow bicubic (antialiased) downscale."""
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    hr = np.ascontiguousarray(hr[:h, :w])
    lr = np.asarray(Image.fromarray(hr).resize((w // scale, h // scale), Image.Resampling.BICUBIC))
    return hr, lr


class PairSampler:
    """Random aligned LR/HR crops of the training images, with flips/rot90 and channel swaps."""

    def __init__(self, names: list[str], scale: int, patch: int, rng: np.random.Generator):
        if patch % scale:
            raise ValueError(f"--patch {patch} is not a multiple of the scale {scale}")
        self.scale, self.patch, self.rng = scale, patch, rng
        self.pairs = [bicubic_pair(load_rgb(name), scale) for name in names]
        # sqrt-of-area weights: the two large, mostly dark images do not dominate.
        weights = np.array([math.sqrt(hr.shape[0] * hr.shape[1]) for hr, _ in self.pairs])
        self.weights = weights / weights.sum()

    def crop(self) -> tuple[np.ndarray, np.ndarray]:
        s, lp = self.scale, self.patch // self.scale
        while True:
            hr, lr = self.pairs[self.rng.choice(len(self.pairs), p=self.weights)]
            top = int(self.rng.integers(0, lr.shape[0] - lp + 1))
            left = int(self.rng.integers(0, lr.shape[1] - lp + 1))
            lr_crop = lr[top : top + lp, left : left + lp]
            hr_crop = hr[top * s : (top + lp) * s, left * s : (left + lp) * s]
            if hr_crop.std() / 255.0 >= FLAT_STD or self.rng.random() < FLAT_KEEP:
                break
        k, flip, perm = int(self.rng.integers(4)), bool(self.rng.integers(2)), self.rng.permutation(3)
        out = []
        for image in (lr_crop, hr_crop):
            image = np.rot90(image, k)
            if flip:
                image = image[:, ::-1]
            out.append(np.ascontiguousarray(image[:, :, perm]))
        return out[0], out[1]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops = [self.crop() for _ in range(size)]
        lr = torch.from_numpy(np.stack([c[0] for c in crops])).permute(0, 3, 1, 2).float().div_(255)
        hr = torch.from_numpy(np.stack([c[1] for c in crops])).permute(0, 3, 1, 2).float().div_(255)
        return lr, hr


def psnr_y(a: np.ndarray, b: np.ndarray, border: int) -> float:
    """PSNR of the BT.601 studio-range Y channel of two uint8 RGB images, `border` px cropped."""

    def y(image: np.ndarray) -> np.ndarray:
        rgb = image.astype(np.float64) / 255.0
        return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]

    ya, yb = y(a), y(b)
    if border:
        ya, yb = ya[border:-border, border:-border], yb[border:-border, border:-border]
    mse = float(np.mean((ya - yb) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8, rounded."""
    return tensor[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


class Monitor:
    """Training-set PSNR-Y on fixed central crops (model vs Pillow bicubic), to show progress."""

    def __init__(self, names: list[str], scale: int, size: int = 192):
        self.scale, self.items = scale, []
        for name in names:
            hr, lr = bicubic_pair(load_rgb(name), scale)
            lh, lw = lr.shape[0] // 2, lr.shape[1] // 2
            n = size // scale
            lr = lr[lh - n // 2 : lh + n // 2, lw - n // 2 : lw + n // 2]
            hr = hr[(lh - n // 2) * scale : (lh + n // 2) * scale, (lw - n // 2) * scale : (lw + n // 2) * scale]
            bicubic = np.asarray(Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.Resampling.BICUBIC))
            tensor = torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1)[None].float().div(255)
            self.items.append((tensor, hr, psnr_y(bicubic, hr, scale)))

    @torch.no_grad()
    def gain(self, model: torch.nn.Module) -> tuple[float, float]:
        """(mean PSNR-Y of the model, mean gain over bicubic) in dB."""
        scores = [(psnr_y(to_uint8(model(lr)), hr, self.scale), bic) for lr, hr, bic in self.items]
        return float(np.mean([s for s, _ in scores])), float(np.mean([s - b for s, b in scores]))


def build(scale: int) -> ParagonSR2:
    return ParagonSR2(scale=scale, upsampler_alpha=UPSAMPLER_ALPHA, **REALTIME)


def init_from(model: ParagonSR2, path: Path) -> list[str]:
    """Copies every tensor of a ParagonSR2 realtime file whose shape fits (e.g. x2 body into x4)."""
    from safetensors.torch import load_file

    source = load_file(str(path))
    target = model.state_dict()
    copied = [k for k, v in source.items() if k in target and target[k].shape == v.shape and not k.startswith("base.")]
    model.load_state_dict({**target, **{k: source[k] for k in copied}})
    return copied


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=int, choices=(2, 4), required=True)
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (default 5000 at x2, 4000 at x4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="default models/tilewise_paragonsr2_realtime_x{scale}.safetensors"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (results can differ between thread counts)"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=None, help="HR crop size (default 96 at x2, 128 at x4)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--loss", choices=("l1", "charbonnier"), default="l1")
    parser.add_argument(
        "--ema", type=float, default=0.999, help="EMA decay of the shipped weights; 0 = ship the raw weights"
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="start from the matching tensors of this file (e.g. the x2 model)"
    )
    parser.add_argument("--log-every", type=int, default=250)
    args = parser.parse_args(argv)
    args.steps = args.steps or (5000 if args.scale == 2 else 4000)
    args.patch = args.patch or (96 if args.scale == 2 else 128)
    args.out = args.out or ROOT / "models" / f"tilewise_paragonsr2_realtime_x{args.scale}.safetensors"
    return args


def train(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    names = list(TRAINING_IMAGES)
    sampler = PairSampler(names, args.scale, args.patch, rng)
    monitor = Monitor(names, args.scale)

    model = build(args.scale)
    copied = init_from(model, args.init) if args.init else []
    if copied:
        print(f"initialised {len(copied)} tensors from {args.init}")
    ema = build(args.scale)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=args.lr, betas=(0.9, 0.99))

    def rate(step: int) -> float:
        if step < WARMUP:
            return (step + 1) / WARMUP
        progress = (step - WARMUP) / max(1, args.steps - WARMUP)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
    print(
        f"x{args.scale}: {sum(p.numel() for p in trainable)} trainable parameters, {args.steps} steps of "
        f"{args.batch} x {args.patch}px HR crops, lr {args.lr}, {args.loss}, seed {args.seed}, {args.threads} thread(s)"
    )
    start, running = time.time(), 0.0
    for step in range(args.steps):
        lr_batch, hr_batch = sampler.batch(args.batch)
        diff = model(lr_batch) - hr_batch
        loss = diff.abs().mean() if args.loss == "l1" else torch.sqrt(diff * diff + 1e-6).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step)) if args.ema > 0 else 0.0
            for e, p in zip(ema.parameters(), model.parameters()):
                if p.requires_grad:
                    e.lerp_(p, 1.0 - decay)
        running += loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            psnr, gain = monitor.gain(ema.eval())
            elapsed = time.time() - start
            print(
                f"step {step + 1:6d}/{args.steps}  loss {running / args.log_every:.5f}  lr "
                f"{scheduler.get_last_lr()[0]:.2e}  "
                f"train-crops PSNR-Y {psnr:.2f} dB ({gain:+.2f} vs bicubic)  {elapsed:6.0f}s",
                flush=True,
            )
            running = 0.0
    args.seconds = time.time() - start
    args.monitor = monitor.gain(ema.eval())
    return {k: v.detach().clone().contiguous() for k, v in ema.state_dict().items()}


def save(state_dict: dict[str, torch.Tensor], args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    metadata = {
        "format": "pt",
        "architecture": "ParagonSR2",
        "variant": "realtime",
        "scale": str(args.scale),
        "upsampler_alpha": str(UPSAMPLER_ALPHA),
        "licence": "MIT (Tilewise); architecture ParagonSR2 by Philip Hofmann (MIT)",
        "training_images": json.dumps({name: licence for name, (licence, _) in TRAINING_IMAGES.items()}),
        "training_data": "scikit-image bundled data (skimage.data); held out: " + ", ".join(HELD_OUT),
        "degradation": "Pillow Image.BICUBIC downscale of the whole 8-bit image (HR cropped to a multiple of the "
        "scale), 8-bit LR",
        "recipe": json.dumps(
            {
                "steps": args.steps,
                "batch": args.batch,
                "hr_patch": args.patch,
                "lr": args.lr,
                "loss": args.loss,
                "optimiser": "Adam(0.9, 0.99)",
                "schedule": f"warmup {WARMUP} + cosine to 1%",
                "ema": args.ema,
                "seed": args.seed,
                "threads": args.threads,
                "init": args.init.name if args.init else "scratch",
                "augment": "8 flips/rot90, channel permutation",
            }
        ),
        "command": "python tools/train_default.py " + " ".join(sys.argv[1:]),
        "train_seconds": f"{args.seconds:.0f}",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(args.out), metadata=metadata)
    args.out.chmod(0o644)  # safetensors writes 0600; this is package data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state_dict = train(args)
    save(state_dict, args)
    psnr, gain = args.monitor
    print(
        f"saved {args.out} ({args.out.stat().st_size} bytes) after {args.seconds:.0f}s; "
        f"train-crops PSNR-Y {psnr:.2f} dB ({gain:+.2f} dB vs bicubic)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
