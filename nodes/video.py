"""Video nodes: an IMAGE batch as frames (`TilewiseUpscaleVideo`) and ComfyUI's VIDEO type
streamed through PyAV (`TilewiseUpscaleVideoFile`), both on the engine's `VideoUpscaler`.

Continuity across executions (VideoHelperSuite's Meta Batch Manager)
--------------------------------------------------------------------
VHS's "Meta Batch Manager" (`VHS_BatchManager`) splits a long video into chunks: its loader
yields `frames_per_batch` frames per execution and VHS re-queues the whole prompt until the
input is exhausted, so `TilewiseUpscaleVideo` runs once per chunk. The manager is one Python
object shared by every execution of the run; its loader sets `has_closed_inputs` on the
execution that delivers the last chunk, and VHS's Video Combine resets the manager after it.

The temporal state (the engine's `VideoUpscaler`) therefore lives in a module-level table keyed
by the node's `unique_id` (V3 node classes hold no state), and the `continuity` input decides
when an execution continues the previous one of the same node:

* `auto` (default): continue only inside one Meta Batch run, i.e. when `meta_batch` is
  connected, it is the same manager object as last time, the last execution was not the final
  chunk (`has_closed_inputs` was false after it), and model and options are unchanged. Without a
  `meta_batch` every execution is a whole video and nothing is kept, so running a workflow twice
  gives the same pixels twice.
* `continue`: continue from this node's previous execution whenever model and options are
  unchanged (for chunks fed by hand, e.g. a loader's skip_first_frames stepped by the user).
* `new video`: always start afresh.

A change of model or of any option always starts afresh; so does an interrupted or failed
execution (its state is dropped). The engine's scene-cut test still resets the state inside a
stream, so a chunk that is not, after all, the next one of the same shot is not blended with
the previous one. The table keeps at most `MAX_STREAMS` streams (least recently used dropped);
a finished Meta Batch run drops its entry at once.
"""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

import os
import tempfile
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..engine import (
    FIRST_FRAME_CONVENTIONS,
    SCENE_CUT_THRESHOLD,
    TEMPORAL_MODES,
    CancelledError,
    ImageError,
    TemporalMode,
    UpscaleOptions,
    VideoOptions,
    VideoUpscaler,
)
from . import host
from .options import TILE_WIDGETS, tile_input
from .upscale import check_inputs, tile_settings

CONTINUITY = ("auto", "continue", "new video")
OUTPUT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MAX_STREAMS = 8


@dataclass
class _Stream:
    runner: VideoUpscaler
    manager: object | None  # the VHS_BatchManager of the run (compared by identity)
    finished: bool  # the last execution delivered the final chunk


_streams: OrderedDict[str, _Stream] = OrderedDict()
_lock = threading.Lock()


def video_options(
    upscale_model,
    temporal_mode: TemporalMode = "auto",
    temporal_strength: float = -1.0,
    tile_size: int = 0,
    tile_padding: int = -1,
    merge: str = "crop",
    precision: str = "auto",
    tile_batch: int = 4,
    device: str = "auto",
    scene_cut: float = SCENE_CUT_THRESHOLD,
    first_frame: str = "none",
) -> tuple[torch.device, VideoOptions]:
    """The temporal and tile widgets both video nodes share, checked, as (processing device,
    the engine's options); the engine's output stays on the processing device (the temporal
    state lives there) and frames are copied to the CPU one by one."""
    check_inputs(upscale_model, tile_size)
    if first_frame not in FIRST_FRAME_CONVENTIONS:
        raise ValueError(f"first_frame must be one of {', '.join(FIRST_FRAME_CONVENTIONS)}, got '{first_frame}'")
    run_device = host.processing_device(device)
    upscale = UpscaleOptions(
        tiles=tile_settings(tile_size, tile_padding, merge, tile_batch),
        precision=precision,
        device=str(run_device),
        devices=host.devices(),
        output_device=str(run_device),
    )
    return run_device, VideoOptions(
        upscale=upscale,
        temporal=temporal_mode,
        strength=None if temporal_strength < 0 else float(temporal_strength),
        first_frame=first_frame,
        scene_cut=scene_cut if scene_cut > 0 else None,
    )


def _take_stream(key: str, descriptor, options: VideoOptions, continuity: str, meta_batch) -> VideoUpscaler:
    """The stream to continue for node `key`, or a fresh one (see the module docstring)."""
    if continuity not in CONTINUITY:
        raise ValueError(f"continuity must be one of {', '.join(CONTINUITY)}, got '{continuity}'")
    with _lock:
        stream = _streams.pop(key, None)
    if (
        stream is not None
        and continuity != "new video"
        and stream.runner.descriptor is descriptor
        and stream.runner.options == options
    ):
        if continuity == "continue":
            return stream.runner
        if meta_batch is not None and stream.manager is meta_batch and not stream.finished:
            return stream.runner
    return VideoUpscaler(descriptor, options)


def _keep_stream(key: str, runner: VideoUpscaler, continuity: str, meta_batch) -> None:
    finished = bool(getattr(meta_batch, "has_closed_inputs", False)) if meta_batch is not None else False
    if continuity == "new video" or (continuity == "auto" and (meta_batch is None or finished)):
        return
    with _lock:
        _streams[key] = _Stream(runner, meta_batch, finished)
        while len(_streams) > MAX_STREAMS:
            _streams.popitem(last=False)


def forget_streams() -> None:
    """Drops every kept stream (tests; frees the models they hold)."""
    with _lock:
        _streams.clear()


class _FrameTileProgress:
    """One ComfyUI bar over frames x tiles: the engine reports tiles within a frame."""

    def __init__(self, frames: int):
        self.frames, self.frame = frames, 0
        self.bar: comfy.utils.ProgressBar | None = None

    def __call__(self, done: int, total: int) -> None:
        bar = self.bar
        if bar is None:
            bar = self.bar = comfy.utils.ProgressBar(total * self.frames)
        bar.update_absolute(self.frame * total + done, total * self.frames)


def _tile_inputs() -> list:
    notes = {"tile_size": "The same grid is used for every frame."}
    return [tile_input(name, notes.get(name, "")) for name in TILE_WIDGETS]


def _temporal_inputs() -> list:
    return [
        io.Combo.Input(
            "temporal_mode",
            options=list(TEMPORAL_MODES),
            default="auto",
            tooltip="Keeps detail from flickering between frames. auto: the best mode for the model; feedback: "
            "ParagonSR2's own video mode; stabilize: blends still areas with the previous frame, following camera "
            "motion (any model); off: every frame on its own.",
        ),
        io.Float.Input(
            "temporal_strength",
            default=-1.0,
            min=-1.0,
            max=0.99,
            step=0.01,
            tooltip="How much of the previous frame carries over, from 0 to 0.99: higher is steadier, lower follows "
            "fast changes better. -1: the mode's default (feedback: the model's, 0.2; stabilize: 0.7).",
        ),
    ]


def _extra_temporal_inputs() -> list:
    return [
        io.Float.Input(
            "scene_cut",
            default=round(SCENE_CUT_THRESHOLD, 3),
            min=0.0,
            max=1.0,
            step=0.001,
            optional=True,
            tooltip="How different two frames must be to count as a scene cut, after which nothing carries over "
            "(mean gray change, 0 to 1); 0 = never.",
        ),
        io.Combo.Input(
            "first_frame",
            options=list(FIRST_FRAME_CONVENTIONS),
            default="none",
            optional=True,
            tooltip="Feedback mode on a shot's first frame: none matches ParagonSR2's PyTorch reference, zeros its "
            "TensorRT/ONNX exports.",
        ),
    ]


class TilewiseUpscaleVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TilewiseUpscaleVideo",
            display_name="Upscale Video Frames (Tilewise)",
            category="image/upscaling",
            description=(
                "Upscales video frames (an IMAGE batch) without flicker: each frame is upscaled without seams and "
                "steadied by the previous one (ParagonSR2's video mode, or a motion-aware stabiliser for any model), "
                "also across VideoHelperSuite Meta Batch chunks, so long videos work in pieces."
            ),
            inputs=[
                io.UpscaleModel.Input("upscale_model"),
                io.Image.Input("images", tooltip="The frames, in display order."),
                *_temporal_inputs(),
                *_tile_inputs(),
                io.Combo.Input(
                    "output_dtype",
                    options=list(OUTPUT_DTYPES),
                    default="fp32",
                    optional=True,
                    tooltip="fp16 halves the memory of the upscaled frames (ComfyUI's IMAGE is normally fp32).",
                ),
                *_extra_temporal_inputs(),
                io.Combo.Input(
                    "continuity",
                    options=list(CONTINUITY),
                    default="auto",
                    optional=True,
                    tooltip="auto: continue the state across the chunks of one Meta Batch run (meta_batch connected), "
                    "else every run is a new video; continue: always continue this node's previous run; new video: "
                    "always start afresh.",
                ),
                io.Custom("VHS_BatchManager").Input(
                    "meta_batch",
                    optional=True,
                    tooltip="VideoHelperSuite's Meta Batch Manager: keeps the temporal state across its chunks.",
                ),
            ],
            outputs=[io.Image.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(
        cls, upscale_model, images, output_dtype: str = "fp32", continuity: str = "auto", meta_batch=None, **widgets
    ) -> io.NodeOutput:
        """`widgets`: the temporal and tile widgets (see `video_options`)."""
        run_device, options = video_options(upscale_model, **widgets)
        if output_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output_dtype must be one of {', '.join(OUTPUT_DTYPES)}, got '{output_dtype}'")
        if images.ndim != 4 or images.shape[0] == 0:
            raise ImageError(f"images must be a non-empty IMAGE batch (T, H, W, C), got shape {tuple(images.shape)}")
        hidden = getattr(cls, "hidden", None)
        key = str(getattr(hidden, "unique_id", None) or "")
        runner = _take_stream(key, upscale_model, options, continuity, meta_batch)
        frames = images.shape[0]
        progress, cancel = _FrameTileProgress(frames), host.interrupted
        out: torch.Tensor | None = None
        with host.run_on(upscale_model, run_device):
            try:
                for t in range(frames):
                    host.raise_interrupt()  # per frame; the engine also stops between tiles
                    progress.frame = t
                    frame = images[t : t + 1].movedim(-1, 1)
                    result = runner.process(frame, progress=progress, cancel=cancel)[0].movedim(0, -1)
                    if out is None:  # the size is known after the first frame
                        out = torch.empty((frames, *result.shape), dtype=OUTPUT_DTYPES[output_dtype], device="cpu")
                    out[t].copy_(result)
            except CancelledError:
                host.raise_interrupt()
                raise
        _keep_stream(key, runner, continuity, meta_batch)  # only a completed chunk is continued
        return io.NodeOutput(out)


def _source_file(video, scratch: Path) -> Path:
    """A file PyAV can read for the VIDEO input: the file behind a VideoFromFile, else a
    temporary file (an in-memory VideoFromFile copied out; any other VIDEO, e.g. Create Video's
    VideoFromComponents, encoded by ComfyUI's own `save_to`: its frames are in RAM already)."""
    from comfy_api.latest import InputImpl

    path = scratch / f"source-{uuid.uuid4().hex[:12]}.mp4"
    if isinstance(video, InputImpl.VideoFromFile):
        source = video.get_stream_source()
        if isinstance(source, (str, os.PathLike)):
            return Path(source)
        source.seek(0)
        with open(path, "wb") as handle:
            while chunk := source.read(1 << 20):
                handle.write(chunk)
        return path
    video.save_to(str(path))
    return path


class TilewiseUpscaleVideoFile(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TilewiseUpscaleVideoFile",
            display_name="Upscale Video (Tilewise)",
            category="image/video",
            description=(
                "Upscales a whole video file without loading it into memory: one frame at a time, without seams or "
                "flicker, with its sound and timing kept. Connect Save Video to keep the result."
            ),
            inputs=[
                io.UpscaleModel.Input("upscale_model"),
                io.Video.Input("video"),
                *_temporal_inputs(),
                *_tile_inputs(),
                io.Int.Input(
                    "crf",
                    default=18,
                    min=0,
                    max=51,
                    step=1,
                    optional=True,
                    tooltip="H.264 quality (lower = better, larger).",
                ),
                *_extra_temporal_inputs(),
            ],
            outputs=[io.Video.Output()],
        )

    @classmethod
    def execute(cls, upscale_model, video, crf: int = 18, **widgets) -> io.NodeOutput:
        """`widgets`: the temporal and tile widgets (see `video_options`)."""
        from comfy_api.latest import InputImpl

        from ..engine import upscale_video_file  # imported when first used (PyAV)

        run_device, options = video_options(upscale_model, **widgets)
        folder = Path(folder_paths.get_temp_directory()) / "tilewise"
        folder.mkdir(parents=True, exist_ok=True)
        destination = folder / f"upscaled-{uuid.uuid4().hex[:12]}.mp4"
        bar: list[comfy.utils.ProgressBar] = []

        def progress(done: int, total: int | None) -> None:
            if not bar:
                bar.append(comfy.utils.ProgressBar(total or 0))
            bar[0].update_absolute(done, max(total or 0, done))
            host.raise_interrupt()  # per frame (and per tile through `cancel`); the engine removes the partial file

        with tempfile.TemporaryDirectory(dir=folder) as scratch, host.run_on(upscale_model, run_device):
            source = _source_file(video, Path(scratch))
            host.raise_interrupt()
            try:
                upscale_video_file(
                    upscale_model, source, destination, options, crf=crf, progress=progress, cancel=host.interrupted
                )
            except CancelledError:
                host.raise_interrupt()
                raise
        return io.NodeOutput(InputImpl.VideoFromFile(str(destination)))


NODES = [TilewiseUpscaleVideo, TilewiseUpscaleVideoFile]
