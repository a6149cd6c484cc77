"""Reading checkpoint files: every wrong or hostile file gets a clear refusal naming it."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tilewise.engine import ModelFileError, UnsafeModelError, canonicalize, read_state_dict

WEIGHTS = {"conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2), "conv.bias": torch.ones(2)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt", ".bin"])
def test_pickle_extensions_load_through_weights_only(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save(WEIGHTS, path)
    assert _same(read_state_dict(path), WEIGHTS)


def test_legacy_non_zip_pth_loads(tmp_path):
    path = tmp_path / "old.pth"
    torch.save(WEIGHTS, path, _use_new_zipfile_serialization=False)
    assert _same(read_state_dict(path), WEIGHTS)


def test_safetensors_loads(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(WEIGHTS, path)
    assert _same(read_state_dict(path), WEIGHTS)


@pytest.mark.parametrize(
    "wrapped",
    [
        {"params_ema": WEIGHTS, "params": {k: v * 0 for k, v in WEIGHTS.items()}},
        {"params": WEIGHTS},
        {"state_dict": WEIGHTS, "epoch": 12},
        {"model": WEIGHTS},
        {"net": WEIGHTS},
        {"anything": WEIGHTS},
        {f"module.{k}": v for k, v in WEIGHTS.items()},
        {f"netG.{k}": v for k, v in WEIGHTS.items()},
        {f"_orig_mod.{k}": v for k, v in WEIGHTS.items()},
        {f"module._orig_mod.{k}": v for k, v in WEIGHTS.items()},
        {"state_dict": {f"module.{k}": v for k, v in WEIGHTS.items()}},
    ],
    ids=[
        "params_ema-wins",
        "params",
        "state_dict+meta",
        "model",
        "net",
        "single-key",
        "module.",
        "netG.",
        "_orig_mod.",
        "module._orig_mod.",
        "nested",
    ],
)
def test_wrappers_and_prefixes_are_canonicalised(tmp_path, wrapped):
    path = tmp_path / "wrapped.pth"
    torch.save(wrapped, path)
    assert _same(read_state_dict(path), WEIGHTS)


def test_compiled_submodule_prefix_is_stripped():
    assert set(canonicalize({"body._orig_mod.0.weight": torch.zeros(1)})) == {"body.0.weight"}


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nothere\.pth: not found"):
        read_state_dict(tmp_path / "nothere.pth")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"empty.safetensors: is empty.*Download it again"):
        read_state_dict(path)


def test_html_page(tmp_path):
    path = tmp_path / "4x_model.pth"
    path.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>")
    with pytest.raises(ModelFileError, match=r"4x_model.pth: is a web page \(HTML\)"):
        read_state_dict(path)


def test_git_lfs_pointer(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 67000000\n")
    with pytest.raises(ModelFileError, match=r"Git LFS pointer.*git lfs pull"):
        read_state_dict(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_safetensors(tmp_path, keep):
    whole = tmp_path / "whole.safetensors"
    save_file({"w": torch.rand(64, 64)}, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: max(9, int(len(data) * keep))])
    with pytest.raises(ModelFileError, match=r"cut.safetensors: is (a )?truncated"):
        read_state_dict(cut)


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_truncated_pth(tmp_path, keep):
    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.rand(64, 64)}, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match=r"cut.pth: is (a )?(truncated|damaged|not a checkpoint)"):
        read_state_dict(cut)


def test_oversized_safetensors_header_is_refused(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b'{"a": 1}')
    with pytest.raises(UnsafeModelError, match="header"):
        read_state_dict(path)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeModelError, match=r"evil.pth: contains the Python object '(posix|os)\.system'"):
        read_state_dict(path)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"x": _RunsCode(marker)}, protocol=2))
    with pytest.raises(UnsafeModelError, match="named .safetensors but holds a pickle"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 2, 2)), str(path))
    with pytest.raises(UnsafeModelError, match="TorchScript.*runs code"):
        read_state_dict(path)


def test_zip_bomb_member_is_refused(tmp_path):
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb/data.pkl", b"\0" * (4 << 20))
    with pytest.raises(UnsafeModelError, match="zip bomb"):
        read_state_dict(path)


def test_image_saved_as_model(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.pth"
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ModelFileError, match="is an image, not model weights"):
        read_state_dict(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(7, 256)) * 3)
    with pytest.raises(ModelFileError, match="noise.pth: is not a checkpoint"):
        read_state_dict(path)


def test_file_with_no_tensors(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "note": "hello"}, path)
    with pytest.raises(ModelFileError, match=r"contains no weight tensors \(top-level keys: epoch, note\)"):
        read_state_dict(path)


def test_bare_tensor_file(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelFileError, match="holds a Tensor, not a state dict"):
        read_state_dict(path)
