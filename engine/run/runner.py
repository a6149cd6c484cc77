"""Running a model tile by tile: batching, precision fallback, out-of-memory resume, cancel.

`run_tiled` is the one place where model forwards happen, for still images and for video
frames alike (feature feedback carries its per-pixel state through a `Carry`); every host calls
it through `pipeline.upscale` or `VideoUpscaler`. Tensors are `(B, C, H, W)` float in [0, 1]
with C equal to the model's input channels; the result has the model's output channels and
`scale` times the size.

A run reads top to bottom in `_TileRun`: plan the windows, take a batch of same-shaped windows,
forward it (falling back in precision when the model fails in a low one), paste the results
(crop or blend), and on running out of memory halve the tile and re-split what is left.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor, ModelTiling

from ..compute.precision import (
    forward_fn,
    is_out_of_memory,
    mark_failing,
    model_on,
    prefers_channels_last,
    run_mode,
    same_device,
)
from ..compute.transfer import FastPathError, Pending, Transfers
from ..errors import CancelledError, ImageError, ModelRunError, TilewiseError, first_line
from ..plan.planner import TileSettings, context_pad, halved_tile, plan_run
from ..plan.tiling import Tile, split_tile

log = logging.getLogger("tilewise")

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
Forward = Callable[..., torch.Tensor]
Group = list[tuple[Tile, int]]


class Carry(Protocol):
    """State a model carries between runs, per input pixel (video feature feedback): cut with
    each window, handed to the forward, and its new values pasted core by core like the image.

    `begin(image)` is called once with the padded (B, C, H, W) input before any forward;
    `forward(forward, x, group)` runs `forward` (the model under the run's precision, which takes
    keyword arguments for the model) on the stacked windows `x` of `group`, keeps the state's new
    values for those windows and returns the image result. A batch may be run again (precision
    fallback, out-of-memory re-split); the last run of each core wins."""

    def begin(self, image: torch.Tensor) -> None: ...

    def forward(self, forward: Forward, x: torch.Tensor, group: Group) -> torch.Tensor: ...


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
    carry: Carry | None = None,
    replanned: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Upscales `image` (B, C, H, W) in [0, 1] with the model, tile by tile; returns float32 on `output_device`.

    `carry`: per-pixel state between runs (video feature feedback). `replanned(tile, pad)` is told
    the smaller tile and its margin after running out of memory (a video keeps it for later frames)."""
    if image.ndim != 4 or image.shape[1] != descriptor.input_channels:
        raise ImageError(
            f"the model expects (B, {descriptor.input_channels}, H, W) images, got shape {tuple(image.shape)}"
        )
    if 0 in image.shape:
        raise ImageError(f"the image is empty (shape {tuple(image.shape)}); give at least one 1x1 image")
    run = _TileRun(descriptor, image, settings, device, dtype, output_device, progress, carry, replanned)
    while run.queue:
        if cancel is not None and cancel():
            raise CancelledError()
        group = run.take_batch()
        try:
            current = run.forward(group)
        except _WrongShape:
            raise
        except Exception as error:  # noqa: BLE001 - sorted below: precision, out of memory, or the model's own failure
            run.paste_pending()  # what is already computed stays valid
            if not run.fall_back_in_precision(error, group):
                run.replan_after_out_of_memory(error, group)
            continue
        run.paste_later(current)
    run.paste_pending()
    return run.result()


class _TileRun:
    """One `run_tiled` call: its plan, model forwards, output buffers and queue of windows."""

    def __init__(
        self,
        descriptor,
        image,
        settings: TileSettings,
        device,
        dtype,
        output_device,
        progress,
        carry: Carry | None,
        replanned,
    ):
        self.descriptor, self.settings, self.device = descriptor, settings, device
        self.progress, self.carry, self.replanned = progress, carry, replanned
        self.scale = descriptor.scale
        self.asked = dtype
        self.dtype, self.autocast = run_mode(descriptor, dtype)
        self.compile = settings.compile and carry is None  # a carried state changes inputs per batch
        self.layout = (
            torch.channels_last
            if settings.channels_last and prefers_channels_last(descriptor.model)
            else torch.contiguous_format
        )
        self.model_forward = forward_fn(
            descriptor, model_on(descriptor, device, self.dtype, compiled=self.compile), self.autocast
        )
        self._forward32 = self.model_forward if self.dtype == torch.float32 and self.autocast is None else None
        # plan
        batch, _, height, width = image.shape
        self.padded, (self.pad_bottom, self.pad_right) = _pad_to_requirements(descriptor, image)
        self.ph, self.pw = self.padded.shape[-2:]
        plan = plan_run(descriptor, height, width, settings, device, self.dtype)
        self.pad, self.tile, self.align, self.per_forward = plan.pad, plan.tile, plan.align, plan.batch
        self.tile_context = plan.pad if plan.tile > 0 else None
        if carry is not None:
            carry.begin(self.padded)
        # outputs and queue
        size = (batch, descriptor.output_channels, self.ph * self.scale, self.pw * self.scale)
        blend = settings.merge == "blend" and len(plan.tiles) > 1
        self.weights = torch.zeros(batch, 1, *size[-2:], dtype=torch.float32, device=output_device) if blend else None
        # crop merge writes every output pixel once (the cores partition the image): no zeros needed;
        # a run of one window over every image adopts the model's result instead (`_paste`)
        self.whole = plan.tiles[0] if len(plan.tiles) == 1 and plan.tiles[0].window == plan.tiles[0].core else None
        self.output = (
            None
            if self.whole is not None
            else (torch.zeros if blend else torch.empty)(size, dtype=torch.float32, device=output_device)
        )
        self.output_size, self.output_device = size, output_device
        self.queue: deque[tuple[Tile, int]] = deque((t, b) for t in plan.tiles for b in range(batch))
        self.transfers = Transfers(device, output_device)
        self.pending: Pending | None = None
        self.done = 0

    @property
    def forward32(self) -> Forward:
        """The model's fp32 forward, for fallbacks and overflow re-runs: made when first needed,
        since a private fp32 copy of a large model costs time and memory a low-precision run
        rarely uses."""
        if self._forward32 is None:
            self._forward32 = forward_fn(self.descriptor, model_on(self.descriptor, self.device, torch.float32))
        return self._forward32

    # -- batch ----------------------------------------------------------------------------

    def take_batch(self) -> Group:
        """The next windows to run together: up to `per_forward` queued ones of one shape."""
        return _take_group(self.queue, self.per_forward)

    def _windows(self, group: Group) -> torch.Tensor:
        return torch.stack([self.padded[b, :, t.window.y0 : t.window.y1, t.window.x0 : t.window.x1] for t, b in group])

    # -- forward --------------------------------------------------------------------------

    def _call(self, forward: Forward, x: torch.Tensor, group: Group) -> torch.Tensor:
        with torch.inference_mode():
            return forward(x) if self.carry is None else self.carry.forward(forward, x, group)

    def forward(self, group: Group) -> Pending:
        """Runs the model on `group`'s windows and starts copying the result back."""
        windows = batch = self._windows(group)
        if self.compile and len(group) < self.per_forward:  # one batch shape: compile once
            batch = torch.cat([windows, windows[-1:].expand(self.per_forward - len(group), -1, -1, -1)])
        result = self._call(self.model_forward, self.transfers.upload(batch, self.dtype, self.layout), group)[
            : len(group)
        ]
        expected = (
            len(group),
            self.descriptor.output_channels,
            windows.shape[-2] * self.scale,
            windows.shape[-1] * self.scale,
        )
        if tuple(result.shape) != expected:
            raise _WrongShape(
                f"{self.descriptor.architecture.name} returned shape {tuple(result.shape)} for input "
                f"{tuple(windows.shape)}; expected {expected}"
            )
        # the download clamps in place; on the fast path it allocates device memory too
        with torch.inference_mode():
            return self.transfers.download(
                group, windows, result, check_finite=self.dtype != torch.float32 or self.autocast is not None
            )

    def fall_back_in_precision(self, error: Exception, group: Group) -> bool:
        """After a model failure in a low precision (not out of memory): continue under autocast,
        and if that fails too, in fp32 (flagged bf16/fp16-capable models that mix dtypes inside,
        e.g. SwinIR's attention mask; see `precision.run_mode`). Requeues `group`; False when no
        fallback applies."""
        if is_out_of_memory(error) or self.asked == torch.float32 or self.model_forward is self._forward32:
            return False
        name, asked = self.descriptor.architecture.name, self.asked
        if self.autocast is None:
            log.warning(
                "Tilewise: %s failed in %s (%s); continuing with %s autocast.", name, asked, first_line(error), asked
            )
            mark_failing(self.descriptor, asked, "autocast")
            self.dtype, self.autocast = torch.float32, asked
            self.model_forward = forward_fn(
                self.descriptor,
                model_on(self.descriptor, self.device, torch.float32, compiled=self.compile),
                self.autocast,
            )
        else:
            log.warning(
                "Tilewise: %s failed under %s autocast (%s); continuing in fp32.", name, asked, first_line(error)
            )
            mark_failing(self.descriptor, asked, "fp32")
            self.model_forward, self.dtype, self.autocast = self.forward32, torch.float32, None
        self.queue.extendleft(reversed(group))
        return True

    def replan_after_out_of_memory(self, error: Exception, group: Group) -> None:
        """Halves the tile and re-splits `group` and everything queued; any other error ends the
        run with a message naming the window."""
        name = self.descriptor.architecture.name
        if not is_out_of_memory(error):
            window = group[0][0].window
            raise ModelRunError(
                f"{name} failed on the tile at x={window.x0}, y={window.y0} ({window.width}x{window.height}): "
                f"{type(error).__name__}: {error}"
            ) from error
        if self.descriptor.tiling == ModelTiling.INTERNAL:
            raise TilewiseError(
                f"out of memory running {name}, which cannot be tiled; use a smaller image or a device with more "
                f"memory."
            ) from None
        self.tile = _shrink_after_oom(self.tile, group, self.device)
        if self.tile_context is None:  # the run was untiled: tiles from now on need their margin
            self.pad = self.tile_context = context_pad(self.descriptor, self.settings, self.device, self.align)
        self.queue.extendleft(reversed(group))
        _resplit_queue(self.queue, self.ph, self.pw, self.tile, self.pad, self.align)
        if self.replanned is not None:
            self.replanned(self.tile, self.pad)

    # -- paste ----------------------------------------------------------------------------

    def paste_later(self, current: Pending) -> None:
        """Pastes `current` now, or, when copies run in the background, the previous batch while
        this one computes and copies."""
        if not self.transfers.deferred:
            self._paste(current)
            return
        previous, self.pending = self.pending, current
        if previous is not None:
            self._paste(previous)

    def paste_pending(self) -> None:
        if self.pending is not None:
            previous, self.pending = self.pending, None
            self._paste(previous)

    def _paste(self, item: Pending) -> None:
        """Pastes a finished batch (re-running it in fp32 if low precision overflowed, and on the
        plain copy path if the fast path's copy failed)."""
        try:
            item.wait()
            result = item.result
        except FastPathError:
            redone = self._call(
                self.model_forward, self.transfers.upload(item.windows, self.dtype, self.layout), item.group
            )
            with torch.inference_mode():
                item = self.transfers.download(item.group, item.windows, redone, check_finite=item.finite is not None)
            result = item.result
        if item.overflowed():
            log.warning("Tilewise: non-finite values in %s; re-running this tile in fp32.", self.asked)
            result = self._call(
                self.forward32, item.windows.to(self.device).contiguous(memory_format=self.layout), item.group
            )
            with torch.inference_mode():
                result = result.to(device=self.output_device, dtype=torch.float32).clamp_(0, 1)
        waiting = len(self.queue) + (
            len(self.pending.group) if self.pending is not None and self.pending is not item else 0
        )
        output = self._output_for(item, result)
        for index, ((t, b), out) in enumerate(zip(item.group, result)):
            if output is None:
                pass  # the adopted result is the output
            elif self.weights is None:
                _paste_core(output[b], out, t, self.scale)
            else:
                _accumulate(output[b], self.weights[b], out, t, self.scale, self.pad, self.ph, self.pw)
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.done + len(item.group) - index - 1 + waiting)

    def _output_for(self, item: Pending, result: torch.Tensor) -> torch.Tensor | None:
        """The buffer `item` is pasted into; None when `result` becomes the output itself: one
        window over the whole image, every image in this batch, on the plain path (a staging
        buffer of the fast path is reused, so it is copied). That saves allocating the output and
        a pass over it, the most a small image costs beside the model's forward."""
        if self.output is not None:
            return self.output
        whole = all(t is self.whole for t, _ in item.group)
        every_image = [b for _, b in item.group] == list(range(self.output_size[0]))
        # the model ran in inference mode: its own tensor is returned only to a caller in it too
        # (ComfyUI), else the conversion makes a normal tensor the caller may change in place
        converted = result.dtype != torch.float32 or not same_device(result.device, self.output_device)
        own = converted or torch.is_inference_mode_enabled()
        if whole and every_image and item.event is None and own:
            self.output = result.to(device=self.output_device, dtype=torch.float32)
            return None
        # pasted instead: the whole-image window ran out of memory and was split, or one image of several
        self.output = torch.empty(self.output_size, dtype=torch.float32, device=self.output_device)
        return self.output

    def result(self) -> torch.Tensor:
        assert self.output is not None
        if self.weights is not None:
            self.output /= self.weights.clamp_min(1e-12)
        return self.output[..., : (self.ph - self.pad_bottom) * self.scale, : (self.pw - self.pad_right) * self.scale]


class _WrongShape(TilewiseError):
    """The model returned a result of the wrong shape (a bug in it, or an unsupported input)."""


def _take_group(queue: deque, limit: int) -> list[tuple[Tile, int]]:
    """Up to `limit` queued items whose windows share one shape (so they stack)."""
    first = queue.popleft()
    group = [first]
    shape = (first[0].window.height, first[0].window.width)
    while queue and len(group) < limit and (queue[0][0].window.height, queue[0][0].window.width) == shape:
        group.append(queue.popleft())
    return group


def _shrink_after_oom(tile: int, group: list, device: torch.device) -> int:
    current, smaller = halved_tile(
        tile,
        [t.window for t, _ in group],
        device,
        "free memory (close other programs), use a smaller model or image, or run on the CPU.",
    )
    log.warning("Tilewise: out of memory with %d-pixel tiles; retrying this tile at %d.", current, smaller)
    return smaller


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
    output[:, core.y0 : core.y1, core.x0 : core.x1] = result[:, inner.y0 : inner.y1, inner.x0 : inner.x1]


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
    output[:, window.y0 : window.y1, window.x0 : window.x1] += result * weight
    weights[:, window.y0 : window.y1, window.x0 : window.x1] += weight


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
