"""Shared test helpers: real photographs from scikit-image's bundled data."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import reference_vectors
import torch

# Each test probes model memory afresh (tests replace the probe's parts); test_probe_store
# switches keeping probes on disk back on where it is the subject.
os.environ.setdefault("TILEWISE_PROBE_CACHE", "0")
# Nothing the tests run writes into the user's real cache folder. Subprocesses inherit the
# temporary one, and a test that names another for its subprocess (which may import this file
# again) keeps it: the marker says the folder was already chosen.
if not os.environ.get("TILEWISE_TEST_CACHE_CHOSEN"):
    _CACHE = tempfile.mkdtemp(prefix="tilewise-test-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["TILEWISE_CACHE_DIR"] = _CACHE
    os.environ["TILEWISE_TEST_CACHE_CHOSEN"] = "1"

#: Test vectors from the ParagonSR2 reference implementation: the subset bundled in
#: `tests/fixtures/`, or the full set in `$PARAGONSR2_FIXTURES` (see `reference_vectors`).
PARAGONSR2_FIXTURES = reference_vectors.folder()
os.environ["PARAGONSR2_FIXTURES"] = str(PARAGONSR2_FIXTURES)  # subprocesses reuse this unpacked copy


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small models: the machine's cores are shared, and
    several threads per process only fight each other (use with `pytest.mark.usefixtures`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def photo(name: str = "astronaut", top: int = 0, left: int = 0, height: int = 64, width: int = 64) -> torch.Tensor:
    """(1, 3, H, W) float32 crop of a scikit-image bundled photograph (or 1 channel for gray ones)."""
    from skimage import data

    array = getattr(data, name)()[top : top + height, left : left + width]
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div(255)[None]


@pytest.fixture
def photo_png(tmp_path) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()[100:160, 150:230]).save(path)
    return path


@pytest.fixture(autouse=True)
def glibc_cost_terms(monkeypatch):
    """Auto tiling's plans as measured on glibc, on any platform the tests run on: the
    large-tensor term is glibc's only (`test_autotile` tests that rule itself). Not in
    ComfyUI's Python (the in-process checks), where the pack is no `tilewise` package."""
    try:
        from tilewise.engine.plan import autotile
    except ImportError:
        return
    monkeypatch.setattr(autotile, "LARGE_TENSOR", 31 << 20)
