"""The plan of a run: its windows, their context margin and how many go into one forward.

`plan_run` decides it from the tile settings (validated for every host by `tile_settings`), the
model (`receptive`), free memory and, on a CPU, the cost of each candidate plan (`autotile`).
The runner (`run.runner`) executes a plan and asks `halved_tile` when memory runs out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Iterable, Literal

import torch
from spandrel import ImageModelDescriptor, ModelTiling

from ..compute import devices
from ..compute.precision import forward_fn, model_on
from ..errors import TilewiseError
from . import autotile
from .autotile import CPU_WORKING_SET, MIN_AUTO_TILE, auto_tile_size, whole_image_fits, working_set_rate
from .receptive import has_global_context, model_context
from .tiling import Rect, Tile, plan_tiles, window_shape

log = logging.getLogger("tilewise")


Merge = Literal["crop", "blend"]


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

    def __post_init__(self):
        """Values of the wrong kind fail here, naming the setting, rather than deep inside a run
        (hosts validate values with `tile_settings`; this guards callers of the Python API)."""

        def whole(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        shape = isinstance(self.tile, tuple) and len(self.tile) == 2 and all(whole(v) and v > 0 for v in self.tile)
        if not (whole(self.tile) or shape):
            raise TileSettingsError("tile", f"tile must be a number of pixels or (height, width), got {self.tile!r}")
        if self.pad is not None and not whole(self.pad):
            raise TileSettingsError("pad", f"tile padding must be a whole number of pixels or None, got {self.pad!r}")
        if self.merge not in ("crop", "blend"):
            raise TileSettingsError("merge", f"tile merge must be crop or blend, got {self.merge!r}")
        if not whole(self.batch):
            raise TileSettingsError("batch", f"tile batch must be a whole number, got {self.batch!r}")


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


def tile_settings(
    tile: int | str = 0, pad: int | None = None, merge: str = "crop", batch: int = 4, compile: bool = False
) -> TileSettings:
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
        raise TileSettingsError(
            "tile", f"tile size must be 0 (automatic), -1 (whole image) or at least {MIN_USER_TILE} pixels, got {tile}"
        )
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < -1):
        raise TileSettingsError(
            "pad", f"tile padding must be -1 (the model's receptive radius) or 0 or more pixels, got {pad}"
        )
    if merge not in ("crop", "blend"):
        raise TileSettingsError("merge", f"tile merge must be crop or blend, got '{merge}'")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise TileSettingsError("batch", f"tile batch must be 1 or more, got {batch}")
    return TileSettings(
        tile=tile, pad=None if pad is None or pad < 0 else pad, merge=merge, batch=batch, compile=compile
    )


_warned_global: set[str] = set()


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


def plan_run(
    descriptor: ImageModelDescriptor,
    height: int,
    width: int,
    settings: TileSettings,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> RunPlan:
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
            whole = autotile.fits_without_probe(device, ph * pw) or whole_image_fits(descriptor, device, dtype, ph, pw)
            tile = -1 if whole else auto_tile_size(descriptor, device, dtype, 1, cap=False)
        else:
            cpu = devices.active().is_cpu(device)
            if cpu:  # one large window per forward: batching buys nothing on a CPU,
                batch = 1  # and the larger window has less margin
            tile = auto_tile_size(descriptor, device, dtype, batch)  # on a CPU its probe forward
            if cpu:  # also gives the tensor profile the cost terms read
                tile = _cheaper_cpu_tile(descriptor, settings, device, dtype, ph, pw, tile, align)
    tile_y, tile_x = tile if isinstance(tile, tuple) else (tile, tile)
    tiled = 0 < tile_y < ph or 0 < tile_x < pw
    if global_context and tiled:
        name = descriptor.architecture.name
        if name not in _warned_global:
            _warned_global.add(name)
            log.warning(
                "Tilewise: %s uses global context, so tiles differ slightly from a whole-image run; "
                "use tile size -1 (whole image) if memory allows.",
                name,
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


def _warn_if_costly(
    descriptor, settings: TileSettings, tiles: list[Tile], pad: int, height: int, width: int, device, dtype
) -> None:
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
        settings.tile if isinstance(settings.tile, int) else "x".join(map(str, settings.tile)),
        pad,
        descriptor.architecture.name,
        computed,
        instead,
    )


def _cheaper_cpu_tile(
    descriptor,
    settings: TileSettings,
    device,
    dtype,
    height: int,
    width: int,
    tile: int,
    align: int,
) -> int:
    """The auto window budget on a CPU: the cheapest of `tile` (what memory allows), the largest
    window whose working set stays under `autotile.CPU_WORKING_SET` and, with glibc, the largest
    whose biggest tensor stays under `autotile.LARGE_TENSOR`. A plan costs the pixels its windows compute,
    margins included, times the slowdown of windows over either size: more margin against
    slower pixels. Compact x4 on 640² (fp32, pad 18): four full-height strips instead of the
    whole image; an RRDB with 79-px margins: the whole image where it fits.

    When `tile` runs the whole image, the margin probe only looks as far as a margin that could
    still make a tiled plan cheaper (`_margin_that_matters`)."""
    large = autotile.LARGE_TENSOR  # None: no large-tensor term on this platform
    # (a model failing in `dtype` is sized from an fp32 forward: not run where the term is off)
    largest = autotile.largest_tensor_per_pixel(descriptor, device, dtype) if large is not None else 0.0
    try:
        working = autotile.bytes_per_pixel(descriptor, device, dtype)
    except Exception:  # noqa: BLE001 - the memory probe failed (and `tile` was sized without it)
        working = 0.0
    if (large is None or height * width * max(largest, 1.0) <= large) and height * width * working <= CPU_WORKING_SET:
        return tile  # the whole image runs at the fast rate
    sides = {tile}
    limits = ((large, largest),) if large is not None else ()
    for limit, per_pixel in (*limits, (CPU_WORKING_SET, working)):
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


def context_pad(
    descriptor: ImageModelDescriptor, settings: TileSettings, device: torch.device, align: int, reach: int | None = None
) -> int:
    """The tile margin: the caller's, else the model's receptive radius (probed once, fp32).
    With `reach`, a margin of at least `reach` may be answered with any value >= `reach`."""
    if settings.pad is not None:
        return settings.pad
    forward32 = forward_fn(descriptor, model_on(descriptor, device, torch.float32))
    return model_context(descriptor, forward32, device, align, reach).pad


#: The least context a tileable image is wrapped by: the chroma of 1-channel (Y) models is
#: resized bicubic (a 2-pixel reach) beside the model, whatever the model's own radius.
MIN_WRAP = 4


def wrap_margin(descriptor: ImageModelDescriptor, settings: TileSettings, device: torch.device) -> int:
    """How far a tileable image is continued across its edges before a model pass: the tile
    margin (the caller's `pad`, else the model's receptive radius), at least `MIN_WRAP`, in
    whole steps of the model's alignment so the image keeps its window grid. For a model with
    global context this is its hint, so the edges join as closely as its tiles do."""
    align = _alignment(descriptor)
    margin = max(context_pad(descriptor, settings, device, align), MIN_WRAP)
    return -(-margin // align) * align


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
