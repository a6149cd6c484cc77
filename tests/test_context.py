"""Tile margins measured for models whose weights are inference tensors (as in ComfyUI, which
runs every node inside torch.inference_mode())."""

from __future__ import annotations

import pytest
import torch
from model_zoo import ZOO
from tilewise.engine import TileSettings, UpscaleOptions, load_model, upscale
from tilewise.engine.image.memory import ROOM_FOR_AUTO_TILE, estimate_device_bytes
from tilewise.engine.plan import receptive
from tilewise.engine.plan.receptive import has_inference_weights

CPU = torch.device("cpu")


def test_inference_mode_models_get_the_same_margin_and_pixels(tmp_path):
    """ComfyUI loads models under inference mode, where autograd refuses the weights; the margin
    probe uses a gradient-capable copy, so the margin and the tiled pixels are the normal ones."""
    path = ZOO["Compact"].save(tmp_path / "compact_x2.safetensors", seed=3, scale=2)
    image = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    tiled = UpscaleOptions(tiles=TileSettings(tile=24), device="cpu")
    normal = load_model(path, cache=None)
    expected = upscale(normal, image, tiled)
    expected_pad = _margin(normal)
    assert expected_pad > 0
    with torch.inference_mode():
        model = load_model(path, cache=None)
        assert has_inference_weights(model.model) and not has_inference_weights(normal.model)
        result = upscale(model, image, tiled)
        pad = _margin(model)
    assert pad == expected_pad
    assert torch.equal(result, expected)
    assert has_inference_weights(model.model), "the model itself is left as it was"


def _margin(descriptor) -> int:
    """The margin the run used: the per-model cache `model_context` filled."""
    return receptive._cache[descriptor.model].pad


def test_inference_mode_models_tile_without_measuring_first(tmp_path):
    """The probe itself copes with inference-tensor weights, so every host gets it."""
    path = ZOO["SPAN"].save(tmp_path / "span.safetensors", seed=2, scale=2)
    image = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(1))
    tiled = UpscaleOptions(tiles=TileSettings(tile=24), device="cpu")
    expected = upscale(load_model(path, cache=None), image, tiled)
    with torch.inference_mode():
        model = load_model(path, cache=None)
        assert has_inference_weights(model.model)
        result = upscale(model, image, tiled)
    assert torch.equal(result, expected)


def test_no_margin_probe_when_the_image_runs_whole_or_the_margin_is_given(tmp_path):
    """The probe costs forwards, so it runs only when a plan has tiles and no margin was given."""
    model = load_model(ZOO["Compact"].save(tmp_path / "c.safetensors", seed=1, scale=2), cache=None)
    image = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(2))
    upscale(model, image, UpscaleOptions(tiles=TileSettings(tile=0), device="cpu"))
    upscale(model, image, UpscaleOptions(tiles=TileSettings(tile=24, pad=5), device="cpu"))
    assert model.model not in receptive._cache
    upscale(model, image, UpscaleOptions(tiles=TileSettings(tile=24), device="cpu"))
    assert model.model in receptive._cache


def test_memory_estimate_grows_with_tiles_batch_and_images(tmp_path):
    model = load_model(ZOO["Compact"].save(tmp_path / "c.safetensors", seed=1, scale=2), cache=None)
    weights = sum(p.numel() for p in model.model.parameters()) * 4

    def estimate(tile, batch=1, images=1, height=256, width=256):
        return estimate_device_bytes(
            model,
            height,
            width,
            UpscaleOptions(tiles=TileSettings(tile=tile, pad=8, batch=batch), device="cpu"),
            images=images,
        )

    assert weights < estimate(32) < estimate(64) < estimate(-1)
    assert estimate(64, batch=4) > estimate(64, batch=1)
    assert estimate(-1, batch=4, images=2) == 2 * estimate(-1, batch=4, images=1) - weights
    assert estimate(-1, height=64, width=64) < estimate(-1)
    # automatic tiling asks for room for a 512-pixel window (the core node's), never less than a smaller image
    assert estimate(0) == estimate(-1)
    assert (
        estimate(0, height=2048, width=2048)
        == estimate(ROOM_FOR_AUTO_TILE, height=2048, width=2048)
        < estimate(-1, height=2048, width=2048)
    )


def test_memory_estimate_of_a_global_context_model_is_the_whole_image(tmp_path):
    """Auto runs global-context models whole (one image per forward), so ComfyUI must free that much."""
    model = load_model(ZOO["Compact"].save(tmp_path / "g.safetensors", seed=1, scale=2), cache=None)

    def estimate(tile, images=1):
        return estimate_device_bytes(
            model,
            2048,
            2048,
            UpscaleOptions(tiles=TileSettings(tile=tile, pad=8, batch=4), device="cpu"),
            images=images,
        )

    bounded_auto = estimate(0)
    model.model.global_context = True
    assert estimate(0) == estimate(-1, images=1) > bounded_auto
    assert estimate(0, images=3) == estimate(0, images=1)  # one image per forward
    model.model.parameter_count = 10**9  # weights held by another runtime (onnxruntime) count too
    assert estimate(0) > 4 * 10**9


def test_memory_estimate_without_measuring_runs_nothing_until_the_figure_is_known(tmp_path, monkeypatch):
    """Hosts make room before a first call without probe forwards (budgeting as ComfyUI's core
    node does); once a run has measured the model, the measured figure is used."""
    from tilewise.engine.image.memory import FALLBACK_ELEMENTS_PER_PIXEL
    from tilewise.engine.plan import autotile

    model = load_model(ZOO["Compact"].save(tmp_path / "c.safetensors", seed=1, scale=2), cache=None)
    options = UpscaleOptions(tiles=TileSettings(tile=-1), device="cpu")
    weights = sum(p.numel() for p in model.model.parameters()) * 4
    probe = autotile._probe
    monkeypatch.setattr(autotile, "_probe", lambda *args: pytest.fail("probed"))
    first = estimate_device_bytes(model, 64, 64, options, measure=False)
    assert first == weights + 64 * 64 * 2 * FALLBACK_ELEMENTS_PER_PIXEL * 4
    monkeypatch.setattr(autotile, "_probe", probe)
    measured = autotile.bytes_per_pixel(model, CPU, torch.float32)
    assert (
        estimate_device_bytes(model, 64, 64, options, measure=False)
        == weights + int(64 * 64 * measured)
        == estimate_device_bytes(model, 64, 64, options)
    )


def test_a_normally_loaded_model_tiles_when_the_host_runs_us_in_inference_mode(tmp_path):
    """SPAN gets a private copy with inference forms; made inside the host's inference mode its
    weights are inference tensors, so the margin probe's gradients go through another copy."""
    path = ZOO["SPAN"].save(tmp_path / "span.safetensors", seed=2, scale=2)
    image = torch.rand(1, 3, 40, 52, generator=torch.Generator().manual_seed(3))
    tiled = UpscaleOptions(tiles=TileSettings(tile=24), device="cpu")
    expected = upscale(load_model(path, cache=None), image, tiled)
    model = load_model(path, cache=None)
    with torch.inference_mode():
        result = upscale(model, image, tiled)
    assert not has_inference_weights(model.model)
    assert torch.equal(result, expected)
