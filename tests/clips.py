"""Tiny video files for tests: written and described with PyAV (no Tilewise imports, so the
ComfyUI in-process checks can use it from ComfyUI's own environment)."""

from __future__ import annotations

from pathlib import Path


def make_video(path: Path, frames: int = 12, fps: int = 12, audio: bool = True) -> Path:
    """A tiny H.264 (or MPEG-4) clip, 32x24, with a moving bar and an optional 1 s sine in AAC (or MP2)."""
    import math

    import av
    import numpy as np

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        sound = None
        if audio:
            sound = out.add_stream("aac" if "aac" in av.codecs_available else "mp2", rate=22050)
            sound.layout = "mono"
        for i in range(frames):
            image = np.full((24, 32, 3), (40, 80, 120), np.uint8)
            image[4:12, 2 + 2 * i : 10 + 2 * i] = 230
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            rate, size = 22050, sound.codec_context.frame_size or 1152
            wave = (0.3 * np.sin(2 * math.pi * 440 * np.arange(rate) / rate)).astype(np.float32)[None]
            layout = "fltp" if sound.codec_context.name == "aac" else "s16"
            for start in range(0, rate - size, size):
                chunk = wave[:, start : start + size]
                frame = av.AudioFrame.from_ndarray(
                    chunk if layout == "fltp" else (chunk * 32767).astype(np.int16), format=layout, layout="mono"
                )
                frame.sample_rate, frame.pts = rate, start
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
    return path


def describe_video(path: Path) -> dict:
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {
            "size": (video.codec_context.width, video.codec_context.height),
            "rate": video.average_rate,
            "audio": [(a.codec_context.name, a.rate) for a in container.streams.audio],
        }
        info["frames"] = sum(1 for _ in container.decode(video=0))
    return info


#: Frame times (ms) of the variable-frame-rate clip: bursts and gaps, as phones record.
VFR_TIMES_MS = (0, 33, 40, 47, 120, 200, 207, 214, 400, 433)


def make_vfr_video(path: Path, times_ms: tuple[int, ...] = VFR_TIMES_MS) -> Path:
    """A variable-frame-rate H.264 (or MPEG-4) clip in Matroska, 32x24, frames at `times_ms`."""
    from fractions import Fraction

    import av
    import numpy as np

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream(codec, rate=30)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        video.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate(times_ms):
            image = np.full((24, 32, 3), (40, 80, 120), np.uint8)
            image[4:12, 2 + 2 * i : 10 + 2 * i] = 230
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
    return path


def frame_times(path: Path) -> list[float]:
    """Presentation times (seconds) of every decoded frame."""
    import av

    with av.open(str(path)) as container:
        return [float(frame.time) for frame in container.decode(video=0)]
