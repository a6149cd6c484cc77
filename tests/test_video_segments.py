"""A video cut into segments (for several machines) gives the single run's frames: each segment
starts its temporal state `WARMUP` frames early, and the join keeps the source's timing and audio."""

from __future__ import annotations

import av
import numpy as np
import pytest
from clips import describe_video, make_video
from tilewise.engine import UpscaleOptions, VideoOptions, VideoUpscaler, load_model
from tilewise.engine.video import segments
from tilewise.engine.video.files import frame_to_tensor, tensor_to_frame

MODEL = "builtin:paragonsr2-realtime-2x"  # has feature feedback


def single_run(model, source, options) -> list[np.ndarray]:
    runner = VideoUpscaler(model, options)
    with av.open(str(source)) as container:
        return [
            tensor_to_frame(runner.process(frame_to_tensor(frame))).to_ndarray(format="rgb24")
            for frame in container.decode(video=0)
        ]


@pytest.mark.parametrize("temporal, tolerance", [("feedback", 0), ("stabilize", 1)])
def test_segments_give_the_single_run_frames_after_warm_up(tmp_path, temporal, tolerance):
    source = make_video(tmp_path / "clip.mp4", frames=48, fps=12)
    model = load_model(MODEL)
    options = VideoOptions(upscale=UpscaleOptions(device="cpu", output_device="cpu"), temporal=temporal)
    video = segments.index(source)
    plan = segments.plan(video, 3)
    assert len(plan) == 3 and plan[0].start == 0 and plan[-1].stop == 48
    assert all(a.stop == b.start for a, b in zip(plan, plan[1:])) and plan[1].warm_start < plan[1].start
    parts = []
    for number, segment in enumerate(plan):
        parts.append(tmp_path / f"part{number}.mkv")
        assert (
            segments.upscale_segment(model, source, segment, video, options, parts[-1]) == segment.stop - segment.start
        )
    joined = [frame[0].permute(1, 2, 0).mul(255).round().byte().numpy() for frame in segments.segment_frames(parts)]
    expected = single_run(model, source, options)
    assert len(joined) == len(expected) == 48
    worst = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(joined, expected))
    assert worst <= tolerance, f"frames differ by {worst}/255 at the joins"
    out = segments.join(model, source, parts, tmp_path / "up.mp4", options)
    info = describe_video(tmp_path / "up.mp4")
    assert out.frames == 48 and info["frames"] == 48 and info["audio"], info


def two_shot_clip(path, frames: int = 40, cut: int = 23):
    """A clip whose picture changes completely at frame `cut` (two shots), H.264 with a keyframe
    only at the start: the cut is not where the encoder put a keyframe."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=12)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        if codec == "libx264":
            video.options = {"g": "1000", "sc_threshold": "0"}
        for i in range(frames):
            colour = (40, 80, 120) if i < cut else (220, 200, 30)
            image = np.full((24, 32, 3), colour, np.uint8)
            image[4:12, 2 + i % 20 : 10 + i % 20] = 255 - np.array(colour, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize("temporal", ["feedback", "stabilize"])
def test_a_segment_that_starts_on_a_scene_cut_needs_no_warm_up(tmp_path, temporal):
    source = two_shot_clip(tmp_path / "shots.mp4")
    model = load_model(MODEL)
    options = VideoOptions(upscale=UpscaleOptions(device="cpu", output_device="cpu"), temporal=temporal)
    video = segments.index(source)
    cuts = segments.scene_cuts(source, options.scene_cut)
    assert cuts == [23]
    plan = segments.plan(video, 2, cuts=cuts)
    assert [(s.start, s.warm_start) for s in plan] == [(0, 0), (23, 23)], "cut at the shot change, no warm-up"
    parts = [tmp_path / f"part{n}.mkv" for n in range(2)]
    for segment, part in zip(plan, parts):
        segments.upscale_segment(model, source, segment, video, options, part)
    joined = [f[0].permute(1, 2, 0).mul(255).round().byte().numpy() for f in segments.segment_frames(parts)]
    for got, want in zip(joined, single_run(model, source, options), strict=True):
        np.testing.assert_array_equal(got, want)
