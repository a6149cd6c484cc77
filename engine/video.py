"""Video: frames streamed through a model with state carried between them.

`VideoUpscaler(descriptor, VideoOptions(...))` takes frames in display order, one or a few at a
time (`process((B, C, H, W) float in [0, 1]) -> (B, C, H', W') float32`), and keeps only what the
next frame needs: the model's previous LR feature (feedback), or the previous output and an LR
reference (stabiliser). Memory is one frame's tiles plus the output asked for; nothing grows
with the length of the video. Every frame of one size uses one tile grid, planned once.

Temporal modes:

* `off`: every frame alone; the output equals `pipeline.upscale` of that frame.
* `feedback`: ParagonSR2's own recurrence (models with `supports_temporal`): the LR feature after
  `conv_in` is blended with the previous frame's, `f_t = (1 - a) conv_in(x_t) + a f_{t-1}`,
  a = `strength` (default: the model's `temporal_alpha`, 0.2, what it was trained with). The
  first frame (and the first after a cut) follows `first_frame`: `none` = no blend (upstream
  PyTorch) or `zeros` = blend with zeros (upstream TensorRT/ONNX). Tiled runs give the untiled
  result for convolutional variants: each window gets the previous feature cropped to the
  window, and the next feature map is assembled from the window cores (crop merge at LR).
* `stabilize`: any model. Motion-aware recursive blending of the previous *output* where the
  LR input did not change (see `Stabilizer`).
* `auto`: `feedback` for models that support it, else `stabilize`.

Scene cuts reset the state: the frame is compared with the previous one on a gray thumbnail (at
most `CUT_THUMBNAIL` px on the long side, area-averaged) and a mean absolute difference above
`scene_cut` (default `SCENE_CUT_THRESHOLD` = 30/255) is a cut. Upstream ParagonSR2 compares the
two frames' *mean* gray levels with the same 30/255; the mean absolute difference is never below
that difference of means, so every cut upstream finds is found here, and so are cuts between
two scenes of equal brightness. Averaging to a thumbnail keeps sensor noise (sigma 5/255 leaves
about 0.2/255) and camera motion of a few pixels well below the threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor, ModelTiling

from .errors import CancelledError, ImageError, ModelRunError, TilewiseError
from .pipeline import UpscaleOptions, _validated, passes_needed, upscale
from .precision import _forward_lock, is_out_of_memory, model_on, no_autocast, prefers_channels_last, resolve_device, resolve_dtype, usable_dtype
from .resize import resize
from .runner import MIN_TILE, CancelFn, ProgressFn, RunPlan, TileSettings, _paste_core, _pad_to_requirements, plan_run

TemporalMode = Literal["off", "auto", "feedback", "stabilize"]
TEMPORAL_MODES: tuple[str, ...] = ("off", "auto", "feedback", "stabilize")
FIRST_FRAME_CONVENTIONS: tuple[str, ...] = ("none", "zeros")
#: Mean absolute gray difference (0..1) between consecutive frame thumbnails that counts as a cut.
SCENE_CUT_THRESHOLD = 30 / 255
#: Long side of the gray thumbnail used by the scene-cut test.
CUT_THUMBNAIL = 64
#: Stabiliser defaults: blend weight for fully static regions, and the LR change (0..1, mean over
#: channels, 3x3 box-averaged) at which a region counts as moving (weight 0).
DEFAULT_STABILIZE_STRENGTH = 0.7
DEFAULT_STATIC_THRESHOLD = 0.06


@dataclass(frozen=True)
class VideoOptions:
    """What decides a video's output pixels besides the model and the frames.

    `upscale`: the per-frame options (tiles, precision, device, target size ...). `temporal`: one
    of `TEMPORAL_MODES`. `strength`: feedback alpha (default the model's, 0.2) or stabiliser
    weight of the previous output in static regions (default 0.7), both in [0, 1).
    `first_frame`: feedback on the first frame, `none` or `zeros`. `scene_cut`: threshold of the
    cut test (None or 0: never reset). `static_threshold`: the stabiliser's motion threshold.
    """

    upscale: UpscaleOptions = field(default_factory=UpscaleOptions)
    temporal: TemporalMode = "auto"
    strength: float | None = None
    first_frame: str = "none"
    scene_cut: float | None = SCENE_CUT_THRESHOLD
    static_threshold: float = DEFAULT_STATIC_THRESHOLD


def supports_feedback(descriptor: ImageModelDescriptor) -> bool:
    return bool(getattr(descriptor.model, "supports_temporal", False))


def resolve_temporal_mode(mode: str, descriptor: ImageModelDescriptor) -> str:
    """`auto` -> `feedback` for temporal models, else `stabilize`; checks the others."""
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"temporal mode must be one of {', '.join(TEMPORAL_MODES)}, got '{mode}'")
    if mode == "auto":
        return "feedback" if supports_feedback(descriptor) else "stabilize"
    if mode == "feedback" and not supports_feedback(descriptor):
        raise ValueError(f"{descriptor.architecture.name} has no feature feedback (only ParagonSR2 does); use temporal mode 'stabilize' or 'auto'")
    return mode


def thumbnail(frame: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, h, w) gray, area-averaged to at most `CUT_THUMBNAIL` px on the long side."""
    if frame.shape[1] >= 3:
        gray = 0.299 * frame[:, 0:1] + 0.587 * frame[:, 1:2] + 0.114 * frame[:, 2:3]
    else:
        gray = frame[:, 0:1]
    height, width = gray.shape[-2:]
    factor = max(1, math.ceil(max(height, width) / CUT_THUMBNAIL))
    return F.adaptive_avg_pool2d(gray.float(), (max(1, height // factor), max(1, width // factor)))


def is_scene_cut(previous: torch.Tensor, current: torch.Tensor, threshold: float) -> bool:
    """Whether two thumbnails (from `thumbnail`) belong to different shots."""
    return previous.shape != current.shape or (current - previous).abs().mean().item() > threshold


class Stabilizer:
    """Model-agnostic temporal stabiliser: recursive blending of the previous output where the
    low-resolution input did not change.

    Per frame, with LR input x_t, the model's output u_t and the previous result y_{t-1}:

        d   = box3x3(mean_c |x_t - r_{t-1}|)          LR change, noise-averaged
        w   = strength * clamp(1 - d / threshold, 0, 1)^2     weight of the past, per LR pixel
        r_t = w r_{t-1} + (1 - w) x_t                  LR reference: what y_t shows, at LR
        y_t = up(w) y_{t-1} + (1 - up(w)) u_t          up = bilinear to the output size

    Static regions average the model's frame-to-frame jitter over about 1 / (1 - strength)
    frames; wherever the input moved by more than noise, w is 0 and the current output is kept
    as is, so moving edges do not smear. Comparing with the reference r (not the previous
    input) stops slow drift from accumulating lag: once the shown content is `threshold` away
    from the input, the past is dropped.
    """

    def __init__(self, strength: float = DEFAULT_STABILIZE_STRENGTH, threshold: float = DEFAULT_STATIC_THRESHOLD):
        if not 0 <= strength < 1:
            raise ValueError(f"stabiliser strength must be in [0, 1), got {strength}")
        if not threshold > 0:
            raise ValueError(f"stabiliser motion threshold must be positive, got {threshold}")
        self.strength, self.threshold = strength, threshold
        self.reset()

    def reset(self) -> None:
        self.reference: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None

    def __call__(self, lr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """lr (1, C, h, w), out (1, C', H, W) -> the stabilised out (written in place)."""
        lr = lr.to(out.device, torch.float32)
        if self.previous is None or self.previous.shape != out.shape or self.reference.shape != lr.shape:
            self.reference, self.previous = lr.clone(), out.clone()
            return out
        change = F.avg_pool2d((lr - self.reference).abs().mean(1, keepdim=True), 3, 1, 1, count_include_pad=False)
        weight = (1 - change / self.threshold).clamp_(0, 1).square_().mul_(self.strength)
        self.reference.mul_(weight).add_(lr * (1 - weight))
        weight = F.interpolate(weight, size=out.shape[-2:], mode="bilinear", align_corners=False)
        out.mul_(1 - weight).add_(self.previous * weight)
        self.previous.copy_(out)
        return out


class VideoUpscaler:
    """Upscales a stream of frames with state between calls (see the module docstring).

    `process(frames)` takes (B, C, H, W) (or (C, H, W)) frames in display order and returns
    (B, C, H', W') float32 on the output device. `reset()` forgets the state (a new video).
    """

    def __init__(self, descriptor: ImageModelDescriptor, options: VideoOptions = VideoOptions()):
        self.descriptor, self.options = descriptor, options
        self.mode = resolve_temporal_mode(options.temporal, descriptor)
        if options.first_frame not in FIRST_FRAME_CONVENTIONS:
            raise ValueError(f"first-frame convention must be one of {', '.join(FIRST_FRAME_CONVENTIONS)}, got '{options.first_frame}'")
        if options.scene_cut is not None and options.scene_cut < 0:
            raise ValueError(f"scene-cut threshold must be 0 or more, got {options.scene_cut}")
        up = options.upscale
        self.device = resolve_device(up.device)
        self.dtype = resolve_dtype(up.precision, descriptor, self.device)
        self.output_device = resolve_device(up.output_device)
        if self.mode == "feedback":
            default = float(getattr(descriptor.model, "temporal_alpha", 0.2))
            self.alpha = default if options.strength is None else float(options.strength)
            if not 0 <= self.alpha < 1:
                raise ValueError(f"feedback strength (alpha) must be in [0, 1), got {self.alpha}")
        self.stabilizer = Stabilizer(DEFAULT_STABILIZE_STRENGTH if options.strength is None else float(options.strength), options.static_threshold) if self.mode == "stabilize" else None
        self._plans: dict[tuple[int, int], RunPlan] = {}
        self.cuts = 0  # scene cuts detected so far (for reports)
        self.reset()

    def reset(self) -> None:
        self._feature: torch.Tensor | None = None
        self._thumbnail: torch.Tensor | None = None
        self.frames = 0
        if self.stabilizer is not None:
            self.stabilizer.reset()

    # -- planning -------------------------------------------------------------------------

    def plan(self, height: int, width: int) -> RunPlan:
        """The tile plan for frames of (height, width): decided once, reused for every frame."""
        key = (height, width)
        if key not in self._plans:
            if len(self._plans) > 4:  # a stream that keeps changing size should not grow this
                self._plans.clear()
            self._plans[key] = plan_run(self.descriptor, height, width, self.options.upscale.tiles, self.device, self.dtype)
        return self._plans[key]

    def _fixed_options(self, height: int, width: int) -> UpscaleOptions:
        """Per-frame options whose tiling is the planned grid (no per-frame auto decisions)."""
        plan = self.plan(height, width)
        tiles = replace(self.options.upscale.tiles, tile=plan.tile if plan.tile > 0 else -1, pad=plan.pad)
        return replace(self.options.upscale, tiles=tiles)

    # -- frames ---------------------------------------------------------------------------

    def process(self, frames: torch.Tensor, *, progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> torch.Tensor:
        frames = _validated(frames)
        batch, _, height, width = frames.shape
        cuts = [self._check_cut(frames[i : i + 1]) for i in range(batch)]
        if self.mode == "feedback":
            return self._process_feedback(frames, cuts, progress, cancel)
        result = upscale(self.descriptor, frames, self._fixed_options(height, width), progress=progress, cancel=cancel)
        if self.stabilizer is not None:
            for i in range(batch):
                if cuts[i]:
                    self.stabilizer.reset()
                self.stabilizer(frames[i : i + 1], result[i : i + 1])
        self.frames += batch
        return result

    def _check_cut(self, frame: torch.Tensor) -> bool:
        """Records the frame's thumbnail; True when it starts a new shot (state to be dropped)."""
        small = thumbnail(frame)
        previous, self._thumbnail = self._thumbnail, small
        if previous is None:
            return True
        cut = is_scene_cut(previous, small, self.options.scene_cut) if self.options.scene_cut else previous.shape != small.shape
        self.cuts += int(cut)
        return cut

    def _process_feedback(self, frames, cuts, progress, cancel) -> torch.Tensor:
        descriptor, options = self.descriptor, self.options.upscale
        batch, channels, height, width = frames.shape
        if channels != descriptor.input_channels:
            raise ImageError(f"feature feedback needs frames with the model's {descriptor.input_channels} channels, got {channels}; use temporal mode 'stabilize'")
        target = options.target.output_size(height, width, descriptor.scale)
        if passes_needed(descriptor.scale, (height, width), target, options.max_passes) > 1:
            raise ValueError(f"feature feedback runs the model once per frame; {target[1]}x{target[0]} needs more than one {descriptor.scale}x pass (use temporal mode 'stabilize' or a smaller size)")
        scale = descriptor.scale
        out = torch.empty(batch, descriptor.output_channels, *target, dtype=torch.float32, device=self.output_device)
        total = len(self.plan(height, width).tiles) * batch
        for i in range(batch):
            if cancel is not None and cancel():
                raise CancelledError()
            if cuts[i]:
                self._feature = None
            done = i * len(self.plan(height, width).tiles)
            report = None if progress is None else (lambda d, t, done=done: progress(done + d, total))
            frame = self._feedback_frame(frames[i : i + 1], report, cancel)
            out[i : i + 1] = resize(frame[..., : height * scale, : width * scale], *target, options.resample)
            self.frames += 1
        return out

    def _feedback_frame(self, frame: torch.Tensor, progress, cancel) -> torch.Tensor:
        """One frame through the model with the carried feature; replaces the feature."""
        while True:
            try:
                return self._feedback_attempt(frame, progress, cancel)
            except _OutOfMemory:
                plan = self.plan(*frame.shape[-2:])
                current = plan.tile if plan.tile > 0 else max(t.window.height for t in plan.tiles)
                if current // 2 < MIN_TILE or self.descriptor.tiling == ModelTiling.INTERNAL:
                    raise TilewiseError(f"out of memory even with {current}-pixel tiles on {self.device}; use a smaller model, video size or the CPU.") from None
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                settings = replace(self.options.upscale.tiles, tile=current // 2, pad=plan.pad if plan.tile > 0 else None)
                self._plans[tuple(frame.shape[-2:])] = plan_run(self.descriptor, *frame.shape[-2:], settings, self.device, self.dtype)

    def _feedback_attempt(self, frame: torch.Tensor, progress, cancel) -> torch.Tensor:
        descriptor, scale = self.descriptor, self.descriptor.scale
        dtype = usable_dtype(descriptor, self.dtype)
        model = model_on(descriptor, self.device, dtype)
        model32 = model if dtype == torch.float32 else model_on(descriptor, self.device, torch.float32)
        layout = torch.channels_last if self.options.upscale.tiles.channels_last and prefers_channels_last(descriptor.model) else torch.contiguous_format
        plan = self.plan(*frame.shape[-2:])
        padded, _ = _pad_to_requirements(descriptor, frame)
        ph, pw = padded.shape[-2:]
        previous = self._feature
        if previous is not None and tuple(previous.shape[-2:]) != (ph, pw):
            previous = None
        feature = torch.empty(1, descriptor.model.num_feat, ph, pw, dtype=torch.float32, device=self.device)
        if previous is None and self.options.first_frame == "zeros":
            previous = torch.zeros_like(feature)
        output = torch.empty(1, descriptor.output_channels, ph * scale, pw * scale, dtype=torch.float32, device=self.output_device)
        tiles, per_forward = plan.tiles, max(1, self.options.upscale.tiles.batch)
        for start in range(0, len(tiles), per_forward):
            if cancel is not None and cancel():
                raise CancelledError()
            group = tiles[start : start + per_forward]
            shape = (group[0].window.height, group[0].window.width)
            if any((t.window.height, t.window.width) != shape for t in group):
                group_lists = [[t] for t in group]  # rare: windows of different shapes run one by one
            else:
                group_lists = [group]
            for sub in group_lists:
                windows = torch.cat([padded[..., t.window.y0 : t.window.y1, t.window.x0 : t.window.x1] for t in sub])
                prev = None if previous is None else torch.cat([previous[..., t.window.y0 : t.window.y1, t.window.x0 : t.window.x1] for t in sub])
                result, feat = self._forward(model, windows, prev, dtype, layout)
                if dtype != torch.float32 and not bool(torch.isfinite(result).all()):
                    result, feat = self._forward(model32, windows, prev, torch.float32, layout)
                result = result.to(self.output_device, torch.float32)
                for index, t in enumerate(sub):
                    _paste_core(output[0], result[index], t, scale)
                    _paste_core(feature[0], feat[index].float(), t, 1)
            if progress is not None:
                progress(min(start + per_forward, len(tiles)), len(tiles))
        self._feature = feature
        return output

    def _forward(self, model, windows, prev, dtype, layout):
        try:
            x = windows.to(self.device, dtype).contiguous(memory_format=layout)
            p = None if prev is None else prev.to(self.device, dtype).contiguous(memory_format=layout)
            with torch.no_grad(), _forward_lock(model), no_autocast(self.device):
                return model(x, feature_tap=True, prev_feat=p, alpha=self.alpha)
        except Exception as error:
            if is_out_of_memory(error):
                raise _OutOfMemory() from None
            raise ModelRunError(f"{self.descriptor.architecture.name} failed in video feedback mode: {type(error).__name__}: {error}") from error


class _OutOfMemory(Exception):
    pass


def upscale_frames(descriptor: ImageModelDescriptor, frames: torch.Tensor, options: VideoOptions = VideoOptions(), **kwargs) -> torch.Tensor:
    """One-shot helper: a fresh `VideoUpscaler` over a (T, C, H, W) clip, one frame at a time."""
    runner = VideoUpscaler(descriptor, options)
    first = runner.process(frames[:1], **kwargs)
    out = first.new_empty((frames.shape[0], *first.shape[1:]))
    out[:1] = first
    for i in range(1, frames.shape[0]):
        out[i : i + 1] = runner.process(frames[i : i + 1], **kwargs)
    return out
