"""Video files in and out with PyAV, one frame at a time.

`upscale_video_file` decodes a video, streams its frames through a `VideoUpscaler` and encodes
the results as they come, so a long video never has to fit in memory. Audio packets are copied
unchanged (no re-encode, no quality loss); frame timestamps are kept, so the frame rate (also a
variable one) is the source's. The file is written under a temporary name in the target folder
and renamed at the end: an error or an interrupt leaves no partial output.

PyAV (`pip install av`, the `video` extra) is imported only when a video is read or written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, cast

import numpy as np
import torch
from spandrel import ImageModelDescriptor

from ..errors import TilewiseError

if TYPE_CHECKING:  # PyAV is imported only when a video is opened
    from av.video.stream import VideoStream
from ..run.runner import CancelFn
from ..storage import exclusive_file
from .temporal import VideoOptions, VideoUpscaler

FrameProgressFn = Callable[[int, "int | None"], None]
DEFAULT_CODECS = ("libx264", "mpeg4")
DEFAULT_FPS = Fraction(25)


class VideoIOError(TilewiseError):
    """A video that cannot be read or written (bad file, missing PyAV, unsupported codec)."""


@dataclass(frozen=True)
class VideoReport:
    frames: int
    width: int
    height: int
    fps: float
    mode: str
    cuts: int
    audio: bool


def import_av():
    try:
        import av
    except ImportError:
        raise VideoIOError("video needs PyAV: pip install av (or the tilewise[video] extra)") from None
    return av


def frame_to_tensor(frame) -> torch.Tensor:
    """A PyAV VideoFrame -> (1, 3, H, W) float32 RGB in [0, 1]."""
    array = frame.to_ndarray(format="rgb24")
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().div_(255)


def tensor_to_frame(image: torch.Tensor):
    """(1, 3, H, W) float in [0, 1] -> a PyAV rgb24 VideoFrame (rounded to 8 bits)."""
    av = import_av()
    array = image[0].clamp(0, 1).mul(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")


def _frame_count(stream) -> int | None:
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base and stream.average_rate:
        return int(round(float(stream.duration * stream.time_base * stream.average_rate)))
    return None


def _pick_codec(av, requested: str | None, container_format: str) -> str:
    if requested:
        try:
            av.codec.Codec(requested, "w")
        except Exception:
            raise VideoIOError(f"no video encoder named '{requested}' in this PyAV build") from None
        return requested
    for name in DEFAULT_CODECS:
        if name in av.codecs_available:
            if name == "libx264" and container_format in ("webm", "ogg"):
                continue
            return name
    return "libvpx-vp9" if container_format == "webm" else "mpeg4"


def upscale_video_file(
    descriptor: ImageModelDescriptor,
    source: Path,
    destination: Path,
    options: VideoOptions = VideoOptions(),
    *,
    codec: str | None = None,
    crf: int = 18,
    progress: FrameProgressFn | None = None,
    cancel: CancelFn | None = None,
    frames_from: Callable[[], "Iterator[torch.Tensor]"] | None = None,
) -> VideoReport:
    """Upscales every frame of `source` into `destination` (native model scale); audio copied.
    `cancel` is checked between tiles (the engine's CancelledError; no partial file is left).

    `frames_from`: the upscaled frames come from this iterator, in display order, instead of
    from the model (the frames of segments upscaled elsewhere, `segments.join`); the source still
    gives the timing and the audio, so the file is written exactly as a local run writes it."""
    av = import_av()
    source, destination = Path(source), Path(destination)
    try:
        container = av.open(str(source))
    except Exception as error:
        raise VideoIOError(f"{source}: cannot read this as a video ({error})") from None
    with container:
        if not container.streams.video:
            raise VideoIOError(f"{source}: has no video stream")
        video_in = container.streams.video[0]
        video_in.thread_type = "AUTO"
        audio_in = container.streams.audio[0] if container.streams.audio else None
        runner = VideoUpscaler(descriptor, options)
        ready = frames_from() if frames_from is not None else None
        scale = descriptor.scale
        width, height = video_in.codec_context.width * scale, video_in.codec_context.height * scale
        rate = video_in.average_rate or video_in.guessed_rate or DEFAULT_FPS
        total = _frame_count(video_in)
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = exclusive_file(destination.parent, destination.suffix)  # never a planted link
        frames = 0
        try:
            try:
                output = av.open(str(temporary), "w")
            except Exception as error:
                raise VideoIOError(
                    f"{destination}: cannot write this kind of video file ({error}); use .mp4, .mkv or .mov"
                ) from None
            with output:
                name = _pick_codec(av, codec, output.format.name.split(",")[0])
                video_out = cast("VideoStream", output.add_stream(name, rate=rate))  # a video codec's name
                video_out.width, video_out.height = width, height
                # Frames keep their source timestamps, in the source's time base: with the
                # encoder's default 1/rate, the frames of a variable-frame-rate video fall on
                # the same tick and the muxer refuses the file ("non monotonically increasing dts").
                if video_in.time_base:
                    video_out.codec_context.time_base = video_in.time_base
                odd = width % 2 or height % 2
                video_out.pix_fmt = "yuv444p" if odd and name == "libx264" else "yuv420p"
                if name == "libx264":
                    video_out.options = {"crf": str(crf)}
                audio_out = output.add_stream_from_template(audio_in) if audio_in is not None else None

                last_pts = None

                def encode(frame) -> None:
                    nonlocal frames, last_pts
                    if ready is None:
                        result = runner.process(frame_to_tensor(frame), cancel=cancel)
                    else:
                        result = next(ready, None)
                        if result is None:
                            raise VideoIOError(f"{source}: the upscaled segments hold fewer frames than the video")
                    encoded = tensor_to_frame(result)
                    if frame.pts is not None:
                        pts = frame.pts if last_pts is None or frame.pts > last_pts else last_pts + 1  # repeated stamps
                        encoded.pts, encoded.time_base, last_pts = pts, frame.time_base, pts
                    for packet in video_out.encode(encoded):
                        output.mux(packet)
                    frames += 1
                    if progress is not None:
                        progress(frames, total)

                streams = [video_in] + ([audio_in] if audio_in is not None else [])
                for packet in container.demux(*streams):
                    if audio_out is not None and packet.stream is audio_in:
                        if packet.dts is None:  # the demuxer's flush packet
                            continue
                        packet.stream = audio_out
                        output.mux(packet)
                        continue
                    for frame in packet.decode():
                        encode(frame)
                for packet in video_out.encode(None):
                    output.mux(packet)
            if frames == 0:
                raise VideoIOError(f"{source}: no video frames could be decoded")
            os.replace(temporary, destination)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return VideoReport(frames, width, height, float(rate), runner.mode, runner.cuts, audio_in is not None)
