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
* `stabilize`: any model. Recursive blending of the previous *output*, moved by the global
  camera motion estimated on the LR frames, where the LR input (after that motion) did not
  change (see `Stabilizer`).
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

import torch
import torch.nn.functional as F
from spandrel import ImageModelDescriptor

from ..choices import FIRST_FRAME_CONVENTIONS, SCENE_CUT_THRESHOLD, TEMPORAL_MODES, TemporalMode
from ..compute import devices
from ..compute.precision import resolve_device, resolve_dtype
from ..errors import CancelledError, ImageError
from ..image.pipeline import UpscaleOptions, _validated, passes_needed, upscale
from ..image.resize import resize
from ..plan.planner import RunPlan, plan_run
from ..run.runner import CancelFn, ProgressFn, _paste_core, run_tiled

#: Long side of the gray thumbnail used by the scene-cut test.
CUT_THUMBNAIL = 64
#: Stabiliser defaults: blend weight for fully static regions, and the LR change (0..1, mean over
#: channels, 3x3 box-averaged) at which a region counts as moving (weight 0).
DEFAULT_STABILIZE_STRENGTH = 0.7
DEFAULT_STATIC_THRESHOLD = 0.06
#: Stabiliser motion estimate: long side of the thumbnail for the integer (phase-correlation)
#: search, long side at most this for the sub-pixel refinement, and the LR margin (px) near the
#: frame border where a moved previous output is never blended (models treat borders by position).
MOTION_SEARCH_SIZE = 128
MOTION_REFINE_SIZE = 512
MOTION_EDGE = 4
#: Motions below this (LR px, either axis) count as none: a still camera's estimate wanders by
#: a few thousandths of a pixel with noise, and resampling the past for that only blurs it.
MOTION_MIN = 0.02


@dataclass(frozen=True)
class VideoOptions:
    """What decides a video's output pixels besides the model and the frames.

    `upscale`: the per-frame options (tiles, precision, device, target size ...). `temporal`: one
    of `TEMPORAL_MODES`. `strength`: feedback alpha (default the model's, 0.2) or stabiliser
    weight of the previous output in static regions (default 0.7), both in [0, 1).
    `first_frame`: feedback on the first frame, `none` or `zeros`. `scene_cut`: threshold of the
    cut test (None or 0: never reset). `static_threshold`: the stabiliser's motion threshold.
    `motion_compensation`: the stabiliser follows global camera motion (False: plain blend).
    """

    upscale: UpscaleOptions = field(default_factory=UpscaleOptions)
    temporal: TemporalMode = "auto"
    strength: float | None = None
    first_frame: str = "none"
    scene_cut: float | None = SCENE_CUT_THRESHOLD
    static_threshold: float = DEFAULT_STATIC_THRESHOLD
    motion_compensation: bool = True


def supports_feedback(descriptor: ImageModelDescriptor) -> bool:
    return bool(getattr(descriptor.model, "supports_temporal", False))


def resolve_temporal_mode(mode: str, descriptor: ImageModelDescriptor) -> str:
    """`auto` -> `feedback` for temporal models, else `stabilize`; checks the others."""
    if mode not in TEMPORAL_MODES:
        raise ValueError(f"temporal mode must be one of {', '.join(TEMPORAL_MODES)}, got '{mode}'")
    if mode == "auto":
        return "feedback" if supports_feedback(descriptor) else "stabilize"
    if mode == "feedback" and not supports_feedback(descriptor):
        raise ValueError(
            f"{descriptor.architecture.name} has no feature feedback (only ParagonSR2 does); use temporal mode "
            f"'stabilize' or 'auto'"
        )
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


def _gray(frame: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w) -> (1, 1, h, w) float32 luma (or the first channel)."""
    frame = frame.float()
    if frame.shape[1] >= 3:
        return 0.299 * frame[:, 0:1] + 0.587 * frame[:, 1:2] + 0.114 * frame[:, 2:3]
    return frame[:, 0:1]


def _pooled(gray: torch.Tensor, limit: int) -> tuple[torch.Tensor, int]:
    """Area-averaged by an integer factor so the long side is at most `limit`; (image, factor)."""
    factor = max(1, math.ceil(max(gray.shape[-2:]) / limit))
    return (F.avg_pool2d(gray, factor) if factor > 1 else gray), factor


def shift_image(image: torch.Tensor, dy: float, dx: float) -> torch.Tensor:
    """(B, C, H, W) content moved by (dy, dx) pixels (bicubic, edges replicated): out(y, x) = in(y - dy, x - dx)."""
    _, _, height, width = image.shape
    ys = (torch.arange(height, dtype=torch.float64, device=image.device) - dy + 0.5) * (2 / height) - 1
    xs = (torch.arange(width, dtype=torch.float64, device=image.device) - dx + 0.5) * (2 / width) - 1
    grid = (
        torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        .to(image.dtype)
        .expand(image.shape[0], -1, -1, -1)
    )
    return F.grid_sample(image, grid, mode="bicubic", padding_mode="border", align_corners=False)


def _phase_correlation(previous: torch.Tensor, current: torch.Tensor) -> tuple[int, int]:
    """Integer (dy, dx) with current ~ previous moved by it (Hann-windowed phase correlation)."""
    height, width = current.shape[-2:]
    window = torch.hann_window(height, periodic=False)[:, None] * torch.hann_window(width, periodic=False)[None]
    a = torch.fft.rfft2((previous[0, 0] - previous.mean()) * window)
    b = torch.fft.rfft2((current[0, 0] - current.mean()) * window)
    cross = b * a.conj()
    surface = torch.fft.irfft2(cross / (cross.abs() + 1e-9), s=(height, width))
    index = int(surface.argmax())
    dy, dx = divmod(index, width)
    return (dy - height if dy > height // 2 else dy), (dx - width if dx > width // 2 else dx)


def estimate_motion(previous: torch.Tensor, current: torch.Tensor, iterations: int = 12) -> tuple[float, float]:
    """Global translation (dy, dx) in pixels, sub-pixel, with `current ~ shift_image(previous, dy, dx)`.

    `previous`, `current`: (1, 1, h, w) gray (see `_gray`). An integer search by phase
    correlation on a <= `MOTION_SEARCH_SIZE` thumbnail, then Gauss-Newton (Lucas-Kanade)
    refinement on both frames slightly blurred (noise) at <= `MOTION_REFINE_SIZE`, with robust
    (Cauchy) weights so that a moving object does not drag the camera estimate, and a small
    ridge so that a direction without texture (aperture problem) stays at the integer estimate.
    Flat frames give (0, 0).
    """
    if previous.shape != current.shape or float(current.std()) < 1e-4 or float(previous.std()) < 1e-4:
        return 0.0, 0.0
    small_prev, factor = _pooled(previous, MOTION_SEARCH_SIZE)
    small_cur, _ = _pooled(current, MOTION_SEARCH_SIZE)
    iy, ix = _phase_correlation(small_prev, small_cur) if min(small_cur.shape[-2:]) >= 8 else (0, 0)
    a, refine = _pooled(previous, MOTION_REFINE_SIZE)
    b, _ = _pooled(current, MOTION_REFINE_SIZE)
    kernel = torch.tensor([0.25, 0.5, 0.25])
    kernel = (kernel[:, None] * kernel[None])[None, None]
    a = F.conv2d(F.pad(a, (1, 1, 1, 1), mode="replicate"), kernel)
    b = F.conv2d(F.pad(b, (1, 1, 1, 1), mode="replicate"), kernel)
    height, width = b.shape[-2:]
    dy, dx = iy * factor / refine, ix * factor / refine
    scale = None
    for step in range(iterations):
        moved = shift_image(a, dy, dx)
        both = moved + b  # gradients of both frames (symmetric): noise biases the step less
        gy = torch.zeros_like(moved)
        gx = torch.zeros_like(moved)
        gy[..., 1:-1, :] = (both[..., 2:, :] - both[..., :-2, :]) / 4
        gx[..., 1:-1] = (both[..., 2:] - both[..., :-2]) / 4
        error = b - moved
        margin_y, margin_x = min(height // 2 - 1, 2 + math.ceil(abs(dy))), min(width // 2 - 1, 2 + math.ceil(abs(dx)))
        valid = torch.zeros_like(moved)
        valid[..., margin_y : height - margin_y, margin_x : width - margin_x] = 1
        if valid.sum() < 16:
            return 0.0, 0.0
        if step >= 2:  # robust weights once the estimate is near
            if scale is None or step % 3 == 2:
                scale = max(1.4826 * float(error[valid > 0].abs().median()), 1e-4) * 2.5
            valid = valid / (1 + (error / scale).square())
        syy, sxx, sxy = (valid * gy * gy).sum(), (valid * gx * gx).sum(), (valid * gx * gy).sum()
        by, bx = (valid * gy * error).sum(), (valid * gx * error).sum()
        ridge = 1e-3 * float(syy + sxx) + 1e-12
        syy, sxx = syy + ridge, sxx + ridge
        det = float(syy * sxx - sxy * sxy)
        if det <= 0:
            break
        # error ~ -(step . gradient): solve the normal equations for the step
        step_y = -float(sxx * by - sxy * bx) / det
        step_x = -float(syy * bx - sxy * by) / det
        step_y, step_x = max(-1.0, min(1.0, step_y)), max(-1.0, min(1.0, step_x))
        dy, dx = dy + step_y, dx + step_x
        if abs(step_y) < 1e-3 and abs(step_x) < 1e-3 and step >= 4:
            break
    return dy * refine, dx * refine


class Stabilizer:
    """Model-agnostic temporal stabiliser: recursive blending of the motion-compensated previous
    output where the low-resolution input, after the same motion, did not change.

    Per frame, with LR input x_t, the model's output u_t and the previous result y_{t-1}:

        m   = estimate_motion(x_{t-1}, x_t)            global sub-pixel camera translation, LR px
        r'  = shift(r_{t-1}, m),  y' = shift(y_{t-1}, m * H/h)     the past moved to frame t
        d   = box3x3(mean_c |x_t - r'|)                LR change after motion, noise-averaged
        n   = min(median(d), threshold / 4)            the frame's noise floor
        w   = strength * clamp(1 - (d - n) / threshold, 0, 1)^2 * inside   weight of the past, per LR pixel
        r_t = w r' + (1 - w) x_t                       LR reference: what y_t shows, at LR
        y_t = up(w) y' + (1 - up(w)) u_t               up = bilinear to the output size

    The noise floor n (the median residual, i.e. that of the static majority of the frame,
    capped at a quarter of the threshold so that a failed motion estimate cannot open the gate
    wide) gives differences that are only noise the full weight; without it sensor noise alone
    held the weight near 0.6 of `strength`. `estimate_motion` is phase correlation (integer
    part) plus a robust Gauss-Newton refinement (sub-pixel, within about 0.01 px on a textured
    noisy frame); shifts are bicubic. `inside` is 0 where the moved past comes from outside the
    frame or from within `MOTION_EDGE` LR px of its border (models treat borders by position,
    so their border pixels do not move with the content) and 1 elsewhere. A motion below
    `MOTION_MIN` (0.02 LR px) on both axes counts as none: nothing is resampled and `inside` is
    1, so a still camera keeps the plain blend.

    Static regions (static after the camera motion is undone) average the model's frame-to-frame
    jitter over about 1 / (1 - strength) frames; wherever the content moved differently from the
    camera (objects, occlusions, parallax) or a motion estimate failed, d exceeds noise, w goes
    to 0 and the current output is kept as is, so moving edges do not smear. Comparing with the
    reference r (not the previous input) stops slow drift from accumulating lag: once the shown
    content is `threshold` away from the input, the past is dropped. `motion=False` gives the
    plain (uncompensated) blend. Flicker, PSNR and cost: benchmarks/README.md, "Video
    stabiliser" (`benchmarks/video.py`).
    """

    def __init__(
        self,
        strength: float = DEFAULT_STABILIZE_STRENGTH,
        threshold: float = DEFAULT_STATIC_THRESHOLD,
        motion: bool = True,
    ):
        if not 0 <= strength < 1:
            raise ValueError(f"stabiliser strength must be in [0, 1), got {strength}")
        if not threshold > 0:
            raise ValueError(f"stabiliser motion threshold must be positive, got {threshold}")
        self.strength, self.threshold, self.motion = strength, threshold, motion
        self.reset()

    def reset(self) -> None:
        self.reference: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None
        self.gray: torch.Tensor | None = None  # the previous LR frame, gray, for the motion estimate
        self.last_motion: tuple[float, float] = (0.0, 0.0)

    def __call__(self, lr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """lr (1, C, h, w), out (1, C', H, W) -> the stabilised out (written in place)."""
        lr = lr.to(out.device, torch.float32)
        gray = _gray(lr).cpu() if self.motion else None
        reference, previous, last_gray = self.reference, self.previous, self.gray
        if reference is None or previous is None or previous.shape != out.shape or reference.shape != lr.shape:
            self.reference, self.previous, self.gray = lr.clone(), out.clone(), gray
            self.last_motion = (0.0, 0.0)
            return out
        # gray frames exist exactly when motion is estimated
        dy, dx = estimate_motion(last_gray, gray) if last_gray is not None and gray is not None else (0.0, 0.0)
        self.gray, self.last_motion = gray, (dy, dx)
        inside: torch.Tensor | None = None
        if abs(dy) >= MOTION_MIN or abs(dx) >= MOTION_MIN:
            (h, w), (H, W) = lr.shape[-2:], out.shape[-2:]
            reference = shift_image(reference, dy, dx)
            previous = shift_image(previous, dy * H / h, dx * W / w)
            inside = _inside(h, w, dy, dx, lr.device)
        change = F.avg_pool2d((lr - reference).abs().mean(1, keepdim=True), 3, 1, 1, count_include_pad=False)
        floor = min(float(change.median()), self.threshold / 4)  # the residual's noise level
        weight = (1 - (change - floor) / self.threshold).clamp_(0, 1).square_().mul_(self.strength)
        if inside is not None:
            weight.mul_(inside)
        self.reference = reference.mul(weight).add_(lr * (1 - weight))
        weight = F.interpolate(weight, size=out.shape[-2:], mode="bilinear", align_corners=False)
        out.mul_(1 - weight).add_(previous * weight)
        self.previous = out.clone()
        return out


def _inside(height: int, width: int, dy: float, dx: float, device) -> torch.Tensor:
    """(1, 1, h, w): 1 where both an LR pixel and its source (y - dy, x - dx) are at least
    `MOTION_EDGE` px inside the frame."""

    def axis(size: int, d: float) -> torch.Tensor:
        position = torch.arange(size, dtype=torch.float32, device=device)
        lo, hi = MOTION_EDGE, size - 1 - MOTION_EDGE
        return ((position >= lo) & (position <= hi) & (position - d >= lo) & (position - d <= hi)).float()

    return (axis(height, dy)[:, None] * axis(width, dx)[None])[None, None]


class VideoUpscaler:
    """Upscales a stream of frames with state between calls (see the module docstring).

    `process(frames)` takes (B, C, H, W) (or (C, H, W)) frames in display order and returns
    (B, C, H', W') float32 on the output device. `reset()` forgets the state (a new video).
    """

    def __init__(self, descriptor: ImageModelDescriptor, options: VideoOptions = VideoOptions()):
        self.descriptor, self.options = descriptor, options
        self.mode = resolve_temporal_mode(options.temporal, descriptor)
        if options.first_frame not in FIRST_FRAME_CONVENTIONS:
            raise ValueError(
                f"first-frame convention must be one of {', '.join(FIRST_FRAME_CONVENTIONS)}, got "
                f"'{options.first_frame}'"
            )
        if options.scene_cut is not None and options.scene_cut < 0:
            raise ValueError(f"scene-cut threshold must be 0 or more, got {options.scene_cut}")
        up = options.upscale
        with devices.using(up.devices):
            self.device = resolve_device(up.device)
            self.dtype = resolve_dtype(up.precision, descriptor, self.device)
            self.output_device = resolve_device(up.output_device)
        if self.mode == "feedback":
            default = float(getattr(descriptor.model, "temporal_alpha", 0.2))
            self.alpha = default if options.strength is None else float(options.strength)
            if not 0 <= self.alpha < 1:
                raise ValueError(f"feedback strength (alpha) must be in [0, 1), got {self.alpha}")
        self.stabilizer = (
            Stabilizer(
                DEFAULT_STABILIZE_STRENGTH if options.strength is None else float(options.strength),
                options.static_threshold,
                options.motion_compensation,
            )
            if self.mode == "stabilize"
            else None
        )
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
            with devices.using(self.options.upscale.devices):
                self._plans[key] = plan_run(
                    self.descriptor, height, width, self.options.upscale.tiles, self.device, self.dtype
                )
        return self._plans[key]

    def _fixed_options(self, height: int, width: int) -> UpscaleOptions:
        """Per-frame options whose tiling is the planned grid (no per-frame auto decisions)."""
        plan = self.plan(height, width)
        tiles = replace(self.options.upscale.tiles, tile=plan.settings_tile, pad=plan.pad)
        return replace(self.options.upscale, tiles=tiles)

    # -- frames ---------------------------------------------------------------------------

    def process(
        self, frames: torch.Tensor, *, progress: ProgressFn | None = None, cancel: CancelFn | None = None
    ) -> torch.Tensor:
        with devices.using(self.options.upscale.devices):
            return self._process(frames, progress, cancel)

    def _process(self, frames: torch.Tensor, progress: ProgressFn | None, cancel: CancelFn | None) -> torch.Tensor:
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
        cut = (
            is_scene_cut(previous, small, self.options.scene_cut)
            if self.options.scene_cut
            else previous.shape != small.shape
        )
        self.cuts += int(cut)
        return cut

    def _process_feedback(self, frames, cuts, progress, cancel) -> torch.Tensor:
        descriptor, options = self.descriptor, self.options.upscale
        batch, channels, height, width = frames.shape
        if channels != descriptor.input_channels:
            raise ImageError(
                f"feature feedback needs frames with the model's {descriptor.input_channels} channels, got "
                f"{channels}; use temporal mode 'stabilize'"
            )
        target = options.target.output_size(height, width, descriptor.scale)
        if passes_needed(descriptor.scale, (height, width), target, options.max_passes) > 1:
            raise ValueError(
                f"feature feedback runs the model once per frame; {target[1]}x{target[0]} needs more than one "
                f"{descriptor.scale}x pass (use temporal mode 'stabilize' or a smaller size)"
            )
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
        """One frame through the model with the carried feature (the runner's tile loop, with
        `FeatureFeedback` as its carry); replaces the feature. A tile halved after running out
        of memory is kept for the frames that follow."""
        height, width = frame.shape[-2:]
        plan = self.plan(height, width)
        settings = replace(self._fixed_options(height, width).tiles, batch=plan.batch)
        carry = FeatureFeedback(
            self._feature,
            self.alpha,
            self.descriptor.model.num_feat,
            zeros_first=self.options.first_frame == "zeros",
            device=self.device,
        )

        def replanned(tile: int, pad: int) -> None:
            smaller = replace(self.options.upscale.tiles, tile=tile, pad=pad)
            self._plans[(height, width)] = plan_run(self.descriptor, height, width, smaller, self.device, self.dtype)

        output = run_tiled(
            self.descriptor,
            frame,
            settings=settings,
            device=self.device,
            dtype=self.dtype,
            output_device=self.output_device,
            progress=progress,
            cancel=cancel,
            carry=carry,
            replanned=replanned,
        )
        self._feature = carry.feature
        return output


class FeatureFeedback:
    """The runner's `Carry` for feature feedback: the previous frame's LR feature map, cut per
    window and blended into the current frame's inside the model (`prev_feat`, `alpha`), and the
    current frame's features pasted core by core into the map the next frame reads (crop merge
    at LR, so tiled feedback equals untiled for convolutional variants)."""

    def __init__(
        self, previous: torch.Tensor | None, alpha: float, channels: int, zeros_first: bool, device: torch.device
    ):
        self.previous, self.alpha, self.channels, self.zeros_first, self.device = (
            previous,
            alpha,
            channels,
            zeros_first,
            device,
        )
        self.feature = torch.empty(0)

    def begin(self, image: torch.Tensor) -> None:
        batch, _, height, width = image.shape
        self.feature = torch.empty(batch, self.channels, height, width, dtype=torch.float32, device=self.device)
        if self.previous is not None and self.previous.shape != self.feature.shape:
            self.previous = None  # the frame size changed: nothing to carry
        if self.previous is None and self.zeros_first:
            self.previous = torch.zeros_like(self.feature)

    def forward(self, forward, x: torch.Tensor, group) -> torch.Tensor:
        prev = None
        if self.previous is not None:
            layout = (
                torch.channels_last
                if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                else torch.contiguous_format
            )
            cuts = [self.previous[b, :, t.window.y0 : t.window.y1, t.window.x0 : t.window.x1] for t, b in group]
            prev = torch.stack(cuts).to(x.device, x.dtype).contiguous(memory_format=layout)
        result, feature = forward(x, feature_tap=True, prev_feat=prev, alpha=self.alpha)
        for (t, b), values in zip(group, feature):
            _paste_core(self.feature[b], values.float(), t, 1)
        return result


def upscale_frames(
    descriptor: ImageModelDescriptor, frames: torch.Tensor, options: VideoOptions = VideoOptions(), **kwargs
) -> torch.Tensor:
    """One-shot helper: a fresh `VideoUpscaler` over a (T, C, H, W) clip, one frame at a time."""
    runner = VideoUpscaler(descriptor, options)
    first = runner.process(frames[:1], **kwargs)
    out = first.new_empty((frames.shape[0], *first.shape[1:]))
    out[:1] = first
    for i in range(1, frames.shape[0]):
        out[i : i + 1] = runner.process(frames[i : i + 1], **kwargs)
    return out
