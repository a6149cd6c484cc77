"""Tiny, real checkpoint files for tests.

This is a test *helper* module (it holds no tests).  It builds models from
spandrel's own architecture classes with seeded random weights, so that the
checkpoints written by :func:`save_checkpoint` are detected and loaded by
``spandrel.ModelLoader`` exactly like files downloaded from the wild, while
staying small enough that a forward pass on a 32x32 image takes milliseconds
on a CPU.

Every model is kept as small as spandrel's hyper-parameter inference allows.
Random networks do not naturally produce images, so after construction each
model's final layer is *calibrated* (a deterministic rescale of its weight
plus a bias shift, computed on a fixed photo crop) so that its output
has a sane mean and contrast: the output is not clamped away by spandrel's
``clamp(0, 1)`` and varies enough across the image for tiled-vs-untiled
comparisons to be meaningful.

Public API
----------
``ZOO``                 name -> :class:`ZooEntry`
``ZooEntry.build``      ``build(seed, scale=None) -> torch.nn.Module``
``WRAPPERS``            checkpoint wrapper forms met in the wild
``wrap``                ``wrap(state_dict, wrapper) -> dict``
``save_checkpoint``     write ``.safetensors`` / ``.pth`` / ``.pt`` / ``.ckpt`` / ``.bin``
``make_photo_crop``     natural-image test input from scikit-image's bundled photos
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from spandrel.architectures.Compact import Compact  # SRVGGNetCompact
from spandrel.architectures.DAT import DAT
from spandrel.architectures.ESRGAN import ESRGAN  # RRDBNet
from spandrel.architectures.HAT import HAT
from spandrel.architectures.NAFNet import NAFNet
from spandrel.architectures.OmniSR import OmniSR
from spandrel.architectures.RealCUGAN import UpCunet2x, UpCunet3x, UpCunet4x
from spandrel.architectures.SCUNet import SCUNet
from spandrel.architectures.SPAN import SPAN
from spandrel.architectures.SwinIR import SwinIR
from torch import nn

__all__ = [
    "ZOO",
    "ZooEntry",
    "WRAPPERS",
    "NESTED_WRAPPERS",
    "PREFIX_WRAPPERS",
    "SPANDREL_UNWRAPS",
    "TORCH_EXTENSIONS",
    "PHOTOS",
    "wrap",
    "save_checkpoint",
    "make_photo_crop",
    "output_in_range_fraction",
    "entries",
]

# --------------------------------------------------------------------------
# natural images
# --------------------------------------------------------------------------

PHOTOS = ("astronaut", "chelsea", "coffee")


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> torch.Tensor:
    """(3, H, W) float32 tensor in [0, 1] of a photo bundled with scikit-image."""
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose one of {PHOTOS}")
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:  # pragma: no cover - all listed photos are RGB
        arr = np.stack([arr] * 3, axis=-1)
    t = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1)
    return (t.to(torch.float32) / 255.0).contiguous()


def make_photo_crop(
    size: int | tuple[int, int] = (32, 32),
    seed: int = 0,
    photo: str = "chelsea",
) -> torch.Tensor:
    """A ``(1, 3, h, w)`` float32 crop in [0, 1] of a real photograph.

    The crop position is drawn from ``numpy.random.default_rng(seed)``, so the
    same ``(size, seed, photo)`` always gives the same pixels.  Photos come
    with the scikit-image wheel: ``chelsea`` (300x451, the default; virtually
    no pixel at exactly 0 or 1), ``coffee`` (400x600) and ``astronaut``
    (512x512; note ~11% of its pixels are saturated, e.g. the black
    background, so small astronaut crops can be flat and mostly 0).  Crops
    larger than the photo are taken from a bilinearly enlarged copy.
    """
    if isinstance(size, int):
        size = (size, size)
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    img = _photo(photo)
    _, ph, pw = img.shape
    if h > ph or w > pw:
        f = max(h / ph, w / pw)
        nh, nw = max(h, math.ceil(ph * f)), max(w, math.ceil(pw * f))
        img = torch.nn.functional.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False)[0].clamp(
            0, 1
        )
        _, ph, pw = img.shape
    rng = np.random.default_rng(seed)
    top = int(rng.integers(0, ph - h + 1))
    left = int(rng.integers(0, pw - w + 1))
    return img[None, :, top : top + h, left : left + w].clone().contiguous()


def output_in_range_fraction(y: torch.Tensor) -> float:
    """Fraction of values strictly inside (0, 1), i.e. not clamped by spandrel."""
    return ((y > 0) & (y < 1)).float().mean().item()


# --------------------------------------------------------------------------
# weight randomisation / calibration
# --------------------------------------------------------------------------


def _perturb(model: nn.Module, gen: torch.Generator, rel: float, floor: float) -> None:
    """Add seeded gaussian noise to every floating-point parameter.

    The noise std is ``rel * std(p)`` (or ``floor`` for constant parameters,
    e.g. zero-initialised gates).  Buffers (running stats, indices) are left
    alone so nothing becomes invalid (e.g. a negative running_var).
    """
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point() or p.numel() == 0:
                continue
            s = float(p.std()) if p.numel() > 1 else 0.0
            s = rel * s if s > 0 else floor
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * s)


def _round_sig(x: float, sig: int = 3) -> float:
    if x == 0 or not math.isfinite(x):
        return 0.0
    return round(x, sig - 1 - int(math.floor(math.log10(abs(x)))))


_CALIBRATION_SIZE = 48  # > SCUNet's 40 px minimum, >= RealCUGAN's 32


def _calibrate(
    model: nn.Module,
    head: nn.Module,
    *,
    target_std: float,
    residual: bool = False,
    fixed_weight: torch.Tensor | None = None,
    shift: Callable[[float], None] | None = None,
) -> None:
    """Rescale the final layer ``head`` so the model output looks like an image.

    The model output ``y`` is affine in the output of ``head`` (a conv whose
    output only passes through pixel-shuffle / crop / ``x / range + mean`` /
    skip additions).  With ``W = fixed + k * W0``, ``b = k * b0`` and a shift
    knob ``d`` (by default added to ``head``'s bias):

        y(k, d) = R + k * P + d * Q

    where ``R`` (k = d = 0), ``P`` and ``Q`` are measured with three forward
    passes on a fixed photo crop.  ``k`` is chosen so that the learned part
    ``k * P`` has std ``target_std``; ``d`` so that mean(y) is 0.45, or, for
    ``residual`` models (``R`` already is an image, e.g. the input), so that
    the learned residual has zero mean.  ``k`` and ``d`` are rounded to 3
    significant digits so that tiny run-to-run float differences (thread
    counts) do not change the weights.
    """
    x = make_photo_crop((_CALIBRATION_SIZE, _CALIBRATION_SIZE), seed=20240, photo="chelsea")
    w0 = head.weight.detach().clone()
    if fixed_weight is not None:
        w0 = w0 - fixed_weight
    else:
        fixed_weight = torch.zeros_like(w0)
    b0 = head.bias.detach().clone() if head.bias is not None else None

    if shift is None and b0 is not None:

        def shift(d: float) -> None:
            head.bias.add_(d)

    def setup(k: float, d: float) -> None:
        with torch.no_grad():
            head.weight.copy_(fixed_weight + k * w0)
            if b0 is not None:
                head.bias.copy_(k * b0)
            if shift is not None:
                shift(d)

    def run(k: float, d: float) -> torch.Tensor:
        setup(k, d)
        with torch.no_grad():
            return model(x).double()

    model.eval()
    r = run(0.0, 0.0)
    p = run(1.0, 0.0) - r
    q = run(0.0, 1.0) - r if shift is not None else None

    p_std = float(p.std())
    k = _round_sig(target_std / p_std) if p_std > 1e-12 else 1.0
    d = 0.0
    if q is not None and abs(float(q.mean())) > 1e-12:
        target_mean = float(r.mean()) if residual else 0.45
        d = _round_sig((target_mean - float(r.mean()) - k * float(p.mean())) / float(q.mean()))
    setup(k, d)


# --------------------------------------------------------------------------
# the zoo
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    """One tiny model family.

    ``build(seed, scale)`` returns an eval-mode ``nn.Module`` (a spandrel
    architecture class) whose ``state_dict()`` spandrel detects as
    ``arch_id`` with ``expected_scale(scale)``, ``in_channels`` and
    ``out_channels``.
    """

    name: str
    arch_id: str
    scale: int  # default scale
    scales: tuple[int, ...]  # scales build() accepts
    in_channels: int
    out_channels: int
    hparams: Mapping[str, Any]  # constructor kwargs (documentation; scale-dependent ones omitted)
    min_size: int  # spandrel's SizeRequirements.minimum for this arch (0 = none)
    # Receptive field: diameter in input pixels of the region that can influence
    # one output pixel (measured exactly with float64 single-pixel probes);
    # None = global (channel attention / global pooling / image-level padding
    # make every output pixel depend on every input pixel).
    receptive_field: int | None
    # For local models: tile origins must be multiples of this for a tile's
    # interior output to equal the full-image output (window-attention grid).
    # None for global models (no tiling is exact for them).
    alignment: int | None
    notes: str
    _factory: Callable[[int], nn.Module] = field(repr=False)
    _finish: Callable[[nn.Module, torch.Generator, int], None] | None = field(default=None, repr=False)

    @property
    def deep(self) -> bool:
        """True if the receptive field exceeds ~30 px (or is global)."""
        return self.receptive_field is None or self.receptive_field > 30

    def expected_scale(self, scale: int | None = None) -> int:
        return self.scale if scale is None else int(scale)

    def build(self, seed: int, scale: int | None = None) -> nn.Module:
        scale = self.expected_scale(scale)
        if scale not in self.scales:
            raise ValueError(f"{self.name}: scale {scale} not supported; choose from {self.scales}")
        # fork the global RNG so building a model has no side effects on the caller
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self._factory(scale)
            model.eval()
            if self._finish is not None:
                gen = torch.Generator().manual_seed(seed * 7919 + 17)
                self._finish(model, gen, scale)
        model.eval()
        return model

    def state_dict(self, seed: int, scale: int | None = None) -> dict[str, torch.Tensor]:
        return _clean_state_dict(self.build(seed, scale).state_dict())

    def save(
        self,
        path: str | Path,
        seed: int = 0,
        scale: int | None = None,
        wrapper: str = "plain",
    ) -> Path:
        """Build with ``seed``/``scale`` and :func:`save_checkpoint` it to ``path``."""
        return save_checkpoint(self.build(seed, scale), path, wrapper=wrapper)


def _compact(scale: int) -> nn.Module:
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=2, upscale=scale)


def _esrgan(scale: int) -> nn.Module:
    return ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=scale)


def _esrgan_finish(model: nn.Module, gen: torch.Generator, scale: int) -> None:
    # no input skip: output of a random RRDBNet is ~ -0.05 +- 0.02 (all clamped)
    _calibrate(model, model.model[-1], target_std=0.15)


def _span(scale: int) -> nn.Module:
    return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=scale)


def _span_finish(model: nn.Module, gen: torch.Generator, scale: int) -> None:
    # img_range=255 drives every SPAB gate into saturation (raw output std ~ 9).
    # Conv3XC is linear in (sk, conv[2]): scaling both scales conv_1's output.
    c1 = model.conv_1
    with torch.no_grad():
        for mod in (c1.sk, c1.conv[2]):
            mod.weight.mul_(SPAN_INPUT_GAIN)
            mod.bias.mul_(SPAN_INPUT_GAIN)
    _calibrate(model, model.upsampler[0], target_std=0.12)
    # every eval forward re-derives eval_conv from (sk, conv); do it once more
    # in float64 so the stored eval_conv weights do not depend on thread count
    for mod in model.modules():
        if hasattr(mod, "update_params") and hasattr(mod, "eval_conv"):
            mod.double()
            mod.update_params()
            mod.float()


SPAN_INPUT_GAIN = 0.02


def _swinir(scale: int) -> nn.Module:
    kw: dict[str, Any] = dict(
        img_size=16,
        in_chans=3,
        embed_dim=12,
        depths=[2],
        num_heads=[2],
        window_size=4,
        mlp_ratio=2.0,
        resi_connection="1conv",
    )
    if scale == 1:  # denoise / JPEG variant: residual, conv_last
        return SwinIR(upscale=1, upsampler="", **kw)
    return SwinIR(upscale=scale, upsampler="pixelshuffledirect", **kw)


def _swinir_finish(model: nn.Module, gen: torch.Generator, scale: int) -> None:
    if scale == 1:
        _calibrate(model, model.conv_last, target_std=0.06, residual=True)
    else:
        _calibrate(model, model.upsample[0], target_std=0.15)


def _dat(scale: int) -> nn.Module:
    return DAT(
        img_size=16,
        in_chans=3,
        embed_dim=32,
        split_size=[2, 4],
        depth=[2],
        num_heads=[2],
        expansion_factor=2.0,
        upscale=scale,
        resi_connection="1conv",
        upsampler="pixelshuffle",
    )


def _hat(scale: int) -> nn.Module:
    return HAT(
        img_size=16,
        in_chans=3,
        embed_dim=16,
        depths=[2],
        num_heads=[2],
        window_size=4,
        compress_ratio=4,
        squeeze_factor=8,
        overlap_ratio=0.5,
        mlp_ratio=2.0,
        upscale=scale,
        num_feat=16,
        resi_connection="1conv",
    )


def _conv_last_finish(model: nn.Module, gen: torch.Generator, scale: int) -> None:
    _calibrate(model, model.conv_last, target_std=0.15)


def _scunet(scale: int) -> nn.Module:
    # dim=64 is the minimum: trans_dim = dim // 2 must be >= head_dim (32).
    return SCUNet(in_nc=3, config=[1, 1, 1, 1, 1, 1, 1], dim=64, input_resolution=64)


def _identity_kernel(out_ch: int, in_ch: int, k: int, n: int) -> torch.Tensor:
    w = torch.zeros(out_ch, in_ch, k, k)
    for c in range(n):
        w[c, c, k // 2, k // 2] = 1.0
    return w


def _scunet_finish(model: nn.Module, gen: torch.Generator, scale: int) -> None:
    # SCUNet has no input skip and no biases in head/tail. Give it one: the
    # first 3 head channels copy the RGB input, the tail maps them back.
    # The decoder's own output is zeroed on those 3 channels so that
    #   y = input + k * W_rand(features)   exactly.
    head, tail = model.m_head[0], model.m_tail[0]
    up_conv, up_block = model.m_up1[0], model.m_up1[-1]
    with torch.no_grad():
        head.weight[:3] = _identity_kernel(3, head.weight.shape[1], 3, 3)
        up_conv.weight[:, :3] = 0.0  # ConvTranspose2d weight: (in, out, k, k)
        up_block.conv1_2.weight[:3] = 0.0
        up_block.conv1_2.bias[:3] = 0.0

    def shift(d: float) -> None:  # a constant on the 3 identity channels
        up_block.conv1_2.bias[:3] = d

    fixed = _identity_kernel(*tail.weight.shape[:2], 3, 3)
    with torch.no_grad():
        tail.weight.add_(fixed)
    _calibrate(model, tail, target_std=0.06, residual=True, fixed_weight=fixed, shift=shift)


def _nafnet(scale: int) -> nn.Module:
    return NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1])


def _nafnet_finish(model: nn.Module, gen: torch.Generator, scale: int) -> None:
    # beta/gamma are zero-initialised: the untouched net is the identity.
    _perturb(model, gen, rel=0.1, floor=0.5)
    _calibrate(model, model.ending, target_std=0.06, residual=True)


def _realcugan(scale: int) -> nn.Module:
    cls = {2: UpCunet2x, 3: UpCunet3x, 4: UpCunet4x}[scale]
    return cls(in_channels=3, out_channels=3, pro=False)


def _realcugan_finish(model: nn.Module, gen: torch.Generator, scale: int) -> None:
    last = model.conv_final if scale == 4 else model.unet2.conv_bottom
    _calibrate(model, last, target_std=0.15)


def _omnisr(scale: int) -> nn.Module:
    return OmniSR(
        num_in_ch=3,
        num_out_ch=3,
        num_feat=16,
        block_num=1,
        pe=True,
        window_size=4,
        res_num=1,
        up_scale=scale,
        bias=True,
    )


def _omnisr_finish(model: nn.Module, gen: torch.Generator, scale: int) -> None:
    _calibrate(model, model.up[0], target_std=0.15)


ZOO: dict[str, ZooEntry] = {}


def _add(entry: ZooEntry) -> None:
    ZOO[entry.name] = entry


_add(
    ZooEntry(
        name="Compact",
        arch_id="Compact",
        scale=4,
        scales=(1, 2, 3, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(num_feat=16, num_conv=2, act_type="prelu"),
        min_size=0,
        receptive_field=9,
        alignment=1,
        notes="SRVGGNetCompact: 4 3x3 convs + nearest-upsampled input skip; default init "
        "is already image-like (no calibration)",
        _factory=_compact,
    )
)
_add(
    ZooEntry(
        name="ESRGAN",
        arch_id="ESRGAN",
        scale=4,
        scales=(1, 2, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(num_filters=16, num_blocks=1, gc=32, plus=False, shuffle_factor=None),
        min_size=2,
        receptive_field=38,
        alignment=1,
        notes="RRDBNet with old-arch keys (model.0..., model.1.sub.0.RDB1.conv1.0...); "
        "17 LR 3x3 convs; no input skip -> last conv calibrated; influence beyond "
        "~11 px radius is < 1e-9",
        _factory=_esrgan,
        _finish=_esrgan_finish,
    )
)
_add(
    ZooEntry(
        name="ESRGAN-2x",
        arch_id="ESRGAN",
        scale=2,
        scales=(1, 2, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(num_filters=16, num_blocks=1, gc=32, plus=False, shuffle_factor=None),
        min_size=2,
        receptive_field=38,
        alignment=1,
        notes="ESRGAN entry with default scale 2 (one upconv stage)",
        _factory=_esrgan,
        _finish=_esrgan_finish,
    )
)
_add(
    ZooEntry(
        name="SPAN",
        arch_id="SPAN",
        scale=4,
        scales=(1, 2, 3, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(feature_channels=16, norm=True, img_range=255.0, bias=True),
        min_size=0,
        receptive_field=41,
        alignment=1,
        notes="20 3x3 convs on the longest path (Conv3XC re-parameterised to eval_conv at "
        "every eval forward); conv_1 output scaled by SPAN_INPUT_GAIN; saturated "
        "sigmoid gates make the measured support smaller (~36 px)",
        _factory=_span,
        _finish=_span_finish,
    )
)
_add(
    ZooEntry(
        name="SwinIR",
        arch_id="SwinIR",
        scale=4,
        scales=(1, 2, 3, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(
            embed_dim=12,
            depths=[2],
            num_heads=[2],
            window_size=4,
            mlp_ratio=2.0,
            img_size=16,
            resi_connection="1conv",
            upsampler="pixelshuffledirect (scale 1: '' = residual denoiser)",
        ),
        min_size=16,
        receptive_field=19,
        alignment=4,
        notes="(shifted) window attention anchored at the image origin, input reflect-padded "
        "to a multiple of 4: translation-equivariant only in steps of 4 px",
        _factory=_swinir,
        _finish=_swinir_finish,
    )
)
_add(
    ZooEntry(
        name="DAT",
        arch_id="DAT",
        scale=4,
        scales=(2, 3, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(
            embed_dim=32,
            depth=[2],
            num_heads=[2],
            split_size=[2, 4],
            expansion_factor=2.0,
            upsampler="pixelshuffle",
            num_feat=64,
        ),
        min_size=16,
        receptive_field=None,
        alignment=None,
        notes="channel self-attention over all pixels + global avg-pool interaction: "
        "global; embed_dim >= 32 avoids zero-sized DynamicPosBias layers",
        _factory=_dat,
        _finish=_conv_last_finish,
    )
)
_add(
    ZooEntry(
        name="HAT",
        arch_id="HAT",
        scale=4,
        scales=(2, 3, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(
            embed_dim=16,
            depths=[2],
            num_heads=[2],
            window_size=4,
            compress_ratio=4,
            squeeze_factor=8,
            overlap_ratio=0.5,
            mlp_ratio=2.0,
            num_feat=16,
            conv_scale=0.01,
        ),
        min_size=16,
        receptive_field=None,
        alignment=None,
        notes="CAB channel attention (global avg-pool): global, but damped by "
        "conv_scale=0.01 (a 0.5 change of one pixel moves outputs > 12 px away by ~1e-8)",
        _factory=_hat,
        _finish=_conv_last_finish,
    )
)
_add(
    ZooEntry(
        name="SCUNet",
        arch_id="SCUNet",
        scale=1,
        scales=(1,),
        in_channels=3,
        out_channels=3,
        hparams=dict(dim=64, config=[1, 1, 1, 1, 1, 1, 1], input_resolution=64, head_dim=32, window_size=8),
        min_size=40,
        receptive_field=None,
        alignment=None,
        notes="dim=64 is the minimum (head_dim 32 is fixed); pads the input to a multiple "
        "of 64 with reflect (so raw inputs must be > 32 px); 3 downsamplings + window 8 "
        "at 1/8 res: global; an identity path is injected via m_head/m_tail",
        _factory=_scunet,
        _finish=_scunet_finish,
    )
)
_add(
    ZooEntry(
        name="NAFNet",
        arch_id="NAFNet",
        scale=1,
        scales=(1,),
        in_channels=3,
        out_channels=3,
        hparams=dict(width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]),
        min_size=0,
        receptive_field=None,
        alignment=None,
        notes="simplified channel attention (global avg-pool): global; zero-initialised "
        "beta/gamma (identity net) perturbed with seeded noise",
        _factory=_nafnet,
        _finish=_nafnet_finish,
    )
)
_add(
    ZooEntry(
        name="RealCUGAN",
        arch_id="RealCUGAN",
        scale=2,
        scales=(2, 3, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(variant="UpCunet2x (scale 3: UpCunet3x, 4: UpCunet4x)", pro=False),
        min_size=32,
        receptive_field=None,
        alignment=None,
        notes="fixed-size architecture (nothing to shrink; ~1.3M params); SE blocks: global",
        _factory=_realcugan,
        _finish=_realcugan_finish,
    )
)
_add(
    ZooEntry(
        name="OmniSR",
        arch_id="OmniSR",
        scale=4,
        scales=(1, 2, 3, 4),
        in_channels=3,
        out_channels=3,
        hparams=dict(num_feat=16, block_num=1, res_num=1, window_size=4, pe=True, bias=True),
        min_size=16,
        receptive_field=None,
        alignment=None,
        notes="squeeze-excitation + ESA (max-pool 7/3 on half res) + window/grid attention "
        "over a constant-padded input: global, with a strong far field (a 0.5 change of "
        "one pixel moves outputs > 32 px away by ~1e-3)",
        _factory=_omnisr,
        _finish=_omnisr_finish,
    )
)


# --------------------------------------------------------------------------
# checkpoint wrappers and saving
# --------------------------------------------------------------------------

#: wrappers that nest the state dict under one key: ``{key: state_dict}``
NESTED_WRAPPERS: dict[str, str] = {
    "params_ema": "params_ema",  # BasicSR / Real-ESRGAN releases
    "params": "params",  # BasicSR without EMA
    "state_dict": "state_dict",  # Lightning / generic trainers
    "model": "model",
    "net": "net",
}
#: wrappers that prefix every key
PREFIX_WRAPPERS: dict[str, str] = {
    "module.": "module.",  # nn.DataParallel / DDP
    "netG.": "netG.",  # GAN trainers
    "_orig_mod.": "_orig_mod.",  # torch.compile (spandrel 0.4.2 does NOT strip it)
    "module._orig_mod.": "module._orig_mod.",  # DDP around torch.compile
}
#: every wrapper form, ``"plain"`` first
WRAPPERS: tuple[str, ...] = ("plain", *NESTED_WRAPPERS, *PREFIX_WRAPPERS)
#: wrappers that spandrel 0.4.2's canonicalize_state_dict undoes
SPANDREL_UNWRAPS: frozenset[str] = frozenset(WRAPPERS) - {"_orig_mod.", "module._orig_mod."}


def _clean_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Detached, CPU, contiguous tensors; no two entries share memory."""
    out: dict[str, Any] = OrderedDict()
    seen: set[tuple[int, int]] = set()
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().to("cpu")
            if not t.is_contiguous():
                t = t.contiguous()
            storage = t.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if t.numel() > 0 and (
                key in seen  # shares memory with an earlier entry: safetensors refuses
                or t.storage_offset() != 0
                or storage.nbytes() != t.numel() * t.element_size()  # view of a bigger buffer
            ):
                t = t.clone()
                key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if t.numel() > 0:
                seen.add(key)
            out[k] = t
        else:
            out[k] = v
    return out


def wrap(state_dict: Mapping[str, Any], wrapper: str = "plain") -> dict[str, Any]:
    """Return ``state_dict`` in one of the :data:`WRAPPERS` forms."""
    sd = OrderedDict(state_dict)
    if wrapper == "plain":
        return sd
    if wrapper in NESTED_WRAPPERS:
        return {NESTED_WRAPPERS[wrapper]: sd}
    if wrapper in PREFIX_WRAPPERS:
        prefix = PREFIX_WRAPPERS[wrapper]
        return OrderedDict((prefix + k, v) for k, v in sd.items())
    raise ValueError(f"unknown wrapper {wrapper!r}; choose from {WRAPPERS}")


TORCH_EXTENSIONS = (".pth", ".pt", ".ckpt", ".bin")


def save_checkpoint(
    model_or_state_dict: nn.Module | Mapping[str, Any],
    path: str | Path,
    wrapper: str = "plain",
) -> Path:
    """Write a checkpoint; the format follows the file extension.

    ``.safetensors`` uses ``safetensors.torch.save_file`` and supports only the
    flat wrappers (``"plain"`` and the key-prefix ones) -- a nested wrapper
    raises ``ValueError``.  ``.pth``/``.pt``/``.ckpt``/``.bin`` use
    ``torch.save``.  (spandrel 0.4.2 itself cannot open ``.bin`` files.)
    """
    path = Path(path)
    if isinstance(model_or_state_dict, nn.Module):
        sd = model_or_state_dict.state_dict()
    else:
        sd = model_or_state_dict
    sd = _clean_state_dict(sd)
    ext = path.suffix.lower()
    if ext == ".safetensors":
        if wrapper != "plain" and wrapper not in PREFIX_WRAPPERS:
            if wrapper in NESTED_WRAPPERS:
                raise ValueError(
                    f"safetensors files cannot nest dicts: wrapper {wrapper!r} is only available for {TORCH_EXTENSIONS}"
                )
            raise ValueError(f"unknown wrapper {wrapper!r}; choose from {WRAPPERS}")
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"safetensors can only store tensors; offending keys: {bad[:5]}")
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(dict(wrap(sd, wrapper)), str(path), metadata={"format": "pt"})
    elif ext in TORCH_EXTENSIONS:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(wrap(sd, wrapper), path)
    else:
        raise ValueError(f"unsupported checkpoint extension {ext!r}; use .safetensors or one of {TORCH_EXTENSIONS}")
    return path


def entries(names: Iterable[str] | None = None) -> list[ZooEntry]:
    """The zoo entries (all, or the named ones) in a stable order."""
    return [ZOO[n] for n in (names if names is not None else ZOO)]
