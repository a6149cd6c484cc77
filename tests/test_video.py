"""Video: streamed frames, feature feedback, the stabiliser, scene cuts, bounded memory."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import PARAGONSR2_FIXTURES as FIXTURES
from conftest import photo
from safetensors.torch import load_file
from tilewise.engine import TileSettings, TilewiseError, UpscaleOptions, describe_state_dict, load_model, upscale
from tilewise.engine.video.temporal import (
    SCENE_CUT_THRESHOLD,
    Stabilizer,
    VideoOptions,
    VideoUpscaler,
    estimate_motion,
    is_scene_cut,
    resolve_temporal_mode,
    shift_image,
    thumbnail,
    upscale_frames,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-4


def paragon(name: str):
    return load_model(FIXTURES / f"paragonsr2_{name}.safetensors")


def vectors(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"paragonsr2_{name}.io.safetensors"))


def options(temporal: str = "off", tile: int = -1, **kwargs) -> VideoOptions:
    return VideoOptions(
        upscale=UpscaleOptions(tiles=TileSettings(tile=tile), device="cpu"), temporal=temporal, **kwargs
    )


def compact(seed: int = 0):
    """A seeded SRVGGNetCompact (2x): a model without feature feedback."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=2, upscale=2)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(0.5)
    return describe_state_dict(net.state_dict())


def panning_clip(frames: int, height: int = 90, width: int = 110) -> torch.Tensor:
    """(T, 3, H, W): a photograph crop moving by (2, 3) pixels a frame."""
    return torch.cat([photo("astronaut", 100 + 2 * i, 150 + 3 * i, height, width) for i in range(frames)])


# -- feature feedback ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["realtime_x2", "stream_x2", "photo_x2"])
def test_feedback_reproduces_the_upstream_video_outputs(name):
    """Outputs are images, clamped to [0, 1] as every run of the engine is (the reference's raw
    outputs reach below 0); the carried feature is not clamped, so frame 2 checks that too."""
    io = vectors(name)
    runner = VideoUpscaler(paragon(name), options("feedback", first_frame="none"))
    assert runner.mode == "feedback" and runner.alpha == 0.2
    first = runner.process(io["input"])
    assert (first - io["video_output1"].clamp(0, 1)).abs().max().item() <= TOLERANCE
    second = runner.process(io["input_frame2"])
    assert (second - io["video_output2"].clamp(0, 1)).abs().max().item() <= TOLERANCE
    assert runner.cuts == 0


def test_zeros_first_frame_blends_with_zeros():
    io = vectors("realtime_x2")
    descriptor = paragon("realtime_x2")
    with torch.no_grad():
        expected = descriptor.model(io["input"], prev_feat=descriptor.model.zero_feature(io["input"]))
    got = VideoUpscaler(descriptor, options("feedback", first_frame="zeros")).process(io["input"])
    assert (got - expected.clamp(0, 1)).abs().max().item() <= 1e-5
    assert (got - io["video_output1"].clamp(0, 1)).abs().max().item() > 1e-4  # a different convention indeed


@pytest.mark.parametrize("name", ["realtime_x2", "stream_x2"])
def test_tiled_feedback_equals_untiled_feedback(name):
    descriptor = paragon(name)
    clip = panning_clip(4)
    whole = upscale_frames(descriptor, clip, options("feedback", tile=-1))
    runner = VideoUpscaler(descriptor, options("feedback", tile=48))
    assert len(runner.plan(90, 110).tiles) > 1
    tiled = torch.cat([runner.process(clip[i : i + 1]) for i in range(4)])
    assert (tiled - whole).abs().max().item() <= 1e-5
    per_frame = upscale_frames(descriptor, clip, options("off"))
    assert (whole[1:] - per_frame[1:]).abs().max().item() > 1e-3  # the feedback did change frames 2..4


def test_feedback_resumes_with_smaller_tiles_after_out_of_memory(monkeypatch, caplog):
    """A whole-frame forward runs out of memory: the frame is re-planned with half its longest
    side (110 -> 55) and later frames keep that plan; the result still equals the untiled one."""
    descriptor = paragon("realtime_x2")
    clip = panning_clip(3)
    whole = upscale_frames(descriptor, clip, options("feedback", tile=-1))
    model = descriptor.model
    forward = model.forward
    sizes = []

    def limited(x, *args, **kwargs):
        sizes.append(tuple(x.shape[-2:]))
        if tuple(x.shape[-2:]) == (90, 110):
            raise torch.OutOfMemoryError("CPU out of memory. Tried to allocate 2.00 GiB")
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", limited)
    runner = VideoUpscaler(descriptor, options("feedback", tile=-1))
    resumed = torch.cat([runner.process(clip[i : i + 1]) for i in range(3)])
    assert sizes[0] == (90, 110) and (90, 110) not in sizes[1:]
    assert runner.plan(90, 110).tile == 55 and len(runner.plan(90, 110).tiles) > 1
    assert (resumed - whole).abs().max().item() <= 1e-5


def test_feedback_runs_through_the_image_tile_loop_with_its_precision_fallback(monkeypatch, caplog):
    """Feature feedback is not a tile loop of its own: a model that fails in bf16 falls back to
    autocast and then fp32 exactly as an image run does, the carried feature included, and the
    tiled result equals the whole-frame fp32 one."""
    descriptor = load_model(FIXTURES / "paragonsr2_realtime_x2.safetensors", cache=None)
    clip = panning_clip(3)
    whole = upscale_frames(descriptor, clip, options("feedback", tile=-1))
    model = descriptor.model
    forward = model.forward

    def no_bf16(x, *args, **kwargs):
        if x.dtype == torch.bfloat16 or torch.is_autocast_cpu_enabled():
            raise RuntimeError("expected scalar type Float but found BFloat16")
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", no_bf16)
    bf16 = VideoOptions(
        upscale=UpscaleOptions(tiles=TileSettings(tile=48), device="cpu", precision="bf16"), temporal="feedback"
    )
    with caplog.at_level("WARNING", logger="tilewise"):
        runner = VideoUpscaler(descriptor, bf16)
        tiled = torch.cat([runner.process(clip[i : i + 1]) for i in range(3)])
    messages = [r.getMessage() for r in caplog.records]
    assert any("continuing with torch.bfloat16 autocast" in m for m in messages) and any(
        "continuing in fp32" in m for m in messages
    )
    assert len(runner.plan(90, 110).tiles) > 1
    assert (tiled - whole).abs().max().item() <= 1e-5


def test_feedback_out_of_memory_below_the_smallest_tile_says_what_to_do(monkeypatch):
    descriptor = paragon("realtime_x2")

    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CPU out of memory")

    monkeypatch.setattr(descriptor.model, "forward", exhausted)
    with pytest.raises(
        TilewiseError,
        match=r"out of memory even with 27-pixel tiles on cpu; free memory \(close other programs\), use a smaller "
        r"model or image, or run on the CPU",
    ):
        upscale_frames(descriptor, panning_clip(1), options("feedback", tile=-1))


def test_feedback_batch_is_processed_in_order():
    descriptor = paragon("realtime_x2")
    clip = panning_clip(3, 40, 48)
    one_by_one = upscale_frames(descriptor, clip, options("feedback"))
    batched = VideoUpscaler(descriptor, options("feedback")).process(clip)
    assert (one_by_one - batched).abs().max().item() <= 1e-6


# -- off mode, modes, scene cuts -----------------------------------------------------------


def test_off_mode_equals_per_frame_upscale():
    descriptor = compact()
    clip = panning_clip(3, 50, 60)
    settings = UpscaleOptions(tiles=TileSettings(tile=32), device="cpu")
    runner = VideoUpscaler(descriptor, VideoOptions(upscale=settings, temporal="off"))
    for i in range(3):
        assert torch.equal(runner.process(clip[i : i + 1]), upscale(descriptor, clip[i : i + 1], settings))


def test_auto_mode_picks_feedback_only_for_temporal_models():
    assert resolve_temporal_mode("auto", compact()) == "stabilize"
    with pytest.raises(ValueError, match="no feature feedback"):
        resolve_temporal_mode("feedback", compact())
    with pytest.raises(ValueError, match="temporal mode must be"):
        resolve_temporal_mode("smooth", compact())
    assert resolve_temporal_mode("auto", paragon("realtime_x2")) == "feedback"


def test_scene_cut_test_ignores_noise_and_motion_but_not_equal_brightness_cuts():
    a = photo("astronaut", 0, 0, 120, 160)
    noisy = (a + 0.02 * torch.randn(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    moved = photo("astronaut", 4, 6, 120, 160)
    other = photo("coffee", 0, 0, 120, 160)
    other = other - other.mean() + a.mean()  # same mean brightness: upstream's test misses this cut
    assert not is_scene_cut(thumbnail(a), thumbnail(noisy), SCENE_CUT_THRESHOLD)
    assert not is_scene_cut(thumbnail(a), thumbnail(moved), SCENE_CUT_THRESHOLD)
    assert is_scene_cut(thumbnail(a), thumbnail(other), SCENE_CUT_THRESHOLD)


@pytest.mark.parametrize("mode", ["feedback", "stabilize"])
def test_scene_cut_resets_state(mode):
    descriptor = paragon("realtime_x2") if mode == "feedback" else compact()
    clip = panning_clip(3, 48, 64)
    cut = photo("coffee", 50, 80, 48, 64)
    runner = VideoUpscaler(descriptor, options(mode))
    for i in range(3):
        runner.process(clip[i : i + 1])
    after_cut = runner.process(cut)
    assert runner.cuts == 1
    fresh = VideoUpscaler(descriptor, options(mode)).process(cut)
    assert torch.equal(after_cut, fresh)


def test_without_the_cut_test_the_feature_leaks_into_the_new_shot():
    """What the scene-cut test is for, shown on feature feedback (the stabiliser's own motion
    test already drops the past on a cut, so there it cannot be shown)."""
    descriptor = paragon("realtime_x2")
    clip = panning_clip(3, 48, 64)
    cut = photo("coffee", 50, 80, 48, 64)
    fresh = VideoUpscaler(descriptor, options("feedback")).process(cut)
    leaky = VideoUpscaler(descriptor, options("feedback", scene_cut=None))
    for i in range(3):
        leaky.process(clip[i : i + 1])
    assert not torch.equal(leaky.process(cut), fresh)


def test_reset_forgets_the_state():
    descriptor = compact()
    clip = panning_clip(2, 40, 40)
    runner = VideoUpscaler(descriptor, options("stabilize"))
    first = runner.process(clip[:1])
    runner.process(clip[1:2])
    runner.reset()
    assert torch.equal(runner.process(clip[:1]), first)


# -- the stabiliser --------------------------------------------------------------------------


def _flicker(frames: torch.Tensor) -> float:
    return (frames[1:] - frames[:-1]).abs().mean().item()


def test_stabilizer_reduces_flicker_on_a_static_noisy_clip():
    descriptor = compact()
    still = photo("astronaut", 150, 150, 48, 64)
    generator = torch.Generator().manual_seed(1)
    clip = (still + 0.015 * torch.randn((10, 3, 48, 64), generator=generator)).clamp(0, 1)
    plain = upscale_frames(descriptor, clip, options("off"))
    steady = upscale_frames(descriptor, clip, options("stabilize"))
    assert _flicker(steady[3:]) < 0.5 * _flicker(plain[3:])
    clean = upscale(descriptor, still, UpscaleOptions(device="cpu"))
    assert (steady[3:] - clean).abs().mean() < (plain[3:] - clean).abs().mean()  # closer to the noise-free output


def test_stabilizer_does_not_smear_a_moving_edge():
    descriptor = compact()
    frames = []
    for step in range(6):  # a dark bar on a light background, moving 3 LR pixels a frame
        frame = torch.full((1, 3, 40, 64), 0.8)
        frame[..., 10 + 3 * step : 22 + 3 * step] = 0.2
        frames.append(frame)
    clip = torch.cat(frames)
    plain = upscale_frames(descriptor, clip, options("off"))
    steady = upscale_frames(descriptor, clip, options("stabilize"))
    difference = (steady - plain).abs()
    assert difference.max().item() < 0.02, difference.max().item()  # the current frame wins where anything moved


def test_stabilizer_weights():
    stabilizer = Stabilizer(strength=0.5, threshold=0.1)
    lr = torch.zeros(1, 3, 8, 8)
    first = stabilizer(lr, torch.zeros(1, 3, 16, 16))
    assert torch.equal(first, torch.zeros(1, 3, 16, 16))
    out = stabilizer(lr, torch.ones(1, 3, 16, 16))  # static input: half of the past
    assert torch.allclose(out, torch.full_like(out, 0.5))
    out = stabilizer(torch.ones(1, 3, 8, 8), torch.ones(1, 3, 16, 16))  # moved beyond the threshold
    assert torch.equal(out, torch.ones_like(out))
    with pytest.raises(ValueError):
        Stabilizer(strength=1.0)


def _gray(frame: torch.Tensor) -> torch.Tensor:
    return (0.299 * frame[:, 0:1] + 0.587 * frame[:, 1:2] + 0.114 * frame[:, 2:3]).float()


def _noisy(frame: torch.Tensor, generator: torch.Generator, sigma: float = 2.5 / 255) -> torch.Tensor:
    """Sensor noise and 8-bit quantisation."""
    return ((frame + sigma * torch.randn(frame.shape, generator=generator)).clamp(0, 1) * 255).round() / 255


def pan(
    frames: int, step: tuple[float, float], height: int = 64, width: int = 80, noise: float = 2.5 / 255, seed: int = 3
):
    """(T, 3, h, w) noisy frames of a photograph under a camera moving `step` px a frame (content moves by -step).

    Shifted at twice the size and downscaled with an antialiased bicubic, so that the frames are not aliased and the
    motion between them is well defined."""
    scene = photo("astronaut", 80, 100, 2 * height + 40, 2 * width + 40)
    generator = torch.Generator().manual_seed(seed)
    crops = [
        shift_image(scene, -2 * step[0] * t, -2 * step[1] * t)[..., 20 : 20 + 2 * height, 20 : 20 + 2 * width]
        for t in range(frames)
    ]
    small = [torch.nn.functional.interpolate(c, scale_factor=0.5, mode="bicubic", antialias=True) for c in crops]
    return torch.cat([_noisy(c.clamp(0, 1), generator, noise) for c in small])


@pytest.mark.parametrize("motion", [(0.3, -0.45), (1.7, 2.2), (-3.35, 0.05), (0.0, 0.0)])
def test_motion_estimate_recovers_a_sub_pixel_shift(motion):
    scene = photo("astronaut", 80, 130, 136, 168)
    generator = torch.Generator().manual_seed(0)
    before = _noisy(scene[..., 20:116, 20:148], generator)
    after = _noisy(shift_image(scene, *motion)[..., 20:116, 20:148].clamp(0, 1), generator)
    dy, dx = estimate_motion(_gray(before), _gray(after))
    assert abs(dy - motion[0]) < 0.1 and abs(dx - motion[1]) < 0.1, (dy, dx)
    assert abs(dy - motion[0]) < 0.02 and abs(dx - motion[1]) < 0.02, (dy, dx)  # in practice much better


def test_motion_estimate_ignores_a_moving_object_and_flat_frames():
    scene = photo("astronaut", 80, 130, 96, 128)
    patch = photo("coffee", 100, 100, 24, 24)
    before, after = scene.clone(), scene.clone()
    before[..., 30:54, 20:44] = patch
    after[..., 34:58, 30:54] = patch  # an object moving by (4, 10) over a still background
    dy, dx = estimate_motion(_gray(before), _gray(after))
    assert abs(dy) < 0.1 and abs(dx) < 0.1, (dy, dx)
    flat = torch.full((1, 1, 32, 32), 0.5)
    assert estimate_motion(flat, flat) == (0.0, 0.0)


def _warped_flicker(frames: torch.Tensor, step: tuple[float, float], scale: int = 2, border: int = 12) -> float:
    """Mean |y_t - y_{t-1} moved by the camera|, away from the borders."""
    total = 0.0
    for t in range(1, frames.shape[0]):
        moved = shift_image(frames[t - 1 : t], -step[0] * scale, -step[1] * scale)
        total += (frames[t : t + 1] - moved)[..., border:-border, border:-border].abs().mean().item()
    return total / (frames.shape[0] - 1)


def test_stabilizer_follows_a_panning_camera():
    descriptor = compact()
    step = (0.35, 0.55)
    clip = pan(12, step)
    plain = upscale_frames(descriptor, clip, options("off"))
    steady = upscale_frames(descriptor, clip, options("stabilize"))
    unaligned = upscale_frames(descriptor, clip, options("stabilize", motion_compensation=False))
    assert _warped_flicker(steady[2:], step) < 0.5 * _warped_flicker(plain[2:], step)
    assert _warped_flicker(unaligned[2:], step) > 0.8 * _warped_flicker(plain[2:], step)  # the plain blend cannot
    stabilizer = Stabilizer()
    for t in range(3):
        stabilizer(clip[t : t + 1], upscale(descriptor, clip[t : t + 1], UpscaleOptions(device="cpu")))
    # within 0.1 px: the clip's own bicubic resampling moves fine texture by a few hundredths of a pixel more or less
    assert abs(stabilizer.last_motion[0] + step[0]) < 0.1 and abs(stabilizer.last_motion[1] + step[1]) < 0.1


def test_panning_stabilizer_moves_towards_the_noise_free_output():
    # a trained model: its output is a natural image, which bicubic resampling barely alters
    # (the seeded test models output near-random texture, which no resampling can keep)
    descriptor = load_model("builtin:paragonsr2-realtime-2x")
    step = (0.35, 0.55)
    clean = upscale_frames(descriptor, pan(12, step, noise=0.0), options("off"))
    plain = upscale_frames(descriptor, pan(12, step), options("off"))
    steady = upscale_frames(descriptor, pan(12, step), options("stabilize"))
    crop = (slice(2, None), ..., slice(12, -12), slice(12, -12))
    assert (steady - clean)[crop].abs().mean() < 0.85 * (plain - clean)[crop].abs().mean()


def test_stabilizer_does_not_smear_an_object_moving_against_the_camera():
    descriptor = compact()
    step = (0.0, 0.5)
    clip = pan(8, step, height=56, width=72, noise=1 / 255)
    patch = photo("coffee", 100, 100, 16, 16) * 0.5
    for t in range(clip.shape[0]):
        clip[t, :, 20:36, 50 - 4 * t : 66 - 4 * t] = patch[0]  # moves left 4 px a frame, the scene 0.5 px
    plain = upscale_frames(descriptor, clip, options("off"))
    steady = upscale_frames(descriptor, clip, options("stabilize"))
    for t in range(2, clip.shape[0]):
        x0 = 2 * (50 - 4 * t)
        region = (slice(t, t + 1), ..., slice(2 * 20, 2 * 36), slice(max(0, x0 - 4), x0 + 2 * 16 + 8))
        assert (steady - plain)[region].abs().mean().item() < 0.01
        assert (steady - plain)[region].abs().max().item() < 0.1


# -- memory ------------------------------------------------------------------------------------


def _rss_mib() -> float:
    from tilewise.engine.compute.devices import resident_bytes

    return resident_bytes() / 2**20  # psutil: every platform, never a silent 0


@pytest.mark.parametrize("mode", ["stabilize", "feedback"])
def test_memory_stays_flat_over_300_frames(mode):
    descriptor = paragon("realtime_x2") if mode == "feedback" else compact()
    runner = VideoUpscaler(descriptor, options(mode, tile=24))
    base = photo("astronaut", 200, 200, 40, 48)
    generator = torch.Generator().manual_seed(2)
    samples: list[tuple[int, float]] = []
    done = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((done[0], _rss_mib()))
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        for i in range(300):
            frame = (base + 0.01 * torch.randn(base.shape, generator=generator)).clamp(0, 1)
            out = runner.process(frame)
            assert out.shape == (1, 3, 80, 96)
            done[0] = i + 1
    finally:
        stop.set()
        thread.join()
    first = max(rss for frame, rss in samples if frame < 60)
    last = max(rss for frame, rss in samples if frame >= 240)
    assert last - first < 40, (first, last)


# -- video files and the CLI ---------------------------------------------------------------

from clips import VFR_TIMES_MS, describe_video, frame_times, make_vfr_video, make_video  # noqa: E402


@pytest.fixture
def clip_file(tmp_path):
    pytest.importorskip("av")
    return make_video(tmp_path / "in.mp4")


@pytest.mark.parametrize("temporal", ["auto", "off", "stabilize"])
def test_cli_upscale_video_keeps_frames_rate_and_audio(clip_file, tmp_path, capsys, temporal):
    from tilewise.cli import main

    out = tmp_path / "out.mp4"
    assert main(["upscale-video", str(clip_file), "-o", str(out), "--device", "cpu", "--temporal", temporal]) == 0
    source, result = describe_video(clip_file), describe_video(out)
    assert result["frames"] == source["frames"] == 12
    assert result["rate"] == source["rate"] == 12
    assert result["size"] == (64, 48)
    assert result["audio"] == source["audio"] and len(result["audio"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]
    assert "12 frames" in capsys.readouterr().err


def test_cli_video_without_audio(tmp_path):
    pytest.importorskip("av")
    from tilewise.cli import main

    source = make_video(tmp_path / "silent.mkv", frames=5, fps=10, audio=False)
    out = tmp_path / "out.mkv"
    assert main(["upscale-video", str(source), "-o", str(out), "--device", "cpu", "-q"]) == 0
    info = describe_video(out)
    assert info["frames"] == 5 and info["rate"] == 10 and info["audio"] == []


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_variable_frame_rate_video_keeps_every_frame_time(tmp_path, suffix):
    """Phone videos are variable-frame-rate: every frame keeps its own time in the output (with
    the encoder's 1/rate time base they collided and the muxer refused the .mp4)."""
    pytest.importorskip("av")
    from tilewise.cli import main

    source = make_vfr_video(tmp_path / "vfr.mkv")
    out = tmp_path / f"out{suffix}"
    assert frame_times(source) == pytest.approx([t / 1000 for t in VFR_TIMES_MS], abs=1e-3)
    assert main(["upscale-video", str(source), "-o", str(out), "--model", "builtin:magic-kernel-sharp-2x", "-q"]) == 0
    assert frame_times(out) == pytest.approx(frame_times(source), abs=1e-3)


def test_cli_video_errors_exit_2_and_write_nothing(tmp_path, capsys):
    pytest.importorskip("av")
    from tilewise.cli import main

    bogus = tmp_path / "bogus.mp4"
    bogus.write_text("not a video")
    out = tmp_path / "out.mp4"
    assert main(["upscale-video", str(bogus), "-o", str(out)]) == 2
    assert main(["upscale-video", str(tmp_path / "missing.mp4"), "-o", str(out)]) == 2
    assert main(["upscale-video", str(bogus), "-o", str(out), "--temporal", "smooth"]) == 2
    assert main(["upscale-video", str(bogus), "-o", str(out), "--temporal-strength", "1.5"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 4 and all(line.startswith("tilewise: error:") for line in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bogus.mp4"]


def test_interrupted_video_leaves_no_partial_file(clip_file, tmp_path, monkeypatch):
    from tilewise.cli import main
    from tilewise.engine.video import temporal as video

    calls = [0]
    original = video.VideoUpscaler.process

    def interrupt_later(self, frames, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return original(self, frames, **kwargs)

    monkeypatch.setattr(video.VideoUpscaler, "process", interrupt_later)
    assert main(["upscale-video", str(clip_file), "-o", str(tmp_path / "out.mp4"), "--device", "cpu"]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def test_cli_video_never_replaces_a_file_unless_asked(clip_file, tmp_path, capsys):
    from tilewise.cli import main

    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier render")
    common = ["upscale-video", str(clip_file), "--model", "builtin:magic-kernel-sharp-2x", "-q"]
    assert main([*common, "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"an earlier render"
    assert main([*common, "-o", str(clip_file), "--overwrite"]) == 2, "never the input, even with --overwrite"
    assert main([*common, "-o", str(out), "--overwrite"]) == 0
    assert describe_video(out)["frames"] == 12
