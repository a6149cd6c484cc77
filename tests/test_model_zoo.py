"""Checks that the tiny checkpoints of ``model_zoo`` are real spandrel models."""

from __future__ import annotations

import math

import pytest
import torch

import spandrel
from model_zoo import (
    NESTED_WRAPPERS,
    PREFIX_WRAPPERS,
    SPANDREL_UNWRAPS,
    WRAPPERS,
    ZOO,
    make_photo_crop,
    output_in_range_fraction,
    save_checkpoint,
    wrap,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning"),  # torch, via SwinIR/HAT
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning"),  # .pt
    pytest.mark.usefixtures("one_thread"),  # tiny models: one thread avoids oversubscribing a shared CPU
]

NAMES = list(ZOO)
LOCAL = [n for n, e in ZOO.items() if e.receptive_field is not None]
GLOBAL = [n for n, e in ZOO.items() if e.receptive_field is None]




@pytest.fixture(scope="module")
def loader() -> spandrel.ModelLoader:
    return spandrel.ModelLoader()


@pytest.fixture(scope="module")
def built() -> dict[str, torch.nn.Module]:
    """Each entry built once with seed 0 (building is the slow part)."""
    return {name: ZOO[name].build(0) for name in NAMES}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("ext", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", NAMES)
def test_entry_loads_in_spandrel(name, ext, built, loader, tmp_path):
    entry, model = ZOO[name], built[name]
    path = save_checkpoint(model, tmp_path / f"{name}{ext}")
    assert path.is_file()

    desc = loader.load_from_file(path)
    assert isinstance(desc, spandrel.ImageModelDescriptor)
    assert desc.architecture.id == entry.arch_id
    assert desc.scale == entry.scale
    assert desc.input_channels == entry.in_channels
    assert desc.output_channels == entry.out_channels
    assert desc.size_requirements.minimum == entry.min_size
    _assert_same_weights(model.state_dict(), desc.model.state_dict())

    x = make_photo_crop((24, 24), seed=3, photo="chelsea")
    with torch.no_grad():
        y = desc(x)
        ref = model(x) if 24 >= entry.min_size else None
    s = entry.scale
    assert y.shape == (1, entry.out_channels, 24 * s, 24 * s)
    assert torch.isfinite(y).all()
    # not saturated: spandrel clamps to [0, 1]; most pixels must survive it
    assert output_in_range_fraction(y) > 0.5
    assert y.std() > 0.02  # and the output is not flat
    if ref is not None:  # the loaded model computes what the built one does
        torch.testing.assert_close(y, ref.clamp(0, 1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_output_not_saturated_on_random_images(name, built):
    entry, model = ZOO[name], built[name]
    size = max(32, entry.min_size)
    gen = torch.Generator().manual_seed(11)
    inputs = [
        torch.rand(1, 3, size, size, generator=gen),
        make_photo_crop((size, size), seed=7, photo="chelsea"),
        make_photo_crop((size, size), seed=2, photo="astronaut"),
        make_photo_crop((size, size), seed=8, photo="coffee"),
    ]
    for x in inputs:
        with torch.no_grad():
            y = model(x)
        assert y.shape == (1, entry.out_channels, size * entry.scale, size * entry.scale)
        assert output_in_range_fraction(y) > 0.5, output_in_range_fraction(y)
        assert y.clamp(0, 1).std() > 0.02


@pytest.mark.parametrize("name", NAMES)
def test_every_scale_is_detected(name, loader, tmp_path):
    entry = ZOO[name]
    for scale in entry.scales:
        if scale == entry.scale:
            continue  # covered by test_entry_loads_in_spandrel
        path = entry.save(tmp_path / f"{name}_x{scale}.safetensors", seed=1, scale=scale)
        desc = loader.load_from_file(path)
        assert desc.architecture.id == entry.arch_id
        assert desc.scale == entry.expected_scale(scale) == scale
        assert desc.input_channels == entry.in_channels
        assert desc.output_channels == entry.out_channels
    with pytest.raises(ValueError):
        entry.build(0, scale=5)


def test_esrgan_2x_is_available():
    assert ZOO["ESRGAN-2x"].scale == 2
    assert 2 in ZOO["ESRGAN"].scales


@pytest.mark.parametrize("name", ["Compact", "SPAN", "SwinIR"])
def test_build_is_seeded_and_has_no_rng_side_effects(name):
    entry = ZOO[name]
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    a = entry.state_dict(5)
    assert torch.equal(torch.rand(3), expected_next)  # global RNG untouched
    b = entry.state_dict(5)
    c = entry.state_dict(6)
    _assert_same_weights(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", ["Compact", "ESRGAN"])
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_wrappers_pth(name, wrapper, built, loader, tmp_path):
    model = built[name]
    sd = model.state_dict()
    path = save_checkpoint(model, tmp_path / f"{name}.pth", wrapper=wrapper)
    assert path.is_file()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if wrapper in NESTED_WRAPPERS:
        assert list(raw) == [NESTED_WRAPPERS[wrapper]]
    elif wrapper in PREFIX_WRAPPERS:
        assert all(k.startswith(PREFIX_WRAPPERS[wrapper]) for k in raw)
        assert len(raw) == len(sd)
    else:
        assert set(raw) == set(sd)

    if wrapper not in SPANDREL_UNWRAPS:
        # spandrel 0.4.2 does not strip torch.compile's "_orig_mod." prefix
        assert wrapper in ("_orig_mod.", "module._orig_mod.")
        assert all("_orig_mod." in k for k in raw)
        return
    desc = loader.load_from_file(path)
    assert desc.architecture.id == ZOO[name].arch_id
    _assert_same_weights(sd, desc.model.state_dict())


def test_orig_mod_keys():
    sd = {"body.0.weight": torch.zeros(2), "body.0.bias": torch.ones(2)}
    assert list(wrap(sd, "_orig_mod.")) == ["_orig_mod.body.0.weight", "_orig_mod.body.0.bias"]
    assert list(wrap(sd, "module._orig_mod."))[0] == "module._orig_mod.body.0.weight"


@pytest.mark.parametrize("wrapper", ["module.", "netG.", "_orig_mod."])
def test_safetensors_prefix_wrappers(wrapper, built, loader, tmp_path):
    from safetensors.torch import load_file

    model = built["Compact"]
    path = save_checkpoint(model, tmp_path / "c.safetensors", wrapper=wrapper)
    raw = load_file(path)
    assert all(k.startswith(wrapper) for k in raw)
    if wrapper in SPANDREL_UNWRAPS:
        desc = loader.load_from_file(path)
        _assert_same_weights(model.state_dict(), desc.model.state_dict())


@pytest.mark.parametrize("wrapper", list(NESTED_WRAPPERS))
def test_safetensors_rejects_nested_wrappers(wrapper, built, tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(built["Compact"], tmp_path / "c.safetensors", wrapper=wrapper)


@pytest.mark.parametrize("ext", [".pt", ".ckpt", ".bin"])
def test_other_torch_extensions(ext, built, loader, tmp_path):
    model = built["Compact"]
    path = save_checkpoint(model.state_dict(), tmp_path / f"c{ext}", wrapper="params_ema")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    _assert_same_weights(model.state_dict(), raw["params_ema"])
    if ext != ".bin":  # spandrel 0.4.2 does not accept .bin
        desc = loader.load_from_file(path)
        _assert_same_weights(model.state_dict(), desc.model.state_dict())


def test_save_checkpoint_rejects_bad_input(built, tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(built["Compact"], tmp_path / "c.onnx")
    with pytest.raises(ValueError):
        save_checkpoint(built["Compact"], tmp_path / "c.pth", wrapper="nope")
    with pytest.raises(ValueError):
        wrap({}, "nope")


def test_save_checkpoint_handles_shared_and_strided_tensors(loader, tmp_path):
    w = torch.randn(4, 3, 3, 3)
    sd = {"a": w, "b": w, "c": w.transpose(0, 1), "d": w[:2]}
    path = save_checkpoint(sd, tmp_path / "shared.safetensors")
    from safetensors.torch import load_file

    raw = load_file(path)
    for k, v in sd.items():
        assert torch.equal(raw[k], v)


def test_make_photo_crop():
    a = make_photo_crop((20, 30), seed=4)
    assert a.shape == (1, 3, 20, 30) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.01
    assert torch.equal(a, make_photo_crop((20, 30), seed=4))
    assert not torch.equal(a, make_photo_crop((20, 30), seed=5))
    assert make_photo_crop(16, photo="chelsea").shape == (1, 3, 16, 16)
    big = make_photo_crop((600, 700), seed=1)  # larger than the photo
    assert big.shape == (1, 3, 600, 700)


@pytest.mark.parametrize("name", LOCAL)
def test_local_receptive_field(name, built):
    """A tile with ``ceil(rf / 2)`` px of context reproduces the full output."""
    entry, model = ZOO[name], built[name]
    s, a = entry.scale, entry.alignment
    m = math.ceil(math.ceil(entry.receptive_field / 2) / a) * a  # aligned margin
    full_size = 4 * m + 8
    x = make_photo_crop((full_size, full_size), seed=2, photo="chelsea")
    with torch.no_grad():
        full = model(x)
        tile = model(x[:, :, m : full_size - m, m : full_size - m])
    # interior of the tile, in full-image coordinates [2m, full_size - 2m)
    got = tile[:, :, m * s : -m * s, m * s : -m * s]
    want = full[:, :, 2 * m * s : -2 * m * s, 2 * m * s : -2 * m * s]
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5)
    if a > 1:  # a tile off the window grid is NOT exact
        o = m + a // 2
        with torch.no_grad():
            tile2 = model(x[:, :, o : o + full_size - 2 * m, o : o + full_size - 2 * m])
        got2 = tile2[:, :, (2 * m - o) * s : (2 * m - o + 8) * s, (2 * m - o) * s : (2 * m - o + 8) * s]
        assert (got2 - want).abs().max() > 1e-4


@pytest.mark.parametrize("name", GLOBAL)
def test_global_models_see_the_far_corner(name):
    entry = ZOO[name]
    model = entry.build(0).double()  # float64: far-field effects can be < 1 ulp in float32
    size = 48
    x = make_photo_crop((size, size), seed=6, photo="chelsea").double()
    x2 = x.clone()
    x2[:, :, 0, 0] += 0.5
    with torch.no_grad():
        d = (model(x2) - model(x)).abs()
    s = entry.scale
    assert d[:, :, -s:, -s:].max() > 0  # bottom-right pixel depends on top-left pixel
