"""Tilewise Options: the settings most users never touch, as one optional node.

The upscale node shows only what decides the output size; tiling, precision, devices, the
final resize filter and alpha handling come from this node when it is connected (the way a
sampler object plugs into ComfyUI's custom sampler), else from `NodeOptions()`'s defaults,
which are the same as this node's widget defaults.
"""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..engine import ALPHA_MODES, FILTERS, PRECISIONS, AlphaMode

#: The socket type that carries `NodeOptions` from this node to the upscale node.
OPTIONS_TYPE = io.Custom("TILEWISE_OPTIONS")
OUTPUT_DEVICES = ("auto", "cpu", "processing")
MERGES = ("crop", "blend")
DEVICES = ("auto", "cpu")
MAX_SIDE = 16384


def tile_input(name: str, note: str = ""):
    """One of the tiling widgets, declared once for every node that runs the engine
    (`TILE_WIDGETS`; `note` is appended to its tooltip)."""
    widgets = {
        "tile_size": lambda tip: io.Int.Input(
            "tile_size", default=0, min=-1, max=MAX_SIDE, step=1, optional=True, tooltip=tip
        ),
        "tile_padding": lambda tip: io.Int.Input(
            "tile_padding", default=-1, min=-1, max=1024, step=1, optional=True, tooltip=tip
        ),
        "merge": lambda tip: io.Combo.Input("merge", options=list(MERGES), default="crop", optional=True, tooltip=tip),
        "precision": lambda tip: io.Combo.Input(
            "precision", options=list(PRECISIONS), default="auto", optional=True, tooltip=tip
        ),
        "tile_batch": lambda tip: io.Int.Input(
            "tile_batch", default=4, min=1, max=64, step=1, optional=True, tooltip=tip
        ),
        "device": lambda tip: io.Combo.Input(
            "device", options=list(DEVICES), default="auto", optional=True, tooltip=tip
        ),
    }
    return widgets[name]((TILE_TOOLTIPS[name] + " " + note).strip())


TILE_TOOLTIPS = {
    "tile_size": "Size of the pieces the image is processed in, in pixels. 0 (auto): the largest that fits your "
    "memory, or the whole image when it fits; -1: always the whole image. Tiles join without seams either way.",
    "tile_padding": "Context each tile reads around itself so that tiles join without seams. -1 (auto): what the "
    "model needs, measured once per model.",
    "merge": "crop: keep each tile's centre only, identical to processing the whole image (right for most models); "
    "blend: feather the tile borders, for models that look at the whole image.",
    "precision": "auto: half precision on a GPU when the model supports it, else full precision. bf16 on a CPU "
    "with native bf16 runs convolutional models 2-4x faster, within about 1/200 of fp32.",
    "tile_batch": "Tiles run together on a GPU: faster while memory allows; running out of memory halves it by itself.",
    "device": "auto: ComfyUI's device (follows --cpu); cpu: always the CPU, e.g. to keep the GPU free.",
}
#: The tiling widgets, in the order the video nodes show them.
TILE_WIDGETS = tuple(TILE_TOOLTIPS)


@dataclass(frozen=True)
class NodeOptions:
    """Everything besides the model, the image and the output size that the upscale node passes on."""

    tile_size: int = 0
    tile_padding: int = -1
    merge: str = "crop"
    precision: str = "auto"
    tile_batch: int = 4
    device: str = "auto"
    output_device: str = "auto"
    resample: str = "lanczos"
    alpha: AlphaMode = "resize"
    tileable: bool = False


def output_device_input() -> io.Combo.Input:
    return io.Combo.Input(
        "output_device",
        options=list(OUTPUT_DEVICES),
        default="auto",
        optional=True,
        tooltip="Where the result goes. auto: where ComfyUI keeps images between nodes (normally system RAM); "
        "processing: stay on the GPU for the next node.",
    )


def resample_input() -> io.Combo.Input:
    return io.Combo.Input(
        "resample",
        options=list(FILTERS),
        default="lanczos",
        optional=True,
        tooltip="Filter for the last step to an exact size that is not a multiple of the model's scale.",
    )


def tileable_input() -> io.Boolean.Input:
    return io.Boolean.Input(
        "tileable",
        default=False,
        optional=True,
        tooltip="For repeating textures: continue the image across each edge from the opposite one, so the result "
        "repeats without a seam too.",
    )


def alpha_input() -> io.Combo.Input:
    return io.Combo.Input(
        "alpha",
        options=list(ALPHA_MODES),
        default="resize",
        optional=True,
        tooltip="Transparency of RGBA images: resize it with the filter, upscale it with the model too, or drop it.",
    )


class TilewiseOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TilewiseOptions",
            display_name="Tilewise Options",
            category="image/upscaling",
            description="Fine control for Upscale Image (Tilewise): tile size, precision, device, resize filter, "
            "alpha and tileable textures. The defaults already fit the model to your memory without seams; connect "
            "this node only to change them.",
            inputs=[
                *(tile_input(name) for name in ("tile_size", "tile_padding", "merge", "precision", "tile_batch")),
                tile_input("device"),
                output_device_input(),
                resample_input(),
                alpha_input(),
                tileable_input(),
            ],
            outputs=[
                OPTIONS_TYPE.Output("options", tooltip="Connect to the options input of Upscale Image (Tilewise).")
            ],
        )

    @classmethod
    def execute(cls, **widgets) -> io.NodeOutput:
        return io.NodeOutput(NodeOptions(**widgets))


NODES = [TilewiseOptions]
