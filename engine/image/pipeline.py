"""`upscale`: the one function every host calls for still images.

image (B, C, H, W) float in [0, 1], C in 1..4  ->  channels matched to the model  ->  the model
applied as many times as the target size needs, tile by tile  ->  antialiased resize to the
exact target  ->  the image's own channel layout again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor

from ..choices import ALPHA_MODES, SCALE_MODES, AlphaMode
from ..compute import devices as devices_
from ..compute.precision import resolve_device, resolve_dtype
from ..errors import ImageError
from ..plan.planner import TileSettings, plan_run, wrap_margin
from ..run.runner import CancelFn, ProgressFn, run_tiled
from .colour import luma, rgb_to_ycbcr, ycbcr_to_rgb
from .resize import FILTERS, resize

#: Model passes allowed to reach a target (a 2x model reaches 16x); beyond, the last step resizes.
MAX_PASSES = 4


@dataclass(frozen=True)
class ScaleTarget:
    """What output size to produce.

    native: the model's scale. factor: `factor` times the input. size: exactly `width` x `height`
    (one of them may be omitted: the aspect ratio gives the other). fit: as large as fits inside
    `width` x `height` at the input's aspect ratio (fit inside N x N is longest side N, to the
    pixel). longest: the longer side becomes `longest`. megapixels: about `megapixels` million
    pixels at the input's aspect ratio.
    """

    mode: str = "native"
    factor: float | None = None
    width: int | None = None
    height: int | None = None
    longest: int | None = None
    megapixels: float | None = None

    def output_size(self, height: int, width: int, native: int) -> tuple[int, int]:
        if self.mode == "native":
            return height * native, width * native
        if self.mode == "factor":
            factor = _positive(self.factor, "scale factor")
            return max(1, round(height * factor)), max(1, round(width * factor))
        if self.mode == "size":
            if not self.width and not self.height:
                raise ValueError("give a target width, a height, or both")
            if self.width and self.height:
                return int(_positive(self.height, "height")), int(_positive(self.width, "width"))
            if self.width:
                w = int(_positive(self.width, "width"))
                return max(1, round(height * w / width)), w
            h = int(_positive(self.height, "height"))
            return h, max(1, round(width * h / height))
        if self.mode == "fit":
            box_height, box_width = _positive(self.height, "height"), _positive(self.width, "width")
            factor = box_height / height if box_height * width < box_width * height else box_width / width
            return max(1, round(height * factor)), max(1, round(width * factor))
        if self.mode == "longest":
            factor = _positive(self.longest, "longest side") / max(height, width)
            return max(1, round(height * factor)), max(1, round(width * factor))
        if self.mode == "megapixels":
            factor = math.sqrt(_positive(self.megapixels, "megapixels") * 1e6 / (height * width))
            return max(1, round(height * factor)), max(1, round(width * factor))
        raise ValueError(f"scale mode must be one of {', '.join(SCALE_MODES)}, got '{self.mode}'")


def _positive(value, what: str) -> float:
    if value is None or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{what} must be a positive number, got {value}")
    return float(value)


@dataclass(frozen=True)
class UpscaleOptions:
    """Everything that decides the output pixels besides the model and the image.

    Hosts map their widgets onto these fields; equal options give equal pixels in every host.
    """

    tiles: TileSettings = field(default_factory=TileSettings)
    precision: str = "auto"
    device: str | None = None  # None/"auto": the device policy's default (the host's device)
    output_device: str = "cpu"
    target: ScaleTarget = field(default_factory=ScaleTarget)
    resample: str = "lanczos"  # filter for the final resize to the exact target
    alpha: AlphaMode = "resize"  # alpha upscaled with `resample`, run through the model as gray, or dropped
    max_passes: int = MAX_PASSES
    #: The image repeats (a tileable texture): every step reads across each edge from the
    #: opposite one, so the result repeats without a seam too (`wrap_edges`).
    tileable: bool = False
    #: The host's answers about devices (free memory, precisions, out-of-memory); None: plain
    #: PyTorch (`devices.DevicePolicy`). Not part of equality: it decides plans, not pixels.
    devices: devices_.DevicePolicy | None = field(default=None, compare=False, repr=False)


def passes_needed(scale: int, current: tuple[int, int], target: tuple[int, int], limit: int = MAX_PASSES) -> int:
    """Model passes so that the result is at least the target size (at least one, at most `limit`)."""
    if scale <= 1:
        return 1
    need = max(target[0] / current[0], target[1] / current[1])
    passes = 1
    while scale**passes < need - 1e-9 and passes < limit:
        passes += 1
    return passes


def upscale(
    descriptor: ImageModelDescriptor,
    image: torch.Tensor,
    options: UpscaleOptions = UpscaleOptions(),
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> torch.Tensor:
    """Upscales `image` (B, C, H, W) float in [0, 1], C in 1..4 (gray, gray+alpha, RGB, RGBA).

    Returns (B, C, H', W') float32 on `options.output_device`; (H', W') from `options.target`.
    NaN becomes 0 and values outside [0, 1] are clipped before the model sees them.
    """
    with devices_.using(options.devices):
        return _upscale(descriptor, image, options, progress, cancel)


def _upscale(
    descriptor, image, options: UpscaleOptions, progress: ProgressFn | None, cancel: CancelFn | None
) -> torch.Tensor:
    image = _validated(image)
    if options.resample not in FILTERS:
        raise ValueError(f"resampling filter must be one of {', '.join(FILTERS)}, got '{options.resample}'")
    if options.alpha not in ALPHA_MODES:
        raise ValueError(f"alpha mode must be one of {', '.join(ALPHA_MODES)}, got '{options.alpha}'")
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.precision, descriptor, device)
    output_device = resolve_device(options.output_device)
    batch, channels, height, width = image.shape
    target, passes = _check_fits(descriptor, batch, channels, height, width, options)

    colour, alpha = _split_alpha(image, descriptor.input_channels)
    alpha_through_model = alpha is not None and options.alpha == "model"
    margin = wrap_margin(descriptor, options.tiles, device) if options.tileable else 0
    stages = _stage_sizes(descriptor.scale, height, width, passes)
    counter = _ProgressCounter(
        progress,
        sum(
            len(plan_run(descriptor, h + 2 * margin, w + 2 * margin, options.tiles, device, dtype).tiles) * batch
            for h, w in stages
        )
        * (2 if alpha_through_model else 1),
    )

    def run(x: torch.Tensor) -> torch.Tensor:
        if not margin:
            return _run_channels(descriptor, x, options, device, dtype, output_device, counter, cancel)
        h, w = x.shape[-2:]
        out = _run_channels(descriptor, wrap_edges(x, margin), options, device, dtype, output_device, counter, cancel)
        edge = margin * descriptor.scale
        return out[..., edge : edge + h * descriptor.scale, edge : edge + w * descriptor.scale].contiguous()

    for _ in range(passes):
        colour = run(colour)
        if alpha is not None and alpha_through_model:
            alpha = run(alpha)
    colour = resize(colour, *target, options.resample, wrap=options.tileable)
    if alpha is None or options.alpha == "discard":
        return colour
    alpha = resize(alpha.to(output_device), *target, options.resample, wrap=options.tileable)
    return torch.cat([colour, alpha], dim=1)


def wrap_edges(image: torch.Tensor, margin: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H + 2 margin, W + 2 margin): the image continued across each edge
    by its opposite side, as a repeating texture continues (any margin, even beyond the image)."""
    height, width = image.shape[-2:]
    rows = torch.arange(-margin, height + margin, device=image.device) % height
    columns = torch.arange(-margin, width + margin, device=image.device) % width
    return image.index_select(-2, rows).index_select(-1, columns)


def check_fits(
    descriptor: ImageModelDescriptor,
    height: int,
    width: int,
    channels: int = 3,
    options: UpscaleOptions = UpscaleOptions(),
    batch: int = 1,
) -> None:
    """Raises `ImageError` when the result of `upscale` on images of this size cannot fit the
    output device's memory. For callers that know an image's size before decoding it (from its
    file header): a 169 MP PNG is refused before its 3.7 GB are decoded."""
    with devices_.using(options.devices):
        _check_fits(descriptor, batch, channels, height, width, options)


def _check_fits(
    descriptor, batch: int, channels: int, height: int, width: int, options: UpscaleOptions
) -> tuple[tuple[int, int], int]:
    target = options.target.output_size(height, width, descriptor.scale)
    passes = passes_needed(descriptor.scale, (height, width), target, options.max_passes)
    check_memory(
        batch, channels, (height, width), target, descriptor.scale, passes, resolve_device(options.output_device)
    )
    return target, passes


def output_bytes(
    batch: int, channels: int, size: tuple[int, int], target: tuple[int, int], scale: int, passes: int
) -> int:
    """Peak bytes of the float32 results one `upscale` call holds: the last model output and the
    resized result (the model's own working memory is bounded by the tile size)."""
    model_out = (size[0] * scale**passes) * (size[1] * scale**passes) if scale > 1 else size[0] * size[1]
    return 4 * batch * channels * (model_out + target[0] * target[1])


def check_memory(batch, channels, size, target, scale, passes, device: torch.device) -> None:
    """Refuses, before allocating, a result that cannot fit in the output device's free memory."""
    need = output_bytes(batch, channels, size, target, scale, passes)
    free = devices_.active().free_memory(device)
    if free is not None and need > free:
        raise ImageError(
            f"the result ({target[1]}x{target[0]}, {batch} image(s)) needs about {need / 2**30:.1f} GiB "
            f"but only {free / 2**30:.1f} GiB is free on {device}; choose a smaller size or fewer images at once"
        )


def _validated(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise ImageError(f"expected an image tensor, got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ImageError(f"expected an image of shape (B, C, H, W), got {tuple(image.shape)}")
    batch, channels, height, width = image.shape
    if batch == 0 or height == 0 or width == 0:
        raise ImageError(f"the image is empty (shape {tuple(image.shape)}); give at least one 1x1 image")
    if not 1 <= channels <= 4:
        raise ImageError(f"images need 1 to 4 channels (gray, gray+alpha, RGB, RGBA), got {channels}")
    if image.dtype == torch.bool or image.is_complex():
        raise ImageError(f"expected an image of numbers, got {image.dtype}")
    if not image.is_floating_point():  # 8-bit and 16-bit images: scale by the type's full range
        peak = 255.0 if image.dtype == torch.uint8 else 65535.0
        return image.float().div_(peak).clamp_(0, 1)
    return torch.nan_to_num(image.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)


def _split_alpha(image: torch.Tensor, model_channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Separates alpha unless the model itself takes 4 channels (then RGBA goes in whole)."""
    channels = image.shape[1]
    if channels in (2, 4) and not (channels == 4 and model_channels == 4):
        return image[:, :-1], image[:, -1:]
    return image, None


def _stage_sizes(scale: int, height: int, width: int, passes: int) -> list[tuple[int, int]]:
    return [(height * scale**i, width * scale**i) for i in range(passes)]


class _ProgressCounter:
    """Adds up tile progress over every model run of one `upscale` call."""

    def __init__(self, callback: ProgressFn | None, total: int):
        self.callback, self.total, self.offset = callback, max(total, 1), 0

    def stage(self) -> ProgressFn | None:
        callback = self.callback
        if callback is None:
            return None
        start = self.offset

        def report(done: int, stage_total: int) -> None:
            self.offset = start + done
            self.total = max(self.total, self.offset + stage_total - done)
            callback(self.offset, self.total)

        return report


def _run_channels(descriptor, x, options, device, dtype, output_device, counter, cancel) -> torch.Tensor:
    """Runs `x` (gray or RGB, or RGBA for 4-channel models) through the model, matching channels."""
    model_in = descriptor.input_channels
    channels = x.shape[1]

    def call(t: torch.Tensor) -> torch.Tensor:
        return run_tiled(
            descriptor,
            t,
            settings=options.tiles,
            device=device,
            dtype=dtype,
            output_device=output_device,
            progress=counter.stage(),
            cancel=cancel,
        )

    if channels == model_in:
        return call(x)
    if model_in == 1 and channels == 3:  # Y models: luma through the model, chroma bicubic
        ycc = rgb_to_ycbcr(x)
        y = call(ycc[:, :1])
        chroma = F.interpolate(ycc[:, 1:].to(output_device), size=y.shape[-2:], mode="bicubic", align_corners=False)
        return ycbcr_to_rgb(torch.cat([y, chroma], dim=1)).clamp_(0, 1)
    if model_in == 3 and channels == 1:
        return luma(call(x.expand(-1, 3, -1, -1)))
    if model_in == 4 and channels in (1, 3):  # opaque image into an RGBA model
        rgb = x.expand(-1, 3, -1, -1) if channels == 1 else x
        out = call(torch.cat([rgb, torch.ones_like(rgb[:, :1])], dim=1))[:, :3]
        return luma(out) if channels == 1 else out
    raise ImageError(f"cannot feed a {channels}-channel image to a {model_in}-channel model")
