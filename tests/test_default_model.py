"""The bundled default upscaler (models/tilewise_paragonsr2_realtime_x{2,4}.safetensors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from tilewise import engine
from tilewise.archs.paragonsr2 import ParagonSR2
from tilewise.engine.model.loading import BUNDLED, BUNDLED_DIR

MAX_BYTES = 1024 * 1024


@pytest.mark.parametrize("scale", [2, 4])
def test_bundled_file_loads_as_paragonsr2_realtime(scale):
    name = f"paragonsr2-realtime-{scale}x"
    path = BUNDLED_DIR / BUNDLED[name]
    assert path.is_file(), f"{path} is missing"
    assert path.stat().st_size < MAX_BYTES

    descriptor = engine.load_model(f"builtin:{name}")
    assert descriptor.architecture.id == "ParagonSR2"
    assert descriptor.scale == scale
    model = descriptor.model
    assert isinstance(model, ParagonSR2)
    assert (model.variant, model.num_feat, model.num_groups, model.num_blocks) == ("realtime", 16, 1, 3)
    assert model.upsampler_alpha == 0.0
    # exactly the upstream keys of a realtime model at this scale
    reference = ParagonSR2(scale=scale, num_feat=16, num_groups=1, num_blocks=3, variant="realtime")
    stored = engine.read_state_dict(path)
    assert set(stored) == set(reference.state_dict())
    assert all(stored[k].shape == v.shape for k, v in reference.state_dict().items())
    assert all(torch.isfinite(v).all() for v in stored.values())


def _psnr_y(output: np.ndarray, reference: np.ndarray, border: int) -> float:
    """PSNR of BT.601 studio-range luma of two uint8 RGB images, `border` pixels cropped."""
    weights = np.array([65.481, 128.553, 24.966]) / 255.0
    a = 16.0 + output.astype(np.float64) @ weights
    b = 16.0 + reference.astype(np.float64) @ weights
    a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return 10.0 * math.log10(255.0**2 / float(np.mean((a - b) ** 2)))


def test_x2_beats_bicubic_on_a_held_out_crop():
    from skimage import data

    hr = np.ascontiguousarray(data.coffee()[220:316, 310:406])  # spoon, saucer rim and wood grain; never trained on
    lr = Image.fromarray(hr).resize((48, 48), Image.Resampling.BICUBIC)
    bicubic = np.asarray(lr.resize((96, 96), Image.Resampling.BICUBIC))

    descriptor = engine.load_model("builtin:paragonsr2-realtime-2x")
    x = torch.from_numpy(np.array(lr, copy=True)).permute(2, 0, 1)[None].float().div(255)
    out = engine.upscale(descriptor, x, engine.UpscaleOptions(device="cpu"))
    assert out.shape == (1, 3, 96, 96)
    ours = out[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()

    assert _psnr_y(ours, hr, 2) > _psnr_y(bicubic, hr, 2) + 0.5  # measured: 26.65 -> 27.98 dB


def test_bundled_x2_is_the_cli_default_and_a_builtin():
    from tilewise.cli import DEFAULT_MODEL, build_parser
    from tilewise.engine import builtin_names

    assert DEFAULT_MODEL == "builtin:paragonsr2-realtime-2x"
    assert build_parser().parse_args(["upscale", "x.png", "-o", "y.png"]).model == DEFAULT_MODEL
    assert {"builtin:paragonsr2-realtime-2x", "builtin:paragonsr2-realtime-4x"} <= set(builtin_names())
