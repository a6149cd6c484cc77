"""The engine also runs on spandrel 0.3.4, which A1111 1.10 and Forge pin (and reinstall at launch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PARAGONSR2_FIXTURES
from model_zoo import ZOO
from tilewise.engine import TileSettings, UpscaleOptions, load_model, upscale

CACHE = Path(os.environ.get("TILEWISE_TEST_CACHE", Path.home() / ".cache" / "tilewise-test")) / "spandrel-0.3.4"
NAMES = ["Compact", "ESRGAN", "SPAN", "SwinIR", "OmniSR"]

SCRIPT = """
import json, sys, torch, spandrel
from tilewise.engine import TileSettings, UpscaleOptions, load_model, upscale
assert spandrel.__version__ == "0.3.4", spandrel.__version__
out = {}
for path in sys.argv[1:]:
    model = load_model(path, cache=None)
    image = torch.linspace(0, 1, 3 * 30 * 34).reshape(1, 3, 30, 34)
    result = upscale(model, image, UpscaleOptions(device="cpu", tiles=TileSettings(tile=24)))
    out[path] = [model.architecture.id, model.scale, result.flatten().tolist()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def old_spandrel() -> Path:
    if not (CACHE / "spandrel" / "__init__.py").is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(CACHE), "spandrel==0.3.4"],
            check=True,
            timeout=600,
        )
    return CACHE


def test_models_load_and_match_on_spandrel_0_3_4(tmp_path, old_spandrel):
    paths = [str(ZOO[name].save(tmp_path / f"{name}.safetensors", seed=0)) for name in NAMES]
    paths.append(str(PARAGONSR2_FIXTURES / "paragonsr2_stream_x2.safetensors"))
    env = {**os.environ, "PYTHONPATH": str(old_spandrel)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, *paths], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    old = json.loads(result.stdout.strip().splitlines()[-1])
    for path in paths:
        model = load_model(path, cache=None)
        image = torch.linspace(0, 1, 3 * 30 * 34).reshape(1, 3, 30, 34)
        want = upscale(model, image, UpscaleOptions(device="cpu", tiles=TileSettings(tile=24))).flatten()
        arch, scale, values = old[path]
        assert (arch, scale) == (model.architecture.id, model.scale)
        assert (torch.tensor(values) - want).abs().max().item() <= 1e-5, path
