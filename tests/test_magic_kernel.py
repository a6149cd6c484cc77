"""MagicKernelSharp2021: exact taps and zero padding, checked against a numpy re-computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tilewise.archs.magic_kernel import BLUR_TAPS, SHARP_TAPS, MagicKernelSharp2021Upsample
from tilewise.engine import load_model, upscale


def _separable(plane: np.ndarray, taps) -> np.ndarray:
    taps = np.asarray(taps, dtype=np.float64)
    rows = np.stack([np.convolve(r, taps[::-1], mode="same") for r in plane])
    return np.stack([np.convolve(c, taps[::-1], mode="same") for c in rows.T]).T


def _reference(image: np.ndarray, scale: int, alpha: float) -> np.ndarray:
    out = []
    for plane in image.astype(np.float64):
        if alpha > 0:
            plane = plane + alpha * (_separable(plane, SHARP_TAPS) - plane)
        plane = np.repeat(np.repeat(plane, scale, axis=0), scale, axis=1)
        out.append(_separable(plane, BLUR_TAPS))
    return np.stack(out)


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_matches_numpy_reference(scale, alpha):
    image = torch.rand(1, 3, 11, 14, generator=torch.Generator().manual_seed(scale))
    model = MagicKernelSharp2021Upsample(3, scale, alpha)
    got = model(image)[0].numpy()
    assert got.shape == (3, 11 * scale, 14 * scale)
    np.testing.assert_allclose(got, _reference(image[0].numpy(), scale, alpha), atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_zero_padding_darkens_borders_as_specified(scale):
    out = MagicKernelSharp2021Upsample(3, scale, 0.0)(torch.ones(1, 3, 9, 9))
    assert out[0, 0, 0, 0].item() == pytest.approx(121 / 256, abs=1e-6)
    assert out[0, 0, 0, out.shape[-1] // 2].item() == pytest.approx(11 / 16, abs=1e-6)


def test_state_dict_keys_match_paragonsr2_base():
    keys = set(MagicKernelSharp2021Upsample(3, 2, 0.4).state_dict())
    assert keys == {f"{f}.{k}" for f in ("sharp", "blur") for k in ("kernel", "h.weight", "v.weight")}


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("scale", [2, 3])
def test_declared_receptive_radius_is_exact(alpha, scale):
    model = MagicKernelSharp2021Upsample(1, scale, alpha)
    r = model.receptive_radius
    base = torch.zeros(1, 1, 31, 31)
    for offset, moves in ((r, True), (r + 1, False)):
        poked = base.clone()
        poked[..., 15, 15 + offset] = 1
        changed = (
            (model(poked) - model(base))[..., 15 * scale : (15 + 1) * scale, 15 * scale : (15 + 1) * scale]
            .abs()
            .max()
            .item()
        )
        assert (changed > 0) == moves, (offset, changed)


def test_builtin_names_and_file_detection(tmp_path):
    from safetensors.torch import save_file

    for scale in (2, 3, 4):
        descriptor = load_model(f"builtin:magic-kernel-sharp-{scale}x")
        assert descriptor.scale == scale and descriptor.architecture.id == "MagicKernelSharp2021"
    path = tmp_path / "mks_x3.safetensors"
    save_file(MagicKernelSharp2021Upsample(3, 3).state_dict(), path)
    descriptor = load_model(path)
    assert descriptor.architecture.id == "MagicKernelSharp2021" and descriptor.scale == 3


def test_builtin_upscale_equals_module():
    image = torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    got = upscale(load_model("builtin:magic-kernel-sharp-2x"), image)
    want = MagicKernelSharp2021Upsample(3, 2, 0.0)(image).clamp(0, 1)
    assert torch.allclose(got, want, atol=1e-6)
