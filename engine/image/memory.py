"""Device memory one `upscale` call needs, for hosts that must make room before a run.

ComfyUI unloads other models until a requested number of bytes is free before a node runs;
this gives that number: the weights in the working dtype plus the working memory of the largest
forward (the measured bytes per input pixel of `autotile`, times the window's pixels, times the
windows stacked per forward). The engine still recovers from an out-of-memory error by halving
the tile, so this errs on the generous side rather than being exact.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from spandrel import ImageModelDescriptor

from ..compute import devices
from ..compute.precision import resolve_device, resolve_dtype
from ..plan.autotile import bytes_per_pixel, known_bytes_per_pixel
from ..plan.planner import plan_run
from ..plan.receptive import has_global_context
from .pipeline import UpscaleOptions

#: For automatic tiling, room is made for a window of this length (ComfyUI's core upscale node
#: uses 512); the engine's automatic tile then grows into whatever memory is free.
ROOM_FOR_AUTO_TILE = 512
#: Fallback working memory per input pixel, per unit of scale and per byte of the working dtype,
#: when the model cannot be probed: ComfyUI's core node budgets 3 * 384 ("an estimate").
FALLBACK_ELEMENTS_PER_PIXEL = 3 * 384


def estimate_device_bytes(
    descriptor: ImageModelDescriptor,
    height: int,
    width: int,
    options: UpscaleOptions = UpscaleOptions(),
    images: int = 1,
    measure: bool = True,
) -> int:
    """Bytes of device memory `upscale(descriptor, images x C x height x width, options)` may use.

    Counts the weights in the working dtype and the largest forward of the first model pass
    (later passes of larger targets use the same windows). `measure=False` runs nothing: a model
    whose working memory is not known yet (this process or the disk store) is budgeted as
    ComfyUI's core node budgets every model (`FALLBACK_ELEMENTS_PER_PIXEL`), so that making room
    before a first call costs no probe forwards (the run itself measures what it needs).
    """
    with devices.using(options.devices):
        return _estimate(descriptor, height, width, options, images, measure)


def _estimate(
    descriptor: ImageModelDescriptor,
    height: int,
    width: int,
    options: UpscaleOptions,
    images: int,
    measure: bool = True,
) -> int:
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.precision, descriptor, device)
    element = torch.empty((), dtype=dtype).element_size()
    model = descriptor.model
    count = getattr(model, "parameter_count", None)  # weights held outside torch (onnxruntime)
    weights = (count if isinstance(count, int) else sum(p.numel() for p in model.parameters())) * element
    settings = options.tiles
    whole_auto = settings.tile == 0 and has_global_context(descriptor)  # auto runs one whole image per forward
    if settings.tile == 0:  # auto: room for a core-sized window, or the whole image for global context
        settings = replace(settings, tile=-1 if whole_auto else ROOM_FOR_AUTO_TILE)
    plan = plan_run(descriptor, height, width, settings, device, dtype)
    window = max(t.window.height * t.window.width for t in plan.tiles)
    per_forward = 1 if whole_auto else min(plan.batch, len(plan.tiles) * max(1, images))
    fallback = max(descriptor.scale, 1) * FALLBACK_ELEMENTS_PER_PIXEL * element
    try:
        per_pixel = (
            bytes_per_pixel(descriptor, device, dtype)
            if measure
            else known_bytes_per_pixel(descriptor, device, dtype) or fallback
        )
    except Exception:  # the probe itself failed (out of memory, a dtype the model rejects)
        per_pixel = fallback
    return int(weights + window * per_forward * per_pixel)
