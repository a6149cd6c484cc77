"""ONNX export: dynamic shapes, opset, names, and onnxruntime equal to PyTorch (and the fixtures)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

onnx = pytest.importorskip("onnx", reason="the optional 'onnx' extra is part of the test extra; install tilewise[test]")
ort = pytest.importorskip("onnxruntime")

from conftest import PARAGONSR2_FIXTURES as FIXTURES  # noqa: E402
from model_zoo import ZOO  # noqa: E402
from tilewise.cli import main  # noqa: E402
from tilewise.engine import TilewiseError, describe_state_dict, load_model  # noqa: E402
from tilewise.engine.model.export import export_onnx  # noqa: E402


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", ["Compact", "SPAN", "ESRGAN-2x", "OmniSR"])
def test_export_matches_pytorch_at_two_sizes(tmp_path, name):
    descriptor = describe_state_dict(ZOO[name].state_dict(seed=0))
    report = export_onnx(descriptor, tmp_path / "m.onnx")
    assert len(report.max_error) == 2 and max(report.max_error.values()) <= 1e-4
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert graph.opset_import[0].version >= 17
    assert [i.name for i in graph.graph.input] == ["input"] and [o.name for o in graph.graph.output] == ["output"]
    batch, channels, height, width = _dims(graph.graph.input[0])
    assert (batch, height, width) == ("batch", "height", "width") and channels == 3


def test_unfaithful_exports_are_caught_and_not_written(tmp_path):
    """SwinIR's traced graph does not reproduce PyTorch (shape-dependent Python in its attention);
    validation refuses it with advice, and no file is left behind."""
    descriptor = describe_state_dict(ZOO["SwinIR"].state_dict(seed=0))
    with pytest.raises(TilewiseError, match=r"differs from PyTorch by .* export at a fixed size \(CLI --size HxW\)"):
        export_onnx(descriptor, tmp_path / "s.onnx")
    assert list(tmp_path.iterdir()) == []


def test_fixed_size_export(tmp_path):
    descriptor = describe_state_dict(ZOO["Compact"].state_dict(seed=0))
    report = export_onnx(descriptor, tmp_path / "c.onnx", size=(40, 56))
    assert list(report.max_error) == ["1x3x40x56", "2x3x40x56"] and max(report.max_error.values()) <= 1e-4
    assert _dims(onnx.load(str(tmp_path / "c.onnx")).graph.input[0]) == ["batch", 3, 40, 56]


def test_paragonsr2_video_export_reproduces_the_fixture(tmp_path):
    descriptor = load_model(f"{FIXTURES}/paragonsr2_realtime_x2.safetensors", cache=None)
    export_onnx(descriptor, tmp_path / "v.onnx", video=True)
    graph = onnx.load(str(tmp_path / "v.onnx"))
    assert [i.name for i in graph.graph.input] == ["input", "prev_feat"]
    assert [o.name for o in graph.graph.output] == ["output", "feature_map"]
    io = load_file(f"{FIXTURES}/paragonsr2_realtime_x2.io.safetensors")
    session = ort.InferenceSession(str(tmp_path / "v.onnx"), providers=["CPUExecutionProvider"])
    output, feature = session.run(None, {"input": io["input_frame2"].numpy(), "prev_feat": io["video_feat1"].numpy()})
    assert (torch.from_numpy(output) - io["video_output2"]).abs().max().item() <= 1e-4
    assert (torch.from_numpy(feature) - io["video_feat2"]).abs().max().item() <= 1e-4


def test_attention_model_exports_for_sizes_off_the_window_grid(tmp_path):
    descriptor = load_model(f"{FIXTURES}/paragonsr2_photo_x2.safetensors", cache=None)
    report = export_onnx(descriptor, tmp_path / "p.onnx", video=True)
    assert max(report.max_error.values()) <= 1e-4  # 29x45 is not a multiple of the 16-px window


def test_video_export_needs_a_temporal_model(tmp_path):
    with pytest.raises(TilewiseError, match="has no video mode"):
        export_onnx(describe_state_dict(ZOO["Compact"].state_dict(seed=0)), tmp_path / "c.onnx", video=True)
    assert not (tmp_path / "c.onnx").exists()


def test_cli_export(tmp_path, capsys):
    assert main(["export-onnx", "builtin:magic-kernel-sharp-2x", str(tmp_path / "mks.onnx")]) == 0
    assert "onnxruntime vs PyTorch max error" in capsys.readouterr().err
    assert main(["export-onnx", "builtin:magic-kernel-sharp-2x", str(tmp_path / "mks.txt")]) == 2
