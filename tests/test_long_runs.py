"""Long runs do not leak: resident memory stays flat over hundreds of images and frames.

The default run keeps the counts small (500 images through the CLI, 400 frames through the
engine); `TILEWISE_SOAK=1` runs the full soak (5000 images, 3000 frames).
"""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
import torch
from conftest import photo
from model_zoo import ZOO
from PIL import Image
from tilewise.cli import main
from tilewise.engine import TileSettings, UpscaleOptions, load_model, upscale

#: Growth allowed between the warmed-up state and the end of the run.
RSS_BOUND = 40 * 2**20
FULL_SOAK = os.environ.get("TILEWISE_SOAK") == "1"
IMAGES = 5000 if FULL_SOAK else 500
FRAMES = 3000 if FULL_SOAK else 400


from tilewise.engine.compute.devices import resident_bytes as rss  # noqa: E402


class Sampler:
    """Samples RSS every 20 ms while running."""

    def __init__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(rss())
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _flat(samples: list[int]) -> tuple[int, int]:
    """Peak RSS over the first fifth (after warm-up) and over the last fifth."""
    fifth = max(1, len(samples) // 5)
    return max(samples[fifth : 2 * fifth]), max(samples[-fifth:])


@pytest.mark.slow
def test_cli_over_many_images(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(folder / f"{index:04d}.png")
    gc.collect()
    with Sampler() as sampler:
        assert main(["upscale", str(folder), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert len(list((tmp_path / "out").iterdir())) == IMAGES
    early, late = _flat(sampler.samples)
    assert late - early < RSS_BOUND, f"RSS grew from {early >> 20} MiB to {late >> 20} MiB"


@pytest.mark.slow
def test_engine_over_many_frames(tmp_path):
    model = load_model(ZOO["Compact"].save(tmp_path / "c.safetensors", seed=0, scale=2))
    frame = photo("chelsea", 0, 0, 40, 48)
    options = UpscaleOptions(device="cpu", tiles=TileSettings(tile=24, batch=2))
    gc.collect()
    with Sampler() as sampler:
        for index in range(FRAMES):
            shifted = torch.roll(frame, shifts=index % 7, dims=-1)
            out = upscale(model, shifted, options)
    assert out.shape == (1, 3, 80, 96)
    early, late = _flat(sampler.samples)
    assert late - early < RSS_BOUND, f"RSS grew from {early >> 20} MiB to {late >> 20} MiB"
