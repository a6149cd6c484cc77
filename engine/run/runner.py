"""Running a model tile by tile: batching, precision fallback, out-of-memory resume, cancel.

`run_tiled` is the one place where model forwards happen for still images; every host calls it
(through `pipeline.upscale`). Tensors are `(B, C, H, W)` float in [0, 1] with C equal to the
model's input channels; the result has the model's output channels and `scale` times the size.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Literal

import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor, ModelTiling

from ..compute import devices
from ..errors import CancelledError, ImageError, ModelRunError, TilewiseError, first_line
from ..compute.precision import forward_fn, is_out_of_memory, mark_failing, model_on, prefers_channels_last, run_mode
from ..plan import autotile
from ..plan.autotile import CPU_WORKING_SET, MIN_AUTO_TILE, auto_tile_size, whole_image_fits, working_set_rate
from ..plan.receptive import has_global_context, model_context
from ..plan.tiling import Rect, Tile, plan_tiles, split_tile, window_shape
from ..compute.transfer import FastPathError, Pending, Transfers

log = logging.getLogger("tilewise")

Merge = Literal["crop", "blend"]
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

#: Below this window length an out-of-memory error is final.
MIN_TILE = 16


@dataclass(frozen=True)
class TileSettings:
    """How to tile. `tile`: window length fed to the model, or its (height, width) (0 = auto:
    the largest window that fits memory, shaped for the least margin; -1 = whole image);
    `pad`: context margin in input pixels (None = the model's receptive radius, see `receptive`);
    `batch`: tiles per forward; `merge`: crop (exact) or blend (feathered margins);
    `channels_last`: run convolution-dominated models in NHWC layout (faster, same results to rounding)."""

    tile: int | tuple[int, int] = 0
    pad: int | None = None
    merge: Merge = "crop"
    batch: int = 4
    channels_last: bool = True  # NHWC for convolution-dominated models (see precision.prefers_channels_last)
    compile: bool = False  # torch.compile the model (opt-in: slow first run); batches are padded to one shape


#: The smallest tile length a user may choose (0 = automatic and -1 = whole image aside): smaller
#: windows are almost all margin. Out-of-memory halving stops at the same length (`MIN_TILE`).
MIN_USER_TILE = MIN_TILE


class TileSettingsError(TilewiseError, ValueError):
    """Tile settings a host was given that the engine cannot use; the message says which values
    are allowed (hosts show it as is: CLI exit 2, a ComfyUI node error, a WebUI warning).
    `setting` names the argument of `tile_settings` at fault (tile, pad, merge or batch), so a
    host can name its own flag or widget in front."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


def tile_settings(tile: int | str = 0, pad: int | None = None, merge: str = "crop", batch: int = 4, compile: bool = False) -> TileSettings:
    """The one place tile settings from a host are validated and translated, so that a value works
    alike in every host. `tile`: 0 or "auto" = automatic, -1 = the whole image, else a window
    length of at least `MIN_USER_TILE`; `pad`: None or -1 = the model's receptive radius, else the
    margin in pixels; `batch`: windows per forward, at least 1."""
    if isinstance(tile, str):
        text = tile.strip().lower()
        if text == "auto":
            tile = 0
        else:
            try:
                tile = int(text)
            except ValueError:
                raise TileSettingsError("tile", f"tile size must be a number of pixels or auto, got '{tile}'") from None
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < -1 or 0 < tile < MIN_USER_TILE:
        raise TileSettingsError("tile", f"tile size must be 0 (automatic), -1 (whole image) or at least {MIN_USER_TILE} pixels, got {tile}")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < -1):
        raise TileSettingsError("pad", f"tile padding must be -1 (the model's receptive radius) or 0 or more pixels, got {pad}")
    if merge not in ("crop", "blend"):
        raise TileSettingsError("merge", f"tile merge must be crop or blend, got '{merge}'")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise TileSettingsError("batch", f"tile batch must be 1 or more, got {batch}")
    return TileSettings(tile=tile, pad=None if pad is None or pad < 0 else pad, merge=merge, batch=batch, compile=compile)


_warned_global: set[str] = set()


def run_tiled(
    descriptor: ImageModelDescriptor,
    image: torch.Tensor,
    *,
    settings: TileSettings = TileSettings(),
    device: torch.device = torch.device("cpu"),
    dtype: torch.dtype = torch.float32,
    output_device: torch.device = torch.device("cpu"),
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> torch.Tensor:
    """Upscales `image` (B, C, H, W) in [0, 1] with the model, tile by tile; returns float32 on `output_device`."""
    if image.ndim != 4 or image.shape[1] != descriptor.input_channels:
        raise ImageError(f"the model expects (B, {descriptor.input_channels}, H, W) images, got shape {tuple(image.shape)}")
    batch, _, height, width = image.shape
    if batch == 0 or height == 0 or width == 0:
        raise ImageError(f"the image is empty (shape {tuple(image.shape)}); give at least one 1x1 image")
    scale = descriptor.scale
    asked = dtype
    dtype, autocast = run_mode(descriptor, dtype)
    layout = torch.channels_last if settings.channels_last and prefers_channels_last(descriptor.model) else torch.contiguous_format
    model = model_on(descriptor, device, dtype, compiled=settings.compile)
    forward = forward_fn(descriptor, model, autocast)
    forward32 = forward if dtype == torch.float32 and autocast is None else forward_fn(descriptor, model_on(descriptor, device, torch.float32))

    padded, (pad_bottom, pad_right) = _pad_to_requirements(descriptor, image)
    ph, pw = padded.shape[-2:]
    plan = plan_run(descriptor, height, width, settings, device, dtype)
    tiles, pad, tile, align = plan.tiles, plan.pad, plan.tile, plan.align
    tile_context = pad if plan.tile > 0 else None

    out_channels = descriptor.output_channels
    output = torch.zeros(batch, out_channels, ph * scale, pw * scale, dtype=torch.float32, device=output_device)
    weights = torch.zeros(batch, 1, ph * scale, pw * scale, dtype=torch.float32, device=output_device) if settings.merge == "blend" and len(tiles) > 1 else None

    queue: deque[tuple[Tile, int]] = deque((t, b) for t in tiles for b in range(batch))
    transfers = Transfers(device, output_device)
    pending: Pending | None = None
    done, per_forward = 0, plan.batch

    def finish(item: Pending) -> None:
        """Pastes a finished batch (re-running it in fp32 if low precision overflowed, and on the
        plain copy path if the fast path's copy failed)."""
        nonlocal done
        try:
            item.wait()
            result = item.result
        except FastPathError:
            with torch.inference_mode():
                redone = forward(transfers.upload(item.windows, dtype, layout))
                item = transfers.download(item.group, item.windows, redone, check_finite=item.finite is not None)
            result = item.result
        if item.overflowed():
            log.warning("Tilewise: non-finite values in %s; re-running this tile in fp32.", asked)
            with torch.inference_mode():
                result = forward32(item.windows.to(device).contiguous(memory_format=layout))
                result = result.to(device=output_device, dtype=torch.float32).clamp_(0, 1)
        for index, ((t, b), out) in enumerate(zip(item.group, result)):
            if weights is None:
                _paste_core(output[b], out, t, scale)
            else:
                _accumulate(output[b], weights[b], out, t, scale, pad, ph, pw)
            done += 1
            if progress is not None:
                progress(done, done + len(item.group) - index - 1 + len(queue) + (len(pending.group) if pending is not None and pending is not item else 0))

    while queue:
        if cancel is not None and cancel():
            raise CancelledError()
        group = _take_group(queue, per_forward)
        windows = torch.stack([padded[b, :, t.window.y0:t.window.y1, t.window.x0:t.window.x1] for t, b in group])
        try:
            with torch.inference_mode():
                if settings.compile and len(group) < per_forward:  # one batch shape: compile once
                    filler = windows[-1:].expand(per_forward - len(group), -1, -1, -1)
                    result = forward(transfers.upload(torch.cat([windows, filler]), dtype, layout))[: len(group)]
                else:
                    result = forward(transfers.upload(windows, dtype, layout))
                expected = (len(group), out_channels, windows.shape[-2] * scale, windows.shape[-1] * scale)
                if tuple(result.shape) != expected:
                    raise _WrongShape(f"{descriptor.architecture.name} returned shape {tuple(result.shape)} for input {tuple(windows.shape)}; expected {expected}")
                # the download clamps in place; on the fast path it allocates device memory too
                current = transfers.download(group, windows, result, check_finite=dtype != torch.float32 or autocast is not None)
        except _WrongShape:
            raise
        except Exception as error:
            if pending is not None:  # what is already computed stays valid
                previous, pending = pending, None
                finish(previous)
            if not is_out_of_memory(error) and asked != torch.float32 and forward is not forward32:
                # flagged bf16/fp16-capable but mixing dtypes inside (SwinIR's attention mask):
                # go on under autocast, and if that fails too, in fp32 (see precision.run_mode)
                name = descriptor.architecture.name
                if autocast is None:
                    log.warning("Tilewise: %s failed in %s (%s); continuing with %s autocast.", name, asked, first_line(error), asked)
                    mark_failing(descriptor, asked, "autocast")
                    dtype, autocast = torch.float32, asked
                    forward = forward_fn(descriptor, model_on(descriptor, device, torch.float32, compiled=settings.compile), autocast)
                else:
                    log.warning("Tilewise: %s failed under %s autocast (%s); continuing in fp32.", name, asked, first_line(error))
                    mark_failing(descriptor, asked, "fp32")
                    forward, dtype, autocast = forward32, torch.float32, None
                queue.extendleft(reversed(group))
                continue
            if not is_out_of_memory(error):
                window = group[0][0].window
                raise ModelRunError(
                    f"{descriptor.architecture.name} failed on the tile at x={window.x0}, y={window.y0} "
                    f"({window.width}x{window.height}): {type(error).__name__}: {error}"
                ) from error
            if descriptor.tiling == ModelTiling.INTERNAL:
                raise TilewiseError(f"out of memory running {descriptor.architecture.name}, which cannot be tiled; use a smaller image or a device with more memory.") from None
            tile = _shrink_after_oom(tile, group, device)
            if tile_context is None:  # the run was untiled: tiles from now on need their margin
                pad = tile_context = context_pad(descriptor, settings, device, align)
            for item in reversed(group):
                queue.appendleft(item)
            _resplit_queue(queue, ph, pw, tile, pad, align)
            continue
        if transfers.deferred:  # paste the previous batch while this one computes and copies
            previous, pending = pending, current
            if previous is not None:
                finish(previous)
        else:
            finish(current)
    if pending is not None:
        finish(pending)
    if weights is not None:
        output /= weights.clamp_min(1e-12)
    return output[..., : (ph - pad_bottom) * scale, : (pw - pad_right) * scale]


class _WrongShape(TilewiseError):
    """The model returned a result of the wrong shape (a bug in it, or an unsupported input)."""


@dataclass(frozen=True)
class RunPlan:
    tiles: list[Tile]
    pad: int
    tile: int  # window length asked for, halved after out-of-memory (-1: whole image)
    align: int
    batch: int = 4  # windows per forward
    shape: tuple[int, int] = (-1, -1)  # the (height, width) tile `plan_tiles` planned with

    @property
    def settings_tile(self) -> int | tuple[int, int]:
        """The `TileSettings.tile` that plans these windows again (per-frame runs of a video)."""
        return self.shape if self.tile > 0 else -1


def model_dtype(descriptor: ImageModelDescriptor, device: torch.device) -> torch.dtype:
    first = next(iter(descriptor.model.parameters()), None)
    return first.dtype if first is not None else torch.float32


def plan_run(descriptor: ImageModelDescriptor, height: int, width: int, settings: TileSettings, device: torch.device, dtype: torch.dtype | None = None) -> RunPlan:
    """The tiles `run_tiled` will use for an image of (height, width), before padding to requirements.

    Auto tile (`tile=0`) takes the largest window that fits memory (`autotile`). For a model with
    global context (`receptive.has_global_context`) no margin makes tiles exact, so auto runs
    the whole image, one image per forward, whenever that fits, and otherwise the largest
    single window that fits (no `MAX_AUTO_TILE` cap); a tiled result is then close to, not
    equal to, the whole-image one, and a warning says so once per architecture.
    """
    pad_w, pad_h = descriptor.size_requirements.get_padding(width, height)
    ph, pw = height + pad_h, width + pad_w
    align = _alignment(descriptor)
    tile, batch = settings.tile, max(1, settings.batch)
    global_context = descriptor.tiling != ModelTiling.INTERNAL and has_global_context(descriptor)
    if descriptor.tiling == ModelTiling.INTERNAL:
        tile = -1
    elif tile == 0:  # auto; images no larger than the smallest auto tile need no memory probe
        dtype = dtype or model_dtype(descriptor, device)
        if max(ph, pw) <= MIN_AUTO_TILE:
            tile = -1
        elif global_context:
            batch = 1
            whole = autotile.fits_without_probe(descriptor, device, dtype, ph * pw) or whole_image_fits(descriptor, device, dtype, ph, pw)
            tile = -1 if whole else auto_tile_size(descriptor, device, dtype, 1, cap=False)
        else:
            cpu = devices.active().is_cpu(device)
            if cpu:  # one large window per forward: batching buys nothing on a CPU,
                batch = 1  # and the larger window has less margin (RRDB bf16: 11.9 -> 10.3 s)
            if cpu and autotile.fits_without_probe(descriptor, device, dtype, ph * pw):
                # surely within memory and the working set: only the large-tensor window competes
                tile = _cheaper_cpu_tile(descriptor, settings, device, dtype, ph, pw, max(ph, pw), align, working=0.0)
            else:
                tile = auto_tile_size(descriptor, device, dtype, batch)
                if cpu:
                    tile = _cheaper_cpu_tile(descriptor, settings, device, dtype, ph, pw, tile, align)
    tile_y, tile_x = tile if isinstance(tile, tuple) else (tile, tile)
    tiled = 0 < tile_y < ph or 0 < tile_x < pw
    if global_context and tiled:
        name = descriptor.architecture.name
        if name not in _warned_global:
            _warned_global.add(name)
            log.warning(
                "Tilewise: %s uses global context, so tiles differ slightly from a whole-image run; "
                "use tile size -1 (whole image) if memory allows.", name,
            )
    if not tiled:
        return RunPlan(plan_tiles(ph, pw, -1, 0), 0, -1, align, batch)
    pad = context_pad(descriptor, settings, device, align)
    square = descriptor.size_requirements.square
    if settings.tile == 0 and not square:  # auto: the window shape with the least margin
        tile_y, tile_x = window_shape(ph, pw, tile_y, pad, align)
    tiles = plan_tiles(ph, pw, (tile_y, tile_x), pad, align, square)
    if settings.tile != 0:
        _warn_if_costly(descriptor, settings, tiles, pad, height, width, device, dtype)
    return RunPlan(tiles, pad, tile if isinstance(tile, int) else max(tile), align, batch, (tile_y, tile_x))


#: A chosen tile whose windows compute more than this many times the image's pixels is warned about.
COSTLY_TILE = 2.0
_warned_costly: set[tuple] = set()


def _work(tiles: list[Tile], height: int, width: int) -> float:
    """Pixels the windows compute, margins included, over the image's own pixels."""
    return sum(t.window.height * t.window.width for t in tiles) / (height * width)


def _warn_if_costly(descriptor, settings: TileSettings, tiles: list[Tile], pad: int, height: int, width: int, device, dtype) -> None:
    """One warning line when a tile length the user chose makes margins dominate the work
    (RRDB, margin 79 px, at tile 64: 256 windows, about 20x the pixels), with auto's figure."""
    computed = _work(tiles, height, width)
    key = (descriptor.architecture.name, settings.tile, pad)
    if computed <= COSTLY_TILE or key in _warned_costly:
        return
    _warned_costly.add(key)
    try:
        auto = plan_run(descriptor, height, width, replace(settings, tile=0), device, dtype)
        instead = f"; automatic tiling computes {_work(auto.tiles, height, width):.2f}x (tile size 0 / --tile auto)"
    except Exception:  # noqa: BLE001 - the warning must not fail the run
        instead = "; use automatic tiling (tile size 0 / --tile auto) or a larger tile"
    log.warning(
        "Tilewise: %s-px tiles with a %d-px margin make %s compute %.1fx the image's pixels%s.",
        settings.tile if isinstance(settings.tile, int) else "x".join(map(str, settings.tile)), pad, descriptor.architecture.name, computed, instead,
    )


def _cheaper_cpu_tile(descriptor, settings: TileSettings, device, dtype, height: int, width: int, tile: int, align: int, working: float | None = None) -> int:
    """The auto window budget on a CPU: the cheapest of `tile` (what memory allows), the largest
    window whose working set stays under `autotile.CPU_WORKING_SET` and the largest whose biggest
    tensor stays under `autotile.LARGE_TENSOR`. A plan costs the pixels its windows compute,
    margins included, times the slowdown of windows over either size: more margin against
    slower pixels. Compact x4 on 640² (fp32, pad 18): four full-height strips instead of the
    whole image; an RRDB with 79-px margins: the whole image where it fits.

    `working`: bytes per pixel of the working set (None: measured). When `tile` runs the whole
    image, the margin probe only looks as far as a margin that could still make a tiled plan
    cheaper (`_margin_that_matters`)."""
    largest = autotile.largest_tensor_per_pixel(descriptor, device, dtype)
    if working is None:
        try:
            working = autotile.bytes_per_pixel(descriptor, device, dtype)
        except Exception:  # noqa: BLE001 - the memory probe failed (and `tile` was sized without it)
            working = 0.0
    if height * width * max(largest, 1.0) <= autotile.LARGE_TENSOR and height * width * working <= CPU_WORKING_SET:
        return tile  # the whole image runs at the fast rate
    sides = {tile}
    for limit, per_pixel in ((autotile.LARGE_TENSOR, largest), (CPU_WORKING_SET, working)):
        side = int(math.sqrt(limit / max(per_pixel, 1.0)))  # a pixel budget: shapes need no alignment
        if MIN_AUTO_TILE <= side < tile:
            sides.add(side)
    if len(sides) == 1 or min(sides) >= max(height, width):  # one plan, or every candidate runs whole
        return tile
    square = descriptor.size_requirements.square

    def cost(side: int, pad: int) -> float:
        if side >= height and side >= width:
            windows = [height * width]
        else:
            shape = (side, side) if square else window_shape(height, width, side, pad, align)
            windows = [t.window.height * t.window.width for t in plan_tiles(height, width, shape, pad, align, square)]
        biggest = max(windows)
        rate = autotile.large_tensor_rate(descriptor, device, dtype, biggest) * working_set_rate(biggest * working)
        return sum(windows) * rate

    reach = None
    if tile >= max(height, width) and settings.pad is None:
        reach = _margin_that_matters(sides - {tile}, cost, cost(tile, 0))
        if reach == 0:  # no tiled plan beats the whole image even without margins
            return tile
    pad = context_pad(descriptor, settings, device, align, reach)  # probed only when some candidate tiles
    if reach is not None and pad >= reach:
        return tile
    return min(sorted(sides, reverse=True), key=lambda side: cost(side, pad))  # ties: the larger window


def _margin_that_matters(sides: set[int], cost, whole: float) -> int | None:
    """The smallest margin from which no tiled plan of these window `sides` is cheaper than the
    whole image (`whole` is its cost); None when one is cheaper with any margin. A plan's cost
    never falls as the margin grows (more windows, more overlap), so each side's bound is
    bisected."""
    reach = 0
    for side in sides:
        low, high = 0, side // 2
        if cost(side, high) < whole:
            return None
        if cost(side, low) >= whole:
            continue
        while high - low > 1:  # cost(low) < whole <= cost(high)
            mid = (low + high) // 2
            if cost(side, mid) < whole:
                low = mid
            else:
                high = mid
        reach = max(reach, high)
    return reach


def context_pad(descriptor: ImageModelDescriptor, settings: TileSettings, device: torch.device, align: int, reach: int | None = None) -> int:
    """The tile margin: the caller's, else the model's receptive radius (probed once, fp32).
    With `reach`, a margin of at least `reach` may be answered with any value >= `reach`."""
    if settings.pad is not None:
        return settings.pad
    forward32 = forward_fn(descriptor, model_on(descriptor, device, torch.float32))
    return model_context(descriptor, forward32, device, align, reach).pad


def _take_group(queue: deque, limit: int) -> list[tuple[Tile, int]]:
    """Up to `limit` queued items whose windows share one shape (so they stack)."""
    first = queue.popleft()
    group = [first]
    shape = (first[0].window.height, first[0].window.width)
    while queue and len(group) < limit and (queue[0][0].window.height, queue[0][0].window.width) == shape:
        group.append(queue.popleft())
    return group


def _shrink_after_oom(tile: int, group: list, device: torch.device) -> int:
    current, smaller = halved_tile(tile, [t.window for t, _ in group], device, "free memory (close other programs), use a smaller model or image, or run on the CPU.")
    log.warning("Tilewise: out of memory with %d-pixel tiles; retrying this tile at %d.", current, smaller)
    return smaller


def halved_tile(tile: int, windows: Iterable[Rect], device: torch.device, advice: str) -> tuple[int, int]:
    """(current, next) tile length after running out of memory: the current tile, or the longest
    window side when the run was untiled (`tile` <= 0), and half of it. Raises TilewiseError,
    ending with `advice`, when the half would be below `MIN_TILE`. Shared by images and video."""
    current = tile if tile > 0 else max(max(w.height, w.width) for w in windows)
    smaller = current // 2
    if smaller < MIN_TILE:
        raise TilewiseError(f"out of memory even with {current}-pixel tiles on {device}; {advice}")
    devices.active().empty_cache(device)
    return current, smaller


def _resplit_queue(queue: deque, height: int, width: int, tile: int, pad: int, align: int) -> None:
    """Splits every queued tile larger than `tile`; the finished tiles' output stays as it is."""
    items = list(queue)
    queue.clear()
    for t, b in items:
        if max(t.window.height, t.window.width) > tile:
            queue.extend((piece, b) for piece in split_tile(t, height, width, tile, pad, align))
        else:
            queue.append((t, b))


def _paste_core(output: torch.Tensor, result: torch.Tensor, tile: Tile, scale: int) -> None:
    core = tile.core.scaled(scale)
    inner = tile.core.relative_to(tile.window).scaled(scale)
    output[:, core.y0:core.y1, core.x0:core.x1] = result[:, inner.y0:inner.y1, inner.x0:inner.x1]


def _ramp(length: int, start_inside: bool, end_inside: bool, fade: int) -> torch.Tensor:
    """1-D blend weights of a window: 0 over the outer `fade / 2` pixels of each side that borders
    another tile (the least exact outputs), then a sin^2 rise over `fade` pixels. Neighbouring
    windows overlap by 2 * fade / s, so their ramps are sin^2 and cos^2 of one angle: they sum to one."""
    position = torch.arange(length, dtype=torch.float32) + 0.5
    weight = torch.ones(length)
    if fade > 0:
        if start_inside:
            weight = weight * torch.sin(0.5 * math.pi * ((position - fade / 2) / fade).clamp(0, 1)) ** 2
        if end_inside:
            weight = weight * torch.sin(0.5 * math.pi * ((length - position - fade / 2) / fade).clamp(0, 1)) ** 2
    return weight


def _accumulate(output, weights, result, tile: Tile, scale: int, pad: int, height: int, width: int) -> None:
    window = tile.window.scaled(scale)
    fade = pad * scale
    wy = _ramp(window.height, tile.window.y0 > 0, tile.window.y1 < height, fade)
    wx = _ramp(window.width, tile.window.x0 > 0, tile.window.x1 < width, fade)
    weight = (wy[:, None] * wx[None, :]).to(output.device)
    output[:, window.y0:window.y1, window.x0:window.x1] += result * weight
    weights[:, window.y0:window.y1, window.x0:window.x1] += weight


def _alignment(descriptor: ImageModelDescriptor) -> int:
    """Tile origins must keep the model's internal grid: its `multiple_of`, a declared
    `tile_alignment`, or the attention `window_size` of window transformers (SwinIR, HAT, ...),
    whose windows are laid out from the image origin."""
    model = descriptor.model
    candidates = [descriptor.size_requirements.multiple_of]
    for name in ("tile_alignment", "window_size"):
        value = getattr(model, name, None)
        if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) for v in value):
            value = max(value)
        if isinstance(value, int) and value > 0:
            candidates.append(value)
    return math.lcm(*candidates)


def _pad_to_requirements(descriptor: ImageModelDescriptor, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pads right/bottom (reflect, then replicate) to the model's size requirements, as spandrel does
    for a whole image, so that tiled and untiled runs see the same padded image."""
    height, width = image.shape[-2:]
    pad_w, pad_h = descriptor.size_requirements.get_padding(width, height)
    if pad_w == 0 and pad_h == 0:
        return image, (0, 0)
    reflect_w, reflect_h = min(pad_w, width - 1), min(pad_h, height - 1)
    padded = image
    if reflect_w or reflect_h:
        padded = F.pad(padded, (0, reflect_w, 0, reflect_h), mode="reflect")
    if pad_w > reflect_w or pad_h > reflect_h:
        padded = F.pad(padded, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return padded, (pad_h, pad_w)
