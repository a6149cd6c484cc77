"""The tiled runner: seamless tiles, size requirements, precision fallback, OOM resume, cancel."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import photo
from spandrel import Architecture, ImageModelDescriptor, ModelTiling, SizeRequirements
from tilewise.engine import CancelledError, TileSettings, TilewiseError, run_tiled
from tilewise.engine.plan.planner import plan_run


class ConvNet(torch.nn.Module):
    """A small seeded conv net: 3 convs (radius 3) and a pixel-shuffle tail."""

    def __init__(self, scale: int = 2, channels: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 8, 3, padding=1),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Conv2d(8, channels * scale * scale, 3, padding=1),
        )
        self.shuffle = torch.nn.PixelShuffle(scale)
        self.scale = scale
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        base = torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest")
        return base + 0.1 * self.shuffle(self.body(x))


class FakeArch(Architecture):
    def __init__(self, name: str = "TestNet"):
        super().__init__(id=name, detect=lambda state_dict: False)

    def load(self, state_dict):
        raise NotImplementedError


def describe(
    model: torch.nn.Module, scale: int = 2, channels: int = 3, name: str = "TestNet", **kwargs
) -> ImageModelDescriptor:
    arch = FakeArch(name)
    options = {"supports_half": True, "supports_bfloat16": True, **kwargs}
    return ImageModelDescriptor(
        model,
        model.state_dict(),
        architecture=arch,
        purpose="SR",
        tags=[],
        scale=scale,
        input_channels=channels,
        output_channels=channels,
        **options,
    ).eval()


@pytest.fixture
def convnet():
    return describe(ConvNet())


def test_default_pad_is_the_exact_receptive_radius(convnet):
    plan = plan_run(convnet, 100, 100, TileSettings(tile=40), torch.device("cpu"))
    assert plan.pad == 3


@pytest.mark.parametrize("tile,batch", [(16, 1), (24, 3), (33, 4)])
def test_tiled_equals_untiled_at_odd_sizes(convnet, tile, batch):
    image = torch.cat([photo("astronaut", 10, 20, 53, 71), photo("coffee", 0, 0, 53, 71)])
    whole = run_tiled(convnet, image, settings=TileSettings(tile=-1))
    tiled = run_tiled(convnet, image, settings=TileSettings(tile=tile, batch=batch))
    assert tiled.shape == (2, 3, 106, 142)
    assert (tiled - whole).abs().max().item() <= 1e-5


def test_too_small_pad_shows_seams(convnet):
    """The comparison above can fail: without context, tile borders differ from the untiled run."""
    image = photo("astronaut", 10, 20, 53, 71)
    whole = run_tiled(convnet, image, settings=TileSettings(tile=-1))
    tiled = run_tiled(convnet, image, settings=TileSettings(tile=16, pad=0))
    assert (tiled - whole).abs().max().item() > 1e-3


def test_tiles_are_batched(convnet):
    image = photo("astronaut", 0, 0, 64, 64)
    convnet.model.calls.clear()
    run_tiled(convnet, image, settings=TileSettings(tile=24, pad=3, batch=4))
    assert max(shape[0] for shape in convnet.model.calls) == 4


def test_one_pixel_image(convnet):
    out = run_tiled(convnet, torch.full((1, 3, 1, 1), 0.5), settings=TileSettings(tile=16))
    assert out.shape == (1, 3, 2, 2)


def test_blend_merge_is_close_and_seamless(convnet):
    image = photo("astronaut", 100, 100, 60, 60)
    whole = run_tiled(convnet, image, settings=TileSettings(tile=-1))
    blended = run_tiled(convnet, image, settings=TileSettings(tile=32, pad=8, merge="blend"))
    # weights vanish over the outer pad/2 = 4 > radius 3 pixels, and sum to one elsewhere: exact
    assert (blended - whole).abs().max().item() < 1e-5
    rough = run_tiled(convnet, image, settings=TileSettings(tile=32, pad=4, merge="blend"))
    assert 1e-5 < (rough - whole).abs().max().item() < 0.02  # inexact margins now get some weight


class NeedsMultiple(torch.nn.Module):
    """Output depends on absolute position modulo 8 (like window attention): pads must align."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0 and min(x.shape[-2:]) >= 16
        ramp = (torch.arange(x.shape[-1], dtype=x.dtype) % 8 / 8).view(1, 1, 1, -1)
        return self.conv(x) * 0.5 + ramp * 0.1


@pytest.mark.parametrize("square", [False, True])
def test_size_requirements_are_respected(square):
    model = NeedsMultiple()
    descriptor = describe(model, scale=1, size_requirements=SizeRequirements(minimum=16, multiple_of=8, square=square))
    image = photo("astronaut", 0, 0, 45, 61)
    whole = run_tiled(descriptor, image, settings=TileSettings(tile=-1))
    tiled = run_tiled(descriptor, image, settings=TileSettings(tile=24, pad=2))
    assert whole.shape == tiled.shape == (1, 3, 45, 61)
    assert (tiled - whole).abs().max().item() <= 1e-5
    assert all(h % 8 == 0 and w % 8 == 0 and (h == w or not square) for h, w in model.seen)


def test_image_smaller_than_minimum():
    descriptor = describe(NeedsMultiple(), scale=1, size_requirements=SizeRequirements(minimum=16, multiple_of=8))
    assert run_tiled(descriptor, photo("astronaut", 0, 0, 3, 5), settings=TileSettings(tile=8)).shape == (1, 3, 3, 5)


def test_internal_tiling_runs_whole_image(convnet):
    descriptor = describe(ConvNet(), tiling=ModelTiling.INTERNAL)
    run_tiled(descriptor, photo("astronaut", 0, 0, 50, 40), settings=TileSettings(tile=16))
    assert descriptor.model.calls == [(1, 3, 50, 40)]


def test_discouraged_tiling_warns_once(caplog):
    descriptor = describe(ConvNet(), tiling=ModelTiling.DISCOURAGED, name="DiscouragedNet")
    with caplog.at_level(logging.WARNING, logger="tilewise"):
        for _ in range(2):
            run_tiled(descriptor, photo("astronaut", 0, 0, 50, 40), settings=TileSettings(tile=16))
    assert sum("uses global context" in r.message for r in caplog.records) == 1


class Overflows(torch.nn.Module):
    """Fine in fp32, but its intermediate (1e5 x input) overflows fp16's 65504 range."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.Conv2d(3, 3, 1, bias=False)
        self.down = torch.nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * 1e5)
            self.down.weight.copy_(torch.eye(3).view(3, 3, 1, 1) * 1e-5)

    def forward(self, x):
        return self.down(self.up(x))


def test_non_finite_tile_is_rerun_in_fp32():
    descriptor = describe(Overflows(), scale=1)
    image = photo("astronaut", 0, 0, 16, 16)
    with torch.no_grad():
        assert not torch.isfinite(copy.deepcopy(descriptor.model).half()(image.half())).all()  # the premise
    out = run_tiled(descriptor, image, settings=TileSettings(tile=-1), dtype=torch.float16)
    assert torch.isfinite(out).all()
    assert (out - image).abs().max().item() < 1e-4


class FailsOnCalls(ConvNet):
    """Raises `error` on the forwards numbered in `failing` (from 1); `fired` lists those that did."""

    def __init__(self, failing: set[int], error: type[BaseException] = torch.OutOfMemoryError):
        super().__init__()
        self.failing, self.error, self.count, self.fired = failing, error, 0, []

    def forward(self, x):
        self.count += 1
        if self.count in self.failing:
            self.fired.append(self.count)
            raise self.error("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_halves_tile_and_resumes_at_current_tile():
    image = photo("chelsea", 0, 0, 96, 96)
    clean = describe(ConvNet())
    want = run_tiled(clean, image, settings=TileSettings(tile=48, pad=3, batch=1))
    clean_calls = len(clean.model.calls)
    flaky = describe(FailsOnCalls({3}))
    got = run_tiled(flaky, image, settings=TileSettings(tile=48, pad=3, batch=1))
    assert (got - want).abs().max().item() <= 1e-6
    windows = flaky.model.calls
    assert windows[0][-1] > windows[-1][-1], "tiles after the failure are smaller"
    assert windows[:2] == clean.model.calls[:2], "finished tiles are not redone"
    assert len(windows) > clean_calls


def test_out_of_memory_at_minimum_tile_is_a_clear_error():
    flaky = describe(FailsOnCalls(set(range(1, 100))))
    with pytest.raises(TilewiseError, match="out of memory even with"):
        run_tiled(flaky, photo("chelsea", 0, 0, 64, 64), settings=TileSettings(tile=64, pad=3, batch=1))


def test_a_failing_tile_is_reported_with_its_place():
    from tilewise.engine import ModelRunError

    flaky = describe(FailsOnCalls({2}, error=ValueError))
    with pytest.raises(
        ModelRunError, match=r"TestNet failed on the tile at x=\d+, y=\d+ \(\d+x\d+\): ValueError"
    ) as error:
        run_tiled(flaky, photo("chelsea", 0, 0, 64, 64), settings=TileSettings(tile=32, pad=3, batch=1))
    assert isinstance(error.value.__cause__, ValueError)


def test_progress_counts_every_tile(convnet):
    reports = []
    run_tiled(
        convnet,
        photo("chelsea", 0, 0, 2, 2).expand(2, -1, -1, -1).contiguous(),
        settings=TileSettings(tile=-1),
        progress=lambda d, t: reports.append((d, t)),
    )
    assert reports == [(1, 2), (2, 2)]
    reports.clear()
    run_tiled(
        convnet,
        photo("chelsea", 0, 0, 64, 64),
        settings=TileSettings(tile=24, pad=3, batch=2),
        progress=lambda d, t: reports.append((d, t)),
    )
    total = reports[-1][1]
    assert [d for d, _ in reports] == list(range(1, total + 1)) and total > 4


def test_cancel_stops_within_one_tile(convnet):
    done = []
    convnet.model.calls.clear()
    with pytest.raises(CancelledError):
        run_tiled(
            convnet,
            photo("chelsea", 0, 0, 96, 96),
            settings=TileSettings(tile=24, pad=3, batch=1),
            progress=lambda d, t: done.append(d),
            cancel=lambda: len(done) >= 3,
        )
    assert len(convnet.model.calls) == 3


def test_wrong_channel_count_is_a_clear_error(convnet):
    from tilewise.engine import ImageError

    with pytest.raises(ImageError, match=r"expects \(B, 3, H, W\)"):
        run_tiled(convnet, torch.rand(1, 2, 8, 8))


def test_out_of_memory_in_an_untiled_run_tiles_with_a_margin():
    image = photo("chelsea", 0, 0, 64, 64)
    want = run_tiled(describe(ConvNet()), image, settings=TileSettings(tile=-1))
    flaky = describe(FailsOnCalls({1}))
    got = run_tiled(flaky, image, settings=TileSettings(tile=-1, batch=1))
    assert len(flaky.model.calls) > 1
    assert (got - want).abs().max().item() <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inference", [False, True])
def test_a_whole_image_run_returns_the_pasted_pixels_as_a_tensor_the_caller_owns(dtype, inference):
    """One window over the image: the model's result becomes the output without a paste, and is
    the same as a tiled run's; outside inference mode it stays a normal tensor a caller may
    change in place (the model itself runs in inference mode)."""
    image = torch.cat([photo("chelsea", 0, 0, 48, 56), photo("coffee", 0, 0, 48, 56)])
    tiled = run_tiled(describe(ConvNet()), image, settings=TileSettings(tile=24, pad=3), dtype=dtype)
    with torch.inference_mode(inference):
        for batch in (1, 2):  # CPU runs one window per forward: the 2-image run pastes
            whole = run_tiled(describe(ConvNet()), image, settings=TileSettings(tile=-1, batch=batch), dtype=dtype)
            assert whole.dtype == torch.float32 and whole.is_inference() == inference
            assert torch.equal(whole, tiled) if dtype == torch.float32 else (whole - tiled).abs().max() <= 1 / 64
            assert whole.min() >= 0 and whole.max() <= 1
            whole.mul_(0.5)  # in place: allowed in either mode


def test_out_of_memory_with_an_untileable_model_is_a_clear_error():
    flaky = describe(FailsOnCalls({1}), tiling=ModelTiling.INTERNAL)
    with pytest.raises(TilewiseError, match="cannot be tiled"):
        run_tiled(flaky, photo("chelsea", 0, 0, 32, 32))


@pytest.mark.parametrize(
    "given, error",
    [
        (10, "at least 16 pixels, got 10"),
        (-2, "got -2"),
        ("banana", "a number of pixels or auto"),
        (True, "got True"),
    ],
)
def test_tile_settings_are_validated_once_for_every_host(given, error):
    """One minimum and one message: the CLI, the ComfyUI nodes and the WebUI all call this."""
    from tilewise.engine import MIN_USER_TILE, TileSettingsError, tile_settings

    assert MIN_USER_TILE == 16
    with pytest.raises(TileSettingsError, match=error):
        tile_settings(given)
    assert tile_settings("auto") == tile_settings(0) == TileSettings(tile=0)
    assert tile_settings(16, pad=-1, batch=2) == TileSettings(tile=16, pad=None, batch=2)
    assert tile_settings(-1, pad=0).pad == 0
    for bad in ({"pad": -3}, {"batch": 0}, {"merge": "feather"}):
        with pytest.raises(TileSettingsError):
            tile_settings(32, **bad)


@pytest.mark.parametrize(
    "given, setting",
    [
        ({"tile": None}, "tile"),
        ({"tile": 256.0}, "tile"),
        ({"tile": (256,)}, "tile"),
        ({"tile": (0, 256)}, "tile"),
        ({"pad": "8"}, "pad"),
        ({"merge": "feather"}, "merge"),
        ({"batch": None}, "batch"),
    ],
)
def test_tile_settings_of_the_wrong_kind_fail_when_made_naming_the_setting(given, setting):
    """Python callers building `TileSettings` directly (not through `tile_settings`) get a clear
    error at once, not a TypeError from inside the planner; good values still pass."""
    from tilewise.engine import TileSettingsError

    with pytest.raises(TileSettingsError) as error:
        TileSettings(**given)
    assert error.value.setting == setting
    assert TileSettings(tile=(128, 256), pad=4, merge="blend", batch=2).tile == (128, 256)


def test_a_tile_of_10_is_refused_by_the_cli_with_the_engine_message(tmp_path, photo_png, capsys):
    """The same value and message in ComfyUI (comfy_inprocess_checks) and the WebUI (test_a1111)."""
    from tilewise import cli

    assert cli.main(["upscale", str(photo_png), "-o", str(tmp_path / "o.png"), "--tile", "10", "-q"]) == 2
    assert (
        "--tile: tile size must be 0 (automatic), -1 (whole image) or at least 16 pixels, got 10"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "o.png").exists()
