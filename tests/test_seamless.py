"""Tiled output equals untiled output with the default margin, on real architectures and photos.

Shallow convolutional models get their exact receptive radius (<= 1e-5); deep ones (RRDB) their
measured effective radius (<= 1e-4); window transformers keep their window grid.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import PARAGONSR2_FIXTURES as FIXTURES
from conftest import photo
from model_zoo import ZOO, _esrgan_finish
from spandrel.architectures.ESRGAN import ESRGAN
from test_pipeline import centre_of_repeated
from test_runner import describe
from tilewise.engine import TileSettings, describe_state_dict, load_model, run_tiled
from tilewise.engine.compute.precision import forward_fn
from tilewise.engine.plan.receptive import (
    EFFECTIVE_PROBE_RADIUS,
    EXACT_PROBE_RADIUS,
    PROBE_TOLERANCE,
    effective_radius,
    model_context,
    probe_margins,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _images() -> torch.Tensor:
    return torch.cat([photo("chelsea", 20, 40, 61, 83), photo("coffee", 150, 200, 61, 83)])


def _compare(descriptor, tile: int, batch: int, images: torch.Tensor | None = None) -> float:
    images = _images() if images is None else images
    whole = run_tiled(descriptor, images, settings=TileSettings(tile=-1))
    tiled = run_tiled(descriptor, images, settings=TileSettings(tile=tile, batch=batch))
    assert tiled.shape == whole.shape
    return (tiled - whole).abs().max().item()


@pytest.mark.parametrize("name", ["Compact", "SPAN"])
@pytest.mark.parametrize("tile,batch", [(24, 1), (40, 3), (64, 2)])
def test_shallow_models_are_exact(name, tile, batch):
    descriptor = describe_state_dict(ZOO[name].state_dict(seed=4))
    assert _compare(descriptor, tile, batch) <= 1e-5


@pytest.mark.parametrize("name", ["Compact", "SPAN"])
def test_shallow_models_use_their_exact_radius(name):
    descriptor = describe_state_dict(ZOO[name].state_dict(seed=4))
    context = model_context(descriptor, forward_fn(descriptor, descriptor.model), torch.device("cpu"))
    assert context.exact and 0 < context.pad < EXACT_PROBE_RADIUS


@pytest.fixture(scope="module")
def deep_rrdb():
    """An RRDB deeper than the exact probe reaches (5 blocks x 15 convs), with image-like outputs."""
    with torch.random.fork_rng():
        torch.manual_seed(7)
        model = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=5, scale=2).eval()
        _esrgan_finish(model, torch.Generator().manual_seed(7), 2)
    return describe_state_dict(model.state_dict())


def test_deep_model_uses_effective_radius(deep_rrdb):
    context = model_context(deep_rrdb, forward_fn(deep_rrdb, deep_rrdb.model), torch.device("cpu"))
    assert not context.exact and context.bounded
    assert context.pad < 60  # far below the structural radius of ~80 input pixels


def test_effective_probe_costs_what_its_radius_needs_and_agrees_with_the_whole_probe(deep_rrdb):
    """The probe compares each margin with the next instead of the whole 257-px image: its
    largest forward follows the radius it finds, and the radius still holds against the whole."""
    forward = forward_fn(deep_rrdb, deep_rrdb.model)
    size = 2 * EFFECTIVE_PROBE_RADIUS + 1
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(5))
    sides = []

    def counted(x):
        sides.append(x.shape[-1])
        return forward(x)

    radius, bounded = effective_radius(counted, image, deep_rrdb.scale)
    assert bounded and 4 < radius < 40
    margins = probe_margins(size // 2 - 1)
    after = next(m for m in margins if m >= radius)
    assert max(sides) <= 2 * margins[margins.index(after) + 1] + 1 < size // 2
    centre, s = size // 2, deep_rrdb.scale
    with torch.inference_mode():
        whole = forward(image)[..., centre * s : (centre + 1) * s, centre * s : (centre + 1) * s]
        crop = forward(image[..., centre - radius : centre + radius + 1, centre - radius : centre + radius + 1])
        got = crop[..., radius * s : (radius + 1) * s, radius * s : (radius + 1) * s]
        assert (got - whole).abs().max() <= PROBE_TOLERANCE
        narrower = forward(
            image[..., centre - radius // 2 : centre + radius // 2 + 1, centre - radius // 2 : centre + radius // 2 + 1]
        )
        half = narrower[..., (radius // 2) * s : (radius // 2 + 1) * s, (radius // 2) * s : (radius // 2 + 1) * s]
        assert (half - whole).abs().max() > PROBE_TOLERANCE, "the radius is not far larger than needed"


@pytest.mark.parametrize("tile,batch", [(48, 1), (72, 2)])
def test_deep_model_within_1e4(deep_rrdb, tile, batch):
    images = _images()
    whole = run_tiled(deep_rrdb, images, settings=TileSettings(tile=-1))
    assert ((whole > 0) & (whole < 1)).float().mean() > 0.8, "outputs are not saturated, so the check means something"
    assert _compare(deep_rrdb, tile, batch, images) <= 1e-4


def test_window_transformer_keeps_its_grid():
    descriptor = describe_state_dict(ZOO["SwinIR"].state_dict(seed=4))
    assert _compare(descriptor, 40, 2) <= 1e-4


@pytest.mark.parametrize("name", ["realtime_x2", "stream_x2"])
def test_paragonsr2_conv_variants_are_exact(name):
    descriptor = load_model(f"{FIXTURES}/paragonsr2_{name}.safetensors", cache=None)
    assert _compare(descriptor, 48, 2) <= 1e-5


def test_the_exact_probe_goes_coarse_to_fine(deep_rrdb, monkeypatch):
    """Shallow models get their exact radius from a 41-px gradient probe; only a field reaching
    its border pays for the 81-px one (a quarter of the cost for Compact and SPAN)."""
    from tilewise.engine.plan import receptive

    sizes = []
    exact = receptive.exact_radius
    monkeypatch.setattr(
        receptive,
        "exact_radius",
        lambda forward, image: sizes.append(image.shape[-1]) or exact(forward, image),
    )
    shallow = describe_state_dict(ZOO["Compact"].state_dict(seed=4))
    context = receptive._probe(shallow, forward_fn(shallow, shallow.model), torch.device("cpu"), 1)
    assert context.exact and sizes == [41]
    sizes.clear()
    thirty = chain(30)
    receptive._probe(thirty, forward_fn(thirty, thirty.model), torch.device("cpu"), 1)
    assert sizes == [81], "a field past the 41-px probe's border needs the 81-px gradient"
    sizes.clear()
    context = receptive._probe(deep_rrdb, forward_fn(deep_rrdb, deep_rrdb.model), torch.device("cpu"), 1)
    assert sizes == [] and not context.exact, "a field past both borders needs no backward pass"


def chain(layers: int, channels: int = 3):
    """`layers` 3x3 convolutions in a row: a structural radius of exactly `layers` pixels."""
    with torch.random.fork_rng():  # seeded weights without touching the suite's random state
        torch.manual_seed(layers)
        convs = [
            torch.nn.Conv2d(3 if i == 0 else channels, 3 if i == layers - 1 else channels, 3, padding=1)
            for i in range(layers)
        ]
    net = torch.nn.Sequential(*[m for conv in convs for m in (conv, torch.nn.LeakyReLU(0.2))])
    return describe(net, scale=1, name="Chain")


@pytest.mark.parametrize("layers", [19, 20, 39, 40])
@pytest.mark.parametrize("channels", [3, 64])
def test_the_border_test_agrees_with_the_gradient(layers, channels, deep_rrdb):
    """The NaN-border test says a field reaches the probe's border exactly where the gradient
    does, to the pixel (a radius of 39 does not reach an 81-px probe's border, 40 does)."""
    from tilewise.engine.plan.receptive import exact_radius, reaches_border

    descriptor = chain(layers, channels)
    for size in (41, 81):
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        reaches = exact_radius(descriptor.model, image) is None
        assert reaches_border(descriptor.model, image) == reaches == (layers >= size // 2)
    image = torch.rand(1, 3, 81, 81, generator=torch.Generator().manual_seed(3))
    assert reaches_border(forward_fn(deep_rrdb, deep_rrdb.model), image)


def test_a_probe_with_a_reach_stops_there_and_otherwise_answers_as_the_full_probe(deep_rrdb, monkeypatch):
    """A caller that only needs margins below `reach` (auto tiling on a small image) gets a
    partial "at least" answer without gradient probes when the model needs more, and the full
    probe's answer, exact or effective, when it needs less."""
    from tilewise.engine.plan import receptive

    cpu = torch.device("cpu")
    full = receptive._probe(deep_rrdb, forward_fn(deep_rrdb, deep_rrdb.model), cpu, 1)
    assert not full.exact and full.bounded and full.pad > 8
    exact_calls, sides = [], []
    exact = receptive.exact_radius
    monkeypatch.setattr(
        receptive, "exact_radius", lambda forward, image: exact_calls.append(1) or exact(forward, image)
    )
    forward = forward_fn(deep_rrdb, deep_rrdb.model)

    def counted(x):
        sides.append(x.shape[-1])
        return forward(x)

    stopped = receptive._probe(deep_rrdb, counted, cpu, 1, reach=5)
    assert stopped.partial and stopped.pad >= 5 and stopped.pad <= full.pad and not exact_calls
    assert max(sides) < 2 * 14 + 2, "it looked no further than the margins just past the reach"
    assert (
        receptive._probe(deep_rrdb, forward, cpu, 1, reach=full.pad + 20) == full
    )  # the effective answer, after the exact probes
    shallow = describe_state_dict(ZOO["Compact"].state_dict(seed=4))
    whole = receptive._probe(shallow, forward_fn(shallow, shallow.model), cpu, 1)
    assert receptive._probe(shallow, forward_fn(shallow, shallow.model), cpu, 1, reach=whole.pad + 20) == whole  # exact
    # kept as a lower bound: enough for a smaller reach, probed again for a larger one or none
    descriptor = describe_state_dict(deep_rrdb.model.state_dict())
    probes = []
    real = receptive._probe
    monkeypatch.setattr(receptive, "_probe", lambda *args: probes.append(args[-1]) or real(*args))
    assert model_context(descriptor, forward, cpu, 1, reach=5).partial
    assert model_context(descriptor, forward, cpu, 1, reach=4).partial and probes == [5]
    assert model_context(descriptor, forward, cpu, 1) == full and probes == [5, None]
    assert model_context(descriptor, forward, cpu, 1, reach=5) == full and probes == [5, None]


@pytest.mark.parametrize(
    "name, mean, most",
    [
        ("Compact", 1e-7, 1e-5),
        ("SPAN", 1e-7, 1e-5),
        ("ESRGAN", 1e-7, 1e-5),
        ("SwinIR", 1e-7, 1e-5),
        ("NAFNet", 1e-4, 1e-3),
        ("OmniSR", 3e-3, 3e-2),
    ],
)
def test_tileable_edges_continue_as_the_texture_does(name, mean, most):
    """A tileable result against the texture laid out 3 x 3 and run whole (its middle copy):
    exact where the margin covers the model's reach; close for models with a global term
    (NAFNet's pooled channel attention, OmniSR's), where a plain run is 0.1-0.5 off at the edges."""
    from tilewise.engine import UpscaleOptions, upscale

    descriptor = describe_state_dict(ZOO[name].state_dict(seed=4))
    texture = photo("astronaut", 100, 100, 64, 48)
    options = UpscaleOptions(device="cpu", tiles=TileSettings(tile=-1))
    middle = centre_of_repeated(descriptor, texture, options)
    tileable = (upscale(descriptor, texture, replace(options, tileable=True)) - middle).abs()
    plain = (upscale(descriptor, texture, options) - middle).abs()
    assert tileable.mean() <= mean and tileable.max() <= most
    assert plain.max() > 0.05
