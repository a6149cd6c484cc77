"""ONNX export of any loaded model, validated with onnxruntime against PyTorch.

Graph: input `input` (B, C, H, W) float32 in [0, 1] -> `output` (B, C', sH, sW), batch, height
and width dynamic, opset 17 or newer. ParagonSR2 in video mode adds input `prev_feat`
(B, num_feat, H, W) and output `feature_map` (same shape): the post-blend LR feature to feed into
the next frame; a graph input cannot be absent, so the first frame passes zeros (upstream's
TensorRT convention). The output is not clamped (as the PyTorch model); clamp when converting.

The model is traced at a size that is not a multiple of common attention windows, so the
padding branches of window-attention models are part of the graph and other sizes run too.
Needs the optional extra `onnx` (`pip install tilewise[onnx]`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from spandrel import ImageModelDescriptor

from ..compute.precision import forward_fn, private_copy
from ..errors import TilewiseError
from ..storage import exclusive_file

MIN_OPSET = 17
#: Traced size: odd, and not a multiple of 8, 16 or any window size in use.
TRACE_SIZE = (37, 53)
VALIDATION_SIZES = ((1, 29, 45), (2, 48, 64))
TOLERANCE = 1e-4


class _Shadow:
    """The descriptor's call convention around another module."""

    def __init__(self, descriptor: ImageModelDescriptor, model: torch.nn.Module):
        self._call_fn = getattr(descriptor, "_call_fn", None)
        self.model = model
        self.architecture = descriptor.architecture
        self.input_channels = descriptor.input_channels
        self.size_requirements = descriptor.size_requirements


class _Plain(torch.nn.Module):
    def __init__(self, descriptor: ImageModelDescriptor):
        super().__init__()
        self.model = descriptor.model
        self.forward_model = forward_fn(descriptor, descriptor.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_model(x)


class _Video(torch.nn.Module):
    def __init__(self, descriptor: ImageModelDescriptor, temporal_alpha: float):
        super().__init__()
        self.model = descriptor.model
        self.temporal_alpha = temporal_alpha

    def forward(self, x: torch.Tensor, prev_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(x, feature_tap=True, prev_feat=prev_feat, alpha=self.temporal_alpha)


@dataclass
class ExportReport:
    path: Path
    opset: int
    video: bool
    max_error: dict[str, float] = field(default_factory=dict)  # per validated input size


def export_onnx(
    descriptor: ImageModelDescriptor,
    path: str | Path,
    *,
    opset: int = MIN_OPSET,
    video: bool = False,
    temporal_alpha: float | None = None,
    validate: bool = True,
    size: tuple[int, int] | None = None,
) -> ExportReport:
    """Writes `descriptor`'s model as ONNX to `path` (fp32, CPU) and checks it with onnxruntime.

    `size` (height, width) fixes the spatial size (only the batch stays dynamic), for
    architectures whose graph depends on the input size in Python (SwinIR's shifted-window
    masks): their dynamic export fails validation with a message that says to fix the size.
    """
    path = Path(path)
    if opset < MIN_OPSET:
        raise TilewiseError(f"ONNX opset {opset} is too old; use {MIN_OPSET} or newer")
    if video and not getattr(descriptor.model, "supports_temporal", False):
        raise TilewiseError(
            f"{descriptor.architecture.name} has no video mode (previous-feature input); export it without video"
        )
    _require("onnx")  # a missing optional package is the caller's to name (pip install "tilewise[onnx]")
    if validate:
        _require("onnxruntime")
    with torch.inference_mode(False):
        return _export(descriptor, path, opset, video, temporal_alpha, validate, size)


def _require(module: str) -> None:
    """Raises ModuleNotFoundError (with `.name`) when `module` cannot be imported."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as error:
        raise ModuleNotFoundError(f"{module} is not installed", name=module) from error


def _export(descriptor, path: Path, opset: int, video: bool, temporal_alpha, validate: bool, size) -> ExportReport:
    # a private fp32 CPU copy: the shared model keeps its device and dtype, and a model loaded
    # under inference mode (ComfyUI) becomes traceable (clones made outside it are normal tensors)
    model = private_copy(descriptor.model, torch.device("cpu"), torch.float32).eval()
    descriptor = cast(ImageModelDescriptor, _Shadow(descriptor, model))  # duck-typed: the fields read below
    channels = descriptor.input_channels
    height, width = size if size is not None else _trace_size(descriptor)
    example = torch.rand(1, channels, height, width, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch"} if size is not None else {0: "batch", 2: "height", 3: "width"}
    out_axes = {0: "batch"} if size is not None else {0: "batch", 2: "out_height", 3: "out_width"}
    if video:
        alpha = temporal_alpha if temporal_alpha is not None else getattr(model, "temporal_alpha", 0.2)
        wrapper: torch.nn.Module = _Video(descriptor, alpha)
        inputs = (example, torch.zeros(1, cast(int, model.num_feat), height, width))
        names_in, names_out = ["input", "prev_feat"], ["output", "feature_map"]
        dynamic = {"input": axes, "prev_feat": axes, "output": out_axes, "feature_map": axes}
    else:
        wrapper = _Plain(descriptor)
        inputs = (example,)
        names_in, names_out = ["input"], ["output"]
        dynamic = {"input": axes, "output": out_axes}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = exclusive_file(path.parent, ".onnx")  # never a planted link, never a fixed name
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                inputs,
                str(temporary),
                input_names=names_in,
                output_names=names_out,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        report = ExportReport(path, opset, video)
        if validate:
            sizes = [(1, height, width), (2, height, width)] if size is not None else VALIDATION_SIZES
            report.max_error = validate_onnx(
                temporary, wrapper, channels, video, getattr(model, "num_feat", 0), sizes, fixed=size is not None
            )
        temporary.replace(path)
        return report
    except TilewiseError:
        raise
    except Exception as error:
        raise TilewiseError(
            f"ONNX export of {descriptor.architecture.name} failed: {type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}"
        ) from error
    finally:
        temporary.unlink(missing_ok=True)


def _trace_size(descriptor: ImageModelDescriptor) -> tuple[int, int]:
    requirements = descriptor.size_requirements
    height, width = TRACE_SIZE
    if requirements.multiple_of > 1 or requirements.minimum > height:
        m = max(requirements.multiple_of, 1)
        height = max(requirements.minimum, -(-height // m) * m)
        width = max(requirements.minimum, -(-width // m) * m)
    if requirements.square:
        height = width = max(height, width)
    return height, width


def validate_onnx(
    path: Path,
    wrapper: torch.nn.Module,
    channels: int,
    video: bool,
    num_feat: int,
    sizes=VALIDATION_SIZES,
    fixed: bool = False,
) -> dict[str, float]:
    """Max abs difference between onnxruntime and PyTorch on `VALIDATION_SIZES`; raises above tolerance."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise TilewiseError("validating an ONNX export needs onnxruntime: pip install 'tilewise[onnx]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    errors = {}
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in sizes:
        x = torch.rand(batch, channels, height, width, generator=generator)
        feeds = {"input": x.numpy()}
        args: tuple = (x,)
        if video:
            prev = torch.rand(batch, num_feat, height, width, generator=generator)
            feeds["prev_feat"] = prev.numpy()
            args = (x, prev)
        with torch.no_grad():
            want = wrapper(*args)
        want = want if isinstance(want, tuple) else (want,)
        got = session.run(None, feeds)
        error = max(float((torch.from_numpy(g) - w).abs().max()) for g, w in zip(got, want))
        errors[f"{batch}x{channels}x{height}x{width}"] = error
        if not error <= TOLERANCE:
            advice = "" if fixed else "; its graph depends on the input size: export at a fixed size (CLI --size HxW)"
            raise TilewiseError(f"the ONNX export differs from PyTorch by {error:.2e} at {width}x{height}{advice}")
    return errors
