"""A video in segments, for upscaling on several machines with the temporal state of one run.

`plan` cuts a video into about `count` segments, at scene cuts where `scene_cuts` found one
near (a segment that starts on a cut needs no warm-up: one run drops its state there too), else
at keyframes. `upscale_segment` upscales the
frames [start, stop) of one segment, starting the temporal state `warmup` frames earlier (those
outputs are discarded), so the state at `start` is what a single run would have there: feature
feedback forgets the past geometrically (alpha 0.2 per frame) and the stabiliser with it
(strength 0.7 per frame: 0.7^30 is 2e-5 of a step), and a scene cut resets both outright. It
writes the frames losslessly (FFV1 in Matroska, RGB) to a file. `join` then writes the final
video from the source's timing and audio and the segments' frames, through the same writer as a
local run (`files.upscale_video_file`), so timestamps, audio and codec settings are the local
run's. Segments are processed independently; only the join is sequential (an encode of the
upscaled frames, no model work).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from spandrel import ImageModelDescriptor

from ..storage import exclusive_file
from .files import VideoIOError, VideoReport, frame_to_tensor, import_av, tensor_to_frame, upscale_video_file
from .temporal import VideoOptions, VideoUpscaler, is_scene_cut, thumbnail

#: Frames run before a segment's first one to bring the temporal state to where a single run has it.
WARMUP = 30


@dataclass(frozen=True)
class Segment:
    start: int  # first frame kept (display order)
    stop: int  # one past the last frame kept
    warm_start: int  # first frame run (start - warm-up, at least 0)
    seek_pts: int | None  # a keyframe at or before warm_start to seek to (None: decode from the start)


@dataclass(frozen=True)
class VideoIndex:
    pts: list[int]  # every frame's timestamp, in display order
    keyframes: list[int]  # display indices of keyframes


def index(source: str | Path) -> VideoIndex:
    """Frame timestamps and keyframes from the container alone (packets are read, not decoded)."""
    av = import_av()
    try:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None]
    except Exception as error:  # noqa: BLE001 - PyAV raises many kinds for a broken file
        raise VideoIOError(f"{source}: cannot read this as a video ({error})") from None
    packets.sort()
    pts = [p for p, _ in packets]
    return VideoIndex(pts, [i for i, (_, key) in enumerate(packets) if key])


def scene_cuts(source: str | Path, threshold: float | None) -> list[int]:
    """Display indices of the frames that start a new shot, by the same test a run applies
    (`temporal.is_scene_cut` on thumbnails); none when `threshold` is None or 0."""
    if not threshold:
        return []
    av = import_av()
    cuts, previous = [], None
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for number, frame in enumerate(container.decode(stream)):
            small = thumbnail(frame_to_tensor(frame))
            if previous is not None and is_scene_cut(previous, small, threshold):
                cuts.append(number)
            previous = small
    return cuts


def plan(video: VideoIndex, count: int, warmup: int = WARMUP, cuts: Sequence[int] = ()) -> list[Segment]:
    """About `count` segments of similar length, each starting on a scene cut where one is near
    (no warm-up then), else on a keyframe where one is near."""
    total = len(video.pts)
    if total == 0:
        return []
    count = max(1, min(count, total))
    keyframes = sorted(set(video.keyframes) | {0})
    reach = total / (2 * count)
    starts = [0]
    for part in range(1, count):
        target = round(part * total / count)
        near_cuts = [c for c in cuts if abs(c - target) <= reach]
        near_keys = [k for k in keyframes if abs(k - target) <= reach]
        if near_cuts:
            start = min(near_cuts, key=lambda c: abs(c - target))
        elif near_keys:
            start = min(near_keys, key=lambda k: abs(k - target))
        else:
            start = target
        if start > starts[-1]:
            starts.append(start)
    shots = set(cuts)
    segments = []
    for start, stop in zip(starts, starts[1:] + [total]):
        warm_start = start if start in shots else max(0, start - warmup)
        before = [k for k in keyframes if k <= warm_start]
        seek = video.pts[before[-1]] if before and before[-1] > 0 else None
        segments.append(Segment(start, stop, warm_start, seek))
    return segments


def upscale_segment(
    descriptor: ImageModelDescriptor,
    source: str | Path,
    segment: Segment,
    video: VideoIndex,
    options: VideoOptions,
    destination: str | Path,
) -> int:
    """Upscales the segment's frames into a lossless file at `destination` (atomically); returns
    the number of frames written (stop - start)."""
    av = import_av()
    destination = Path(destination)
    position = {pts: i for i, pts in enumerate(video.pts)}
    runner = VideoUpscaler(descriptor, options)
    temporary = exclusive_file(destination.parent, destination.suffix or ".mkv")
    written = 0
    try:
        with av.open(str(source)) as container, av.open(str(temporary), "w", format="matroska") as output:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if segment.seek_pts is not None:
                container.seek(segment.seek_pts, stream=stream, backward=True, any_frame=False)
            encoder = output.add_stream("ffv1", rate=stream.average_rate or 25)
            encoder.pix_fmt = "bgr0"
            encoder.width = stream.codec_context.width * descriptor.scale
            encoder.height = stream.codec_context.height * descriptor.scale
            done = False
            for packet in container.demux(stream):
                for frame in packet.decode():
                    at = position.get(frame.pts) if frame.pts is not None else None
                    if at is None or at < segment.warm_start:
                        continue
                    if at >= segment.stop:
                        done = True
                        break
                    result = runner.process(frame_to_tensor(frame))
                    if at >= segment.start:
                        out = tensor_to_frame(result)
                        out.pts = written
                        for encoded in encoder.encode(out):
                            output.mux(encoded)
                        written += 1
                if done:
                    break
            for encoded in encoder.encode(None):
                output.mux(encoded)
        if written != segment.stop - segment.start:
            raise VideoIOError(
                f"{source}: decoded {written} frames for frames {segment.start}-{segment.stop}; the video's "
                f"timestamps do not allow cutting it into segments (run it without --ray)"
            )
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return written


def segment_frames(paths: Sequence[str | Path]) -> Iterator[torch.Tensor]:
    """The frames of the segment files in order, as (1, 3, H, W) float tensors (exact: lossless)."""
    av = import_av()
    for path in paths:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame_to_tensor(frame)


def join(
    descriptor: ImageModelDescriptor,
    source: str | Path,
    parts: Sequence[str | Path],
    destination: str | Path,
    options: VideoOptions,
    *,
    codec: str | None = None,
    crf: int = 18,
) -> VideoReport:
    """The final video: the source's timing and audio, the segments' frames, the local writer."""
    return upscale_video_file(
        descriptor,
        Path(source),
        Path(destination),
        options,
        codec=codec,
        crf=crf,
        frames_from=lambda: segment_frames(parts),
    )
