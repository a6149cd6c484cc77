"""Export ONNX (Tilewise): writes the model as a validated ONNX file into ComfyUI's output folder."""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..engine import MIN_OPSET, export_onnx


def output_path(prefix: str) -> Path:
    """`<output>/<prefix>.onnx`, or `<prefix>_00001.onnx` ... when taken; never outside the output folder."""
    root = Path(folder_paths.get_output_directory()).resolve()
    stem = (root / (prefix.strip() or "tilewise")).resolve()
    if root not in stem.parents:
        raise ValueError(f"filename_prefix '{prefix}' points outside ComfyUI's output folder")
    candidate = stem.with_name(stem.name + ".onnx")
    counter = 1
    while candidate.exists():
        candidate = stem.with_name(f"{stem.name}_{counter:05d}.onnx")
        counter += 1
    return candidate


class TilewiseExportONNX(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TilewiseExportONNX",
            display_name="Export Upscale Model to ONNX (Tilewise)",
            category="image/upscaling",
            description="Saves the model as an ONNX file in the output folder, for TensorRT, onnxruntime or other "
            "apps; any image size works, and the file is checked against PyTorch before it is kept.",
            inputs=[
                io.UpscaleModel.Input("upscale_model"),
                io.String.Input("filename_prefix", default="tilewise/model", optional=True),
                io.Int.Input("opset", default=MIN_OPSET, min=MIN_OPSET, max=23, optional=True),
                io.Boolean.Input(
                    "video",
                    default=False,
                    optional=True,
                    tooltip="ParagonSR2 video mode: inputs input, prev_feat; outputs output, feature_map",
                ),
            ],
            outputs=[io.String.Output("path", display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, upscale_model, filename_prefix: str = "tilewise/model", opset: int = MIN_OPSET, video: bool = False
    ) -> io.NodeOutput:
        path = output_path(filename_prefix)
        report = export_onnx(upscale_model, path, opset=opset, video=video)
        errors = ", ".join(f"{size}: {error:.1e}" for size, error in report.max_error.items())
        text = f"{path}\nonnxruntime vs PyTorch max error: {errors}"
        return io.NodeOutput(str(path), ui=ui.PreviewText(text))


NODES = [TilewiseExportONNX]
