"""Image files <-> tensors: bit depths kept, alpha and gray kept, writes atomic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tilewise.engine import ImageError
from tilewise.engine.image.images import pil_to_tensor, read_image, tensor_to_pil, write_image


def test_16bit_png_round_trip_is_exact(tmp_path):
    values = torch.randint(0, 65536, (1, 3, 9, 13), generator=torch.Generator().manual_seed(0)).float() / 65535
    path = write_image(tmp_path / "deep.png", values, bits=16)
    loaded = read_image(path)
    assert loaded.bits == 16
    assert torch.equal(loaded.tensor, values)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_8bit_png_round_trip_keeps_channels(tmp_path, channels):
    values = torch.randint(0, 256, (1, channels, 7, 5), generator=torch.Generator().manual_seed(channels)).float() / 255
    loaded = read_image(write_image(tmp_path / "x.png", values, bits=8))
    assert loaded.bits == 8 and torch.equal(loaded.tensor, values)


def test_16bit_gray_png_from_pillow(tmp_path):
    array = np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000
    Image.fromarray(array).save(tmp_path / "g.png")
    loaded = read_image(tmp_path / "g.png")
    assert loaded.bits == 16 and loaded.tensor.shape == (1, 1, 6, 10)
    assert torch.allclose(loaded.tensor[0, 0], torch.from_numpy(array.astype(np.float32) / 65535))


def test_npy_is_bit_exact(tmp_path):
    values = torch.rand(1, 3, 5, 6)
    loaded = read_image(write_image(tmp_path / "x.npy", values))
    assert torch.equal(loaded.tensor, values)
    assert np.load(tmp_path / "x.npy").shape == (5, 6, 3)


def test_jpeg_drops_alpha(tmp_path):
    write_image(tmp_path / "x.jpg", torch.rand(1, 4, 8, 8))
    assert Image.open(tmp_path / "x.jpg").mode == "RGB"


def test_palette_with_transparency_reads_as_rgba(tmp_path):
    image = Image.new("P", (4, 4))
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    assert read_image(tmp_path / "p.png").tensor.shape[1] == 4


def test_pil_conversions_round_trip():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(tensor_to_pil(pil_to_tensor(image))), np.asarray(image))


def test_unreadable_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(ImageError, match="broken.png: cannot read"):
        read_image(path)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ImageError, match="1 to 4 channels"):
        write_image(tmp_path / "x.png", torch.rand(1, 5, 4, 4))  # 5 channels cannot be written
    assert list(tmp_path.iterdir()) == []
