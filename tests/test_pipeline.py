"""`upscale`: channels (gray, RGBA, Y models, 4-channel models), target sizes and repeated passes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import photo
from test_runner import ConvNet, describe
from tilewise.engine import (
    ImageError,
    ScaleTarget,
    TileSettings,
    UpscaleOptions,
    passes_needed,
    resize,
    run_tiled,
    upscale,
)
from tilewise.engine.image.colour import luma, rgb_to_ycbcr, ycbcr_to_rgb

WHOLE = TileSettings(tile=-1)


@pytest.fixture(scope="module")
def model():
    return describe(ConvNet(scale=2))


def _options(**kwargs) -> UpscaleOptions:
    return UpscaleOptions(device="cpu", **kwargs)


def test_native_scale_equals_one_model_run(model):
    image = photo("astronaut", 0, 0, 30, 40)
    assert torch.equal(upscale(model, image, _options(tiles=WHOLE)), run_tiled(model, image, settings=WHOLE))


def test_gray_goes_through_rgb_model_and_back(model):
    gray = photo("camera", 100, 100, 20, 24)
    out = upscale(model, gray, _options(tiles=WHOLE))
    assert out.shape == (1, 1, 40, 48)
    want = luma(run_tiled(model, gray.expand(-1, 3, -1, -1), settings=WHOLE))
    assert torch.allclose(out, want, atol=1e-6)


@pytest.mark.parametrize("mode", ["resize", "model", "discard"])
def test_rgba_alpha_modes(model, mode):
    rgb = photo("astronaut", 50, 50, 20, 24)
    alpha = torch.linspace(0, 1, 24).view(1, 1, 1, 24).expand(1, 1, 20, 24)
    out = upscale(model, torch.cat([rgb, alpha], dim=1), _options(tiles=WHOLE, alpha=mode))
    colour = run_tiled(model, rgb, settings=WHOLE)
    assert torch.allclose(out[:, :3], colour, atol=1e-6), "alpha never changes the colour result"
    if mode == "discard":
        assert out.shape[1] == 3
    elif mode == "resize":
        assert torch.allclose(out[:, 3:], resize(alpha, 40, 48, "lanczos"), atol=1e-6)
    else:
        assert torch.allclose(
            out[:, 3:], luma(run_tiled(model, alpha.expand(-1, 3, -1, -1), settings=WHOLE)), atol=1e-6
        )


def test_gray_alpha_keeps_two_channels(model):
    out = upscale(model, torch.rand(1, 2, 9, 7), _options(tiles=WHOLE))
    assert out.shape == (1, 2, 18, 14)


def test_y_model_runs_on_luma_with_bicubic_chroma():
    ymodel = describe(ConvNet(scale=3, channels=1), scale=3, channels=1)
    image = photo("coffee", 100, 100, 16, 20)
    out = upscale(ymodel, image, _options(tiles=WHOLE))
    assert out.shape == (1, 3, 48, 60)
    ycc = rgb_to_ycbcr(image)
    y = run_tiled(ymodel, ycc[:, :1], settings=WHOLE)
    assert torch.allclose(rgb_to_ycbcr(out)[:, :1], y, atol=2e-3)  # equal up to the [0, 1] clip of RGB
    chroma = torch.nn.functional.interpolate(ycc[:, 1:], scale_factor=3, mode="bicubic", align_corners=False)
    want = ycbcr_to_rgb(torch.cat([y, chroma], 1)).clamp(0, 1)
    assert torch.allclose(out, want, atol=1e-6)
    # and a gray image goes straight in
    assert upscale(ymodel, image[:, :1], _options(tiles=WHOLE)).shape == (1, 1, 48, 60)


def test_ycbcr_round_trip():
    image = torch.rand(2, 3, 5, 5)
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(image)), image, atol=1e-5)


def test_four_channel_model_takes_rgba_whole():
    rgba_model = describe(ConvNet(scale=2, channels=4), scale=2, channels=4)
    image = torch.rand(1, 4, 10, 12, generator=torch.Generator().manual_seed(3))
    assert torch.equal(upscale(rgba_model, image, _options(tiles=WHOLE)), run_tiled(rgba_model, image, settings=WHOLE))
    assert upscale(rgba_model, image[:, :3], _options(tiles=WHOLE)).shape == (1, 3, 20, 24)


@pytest.mark.parametrize(
    "target,size",
    [
        (ScaleTarget("factor", factor=1.5), (30, 45)),
        (ScaleTarget("size", width=101, height=33), (33, 101)),
        (ScaleTarget("size", width=60), (40, 60)),
        (ScaleTarget("longest", longest=90), (60, 90)),
        (ScaleTarget("fit", width=90, height=50), (50, 75)),
        (ScaleTarget("fit", width=45, height=300), (30, 45)),
        (ScaleTarget("megapixels", megapixels=0.0054), (60, 90)),
        (ScaleTarget("factor", factor=0.5), (10, 15)),
    ],
)
def test_exact_target_sizes(model, target, size):
    out = upscale(model, photo("astronaut", 0, 0, 20, 30), _options(target=target))
    assert tuple(out.shape[-2:]) == size


@pytest.mark.parametrize("height,width", [(20, 30), (30, 20), (25, 25), (7, 1000), (333, 7), (479, 641)])
@pytest.mark.parametrize("side", [1, 17, 90, 1000, 4097])
def test_fit_inside_a_square_is_the_longest_side_to_the_pixel(height, width, side):
    fit = ScaleTarget("fit", width=side, height=side).output_size(height, width, 4)
    assert fit == ScaleTarget("longest", longest=side).output_size(height, width, 4)
    assert max(fit) == side


@pytest.mark.parametrize("box", [(0, 50), (50, None), (-3, 40)])
def test_fit_needs_a_positive_box(box):
    with pytest.raises(ValueError, match="must be a positive number"):
        ScaleTarget("fit", width=box[0], height=box[1]).output_size(20, 30, 2)


def test_repeated_passes_reach_large_targets(model):
    image = photo("astronaut", 200, 200, 12, 10)
    out = upscale(model, image, _options(tiles=WHOLE, target=ScaleTarget("factor", factor=8)))
    want = image
    for _ in range(3):
        want = run_tiled(model, want, settings=WHOLE)
    assert torch.equal(out, want)
    assert passes_needed(2, (10, 10), (80, 80)) == 3
    assert passes_needed(4, (10, 10), (50, 50)) == 2
    assert passes_needed(4, (10, 10), (5, 5)) == 1
    assert passes_needed(1, (10, 10), (50, 50)) == 1


def test_downscale_after_model_is_antialiased_lanczos(model):
    image = photo("astronaut", 0, 0, 20, 30)
    out = upscale(model, image, _options(tiles=WHOLE, target=ScaleTarget("size", width=45, height=30)))
    assert torch.allclose(out, resize(run_tiled(model, image, settings=WHOLE), 30, 45, "lanczos"), atol=1e-6)


def test_tiled_pipeline_equals_untiled(model):
    image = photo("chelsea", 0, 0, 70, 90)
    target = ScaleTarget("size", width=250, height=190)
    whole = upscale(model, image, _options(tiles=WHOLE, target=target))
    tiled = upscale(model, image, _options(tiles=TileSettings(tile=32, batch=2), target=target))
    assert (whole - tiled).abs().max().item() <= 1e-5


def test_progress_spans_every_pass(model):
    reports = []
    upscale(
        model,
        photo("astronaut", 0, 0, 40, 40),
        _options(tiles=TileSettings(tile=24, pad=3), target=ScaleTarget("factor", factor=4)),
        progress=lambda d, t: reports.append((d, t)),
    )
    totals = {t for _, t in reports}
    assert len(totals) == 1 and reports[-1][0] == reports[-1][1]
    assert [d for d, _ in reports] == list(range(1, reports[-1][1] + 1))


def test_nan_and_out_of_range_pixels_are_sanitised(model):
    image = photo("astronaut", 0, 0, 8, 8).clone()
    image[0, 0, 0, 0] = float("nan")
    image[0, 1, 1, 1] = 7.0
    image[0, 2, 2, 2] = -float("inf")
    out = upscale(model, image, _options(tiles=WHOLE))
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "bad,message",
    [
        (torch.rand(0, 3, 8, 8), "empty"),
        (torch.rand(1, 3, 0, 8), "empty"),
        (torch.rand(1, 5, 8, 8), "1 to 4 channels"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.bool), "image of numbers"),
        (torch.rand(8, 8), r"shape \(B, C, H, W\)"),
    ],
)
def test_bad_images_are_clear_errors(model, bad, message):
    with pytest.raises(ImageError, match=message):
        upscale(model, bad, _options())


def test_bad_options_are_clear_errors(model):
    with pytest.raises(ValueError, match="resampling filter"):
        upscale(model, torch.rand(1, 3, 4, 4), _options(resample="sinc"))
    with pytest.raises(ValueError, match="positive number"):
        upscale(model, torch.rand(1, 3, 4, 4), _options(target=ScaleTarget("factor", factor=0)))


@pytest.mark.parametrize("dtype,peak", [(torch.uint8, 255), (torch.uint16, 65535), (torch.int32, 65535)])
def test_integer_images_are_scaled_by_their_range(model, dtype, peak):
    values = torch.randint(0, peak + 1, (1, 3, 6, 5), generator=torch.Generator().manual_seed(1)).to(dtype)
    got = upscale(model, values, _options(tiles=WHOLE))
    assert torch.equal(got, upscale(model, values.float() / peak, _options(tiles=WHOLE)))


def test_one_by_n_images(model):
    assert upscale(model, torch.rand(1, 3, 1, 37), _options(tiles=TileSettings(tile=16))).shape == (1, 3, 2, 74)
    assert upscale(model, torch.rand(1, 3, 41, 1), _options(tiles=TileSettings(tile=16))).shape == (1, 3, 82, 2)


def test_a_result_that_cannot_fit_is_refused_before_allocating(model):
    import time

    start = time.perf_counter()
    with pytest.raises(ImageError, match=r"needs about .* GiB but only .* GiB is free"):
        upscale(
            model, torch.rand(1, 3, 64, 64), _options(target=ScaleTarget("size", width=2_000_000, height=2_000_000))
        )
    assert time.perf_counter() - start < 5


# ------------------------------------------------------------------------------- tileable
def centre_of_repeated(descriptor, image: torch.Tensor, options: UpscaleOptions) -> torch.Tensor:
    """The independent reference for a tileable result: the texture laid out 3 x 3, upscaled as
    one ordinary image, and the middle copy cut out."""
    target = options.target
    if target.mode == "size":  # three copies of the asked size
        target = replace(target, width=3 * target.width, height=3 * target.height)
    out = upscale(descriptor, image.repeat(1, 1, 3, 3), replace(options, tileable=False, tiles=WHOLE, target=target))
    height, width = out.shape[-2] // 3, out.shape[-1] // 3
    return out[..., height : 2 * height, width : 2 * width]


@pytest.mark.parametrize("tiles", [WHOLE, TileSettings(tile=32)], ids=["whole", "tiled"])
@pytest.mark.parametrize(
    "target",
    [ScaleTarget(), ScaleTarget("factor", factor=3.0), ScaleTarget("size", width=50, height=31)],
    ids=["native", "two-passes-then-lanczos", "downscale"],
)
def test_a_tileable_result_repeats_without_a_seam(model, tiles, target):
    image = photo("astronaut", 100, 120, 40, 52)
    options = _options(tiles=tiles, target=target, tileable=True)
    out = upscale(model, image, options)
    want = centre_of_repeated(model, image, options)
    assert out.shape == want.shape
    assert (out - want).abs().max() <= 1e-5
    # without the option the edges are the model's (and the filter's) own border handling
    plain = upscale(model, image, replace(options, tileable=False))
    assert (plain - want).abs().max() > 1e-2


def test_tileable_covers_y_models_alpha_and_wide_margins():
    ymodel = describe(ConvNet(scale=2, channels=1), scale=2, channels=1)
    image = photo("coffee", 100, 100, 24, 20)
    options = _options(tiles=WHOLE, tileable=True, target=ScaleTarget("factor", factor=1.5))
    assert (upscale(ymodel, image, options) - centre_of_repeated(ymodel, image, options)).abs().max() <= 1e-5
    rgba = torch.cat([photo("astronaut", 0, 0, 24, 20), torch.rand(1, 1, 24, 20)], dim=1)
    for alpha in ("resize", "model"):
        chosen = _options(tiles=WHOLE, tileable=True, alpha=alpha, target=ScaleTarget("factor", factor=3.0))
        rgba_model = describe(ConvNet(scale=2))
        assert (upscale(rgba_model, rgba, chosen) - centre_of_repeated(rgba_model, rgba, chosen)).abs().max() <= 1e-5
    # a margin wider than the image wraps more than once
    tiny = photo("astronaut", 200, 200, 5, 3)
    wide = _options(tiles=TileSettings(tile=-1, pad=9), tileable=True)
    assert (upscale(ymodel, tiny[:, :1], wide) - centre_of_repeated(ymodel, tiny[:, :1], wide)).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["lanczos", "bicubic", "bilinear", "nearest"])
def test_wrapped_resize_reads_across_the_edges(method):
    planes = torch.rand(1, 2, 37, 29, generator=torch.Generator().manual_seed(0))
    for height, width in ((55, 43), (20, 13), (37, 60)):
        out = resize(planes, height, width, method, wrap=True)
        want = resize(planes.repeat(1, 1, 3, 3), 3 * height, 3 * width, method)[..., height:-height, width:-width]
        assert (out - want).abs().max() <= 1e-6, (height, width)
