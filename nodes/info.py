"""Tilewise Model Info: what an UPSCALE_MODEL is, as text."""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

from comfy_api.latest import io, ui
from spandrel import ImageModelDescriptor

from ..engine import model_summary


def describe(descriptor: ImageModelDescriptor) -> str:
    """One `field: value` line per fact `tilewise info` shows, plus the usable precisions."""
    summary = model_summary(descriptor)
    precisions = (
        ["fp32"] + (["fp16"] if summary["supports_half"] else []) + (["bf16"] if summary["supports_bfloat16"] else [])
    )
    requirements = summary["size_requirements"]
    lines = [
        f"architecture: {summary['architecture']}",
        f"purpose: {summary['purpose']}",
        f"scale: {summary['scale']}x",
        f"channels: {summary['input_channels']} in, {summary['output_channels']} out",
        f"params: {summary['params']:,}",
        f"precisions: {', '.join(precisions)}",
        f"tiling: {summary['tiling']}",
        f"size requirements: minimum {requirements['minimum']}, multiple of {requirements['multiple_of']}"
        + (", square" if requirements["square"] else ""),
    ]
    if summary["tags"]:
        lines.append(f"tags: {', '.join(summary['tags'])}")
    return "\n".join(lines)


class TilewiseModelInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TilewiseModelInfo",
            display_name="Upscale Model Info (Tilewise)",
            category="image/upscaling",
            description="Shows what an upscale model is, on the node after a run: architecture, scale, channels, "
            "parameter count and the precisions it can run in.",
            inputs=[io.UpscaleModel.Input("upscale_model")],
            outputs=[io.String.Output("info", display_name="info")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, upscale_model) -> io.NodeOutput:
        text = describe(upscale_model)
        return io.NodeOutput(text, ui=ui.PreviewText(text))


NODES = [TilewiseModelInfo]
