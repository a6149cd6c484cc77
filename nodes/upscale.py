"""Tilewise Upscale Image: seamless tiled upscaling of an IMAGE batch with any UPSCALE_MODEL."""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

from comfy_api.latest import io
from spandrel import ImageModelDescriptor

from ..engine import (
    ALPHA_MODES,
    FILTERS,
    PRECISIONS,
    AlphaMode,
    CancelledError,
    ImageError,
    ScaleTarget,
    TileSettings,
    TileSettingsError,
    UpscaleOptions,
    estimate_device_bytes,
    upscale,
)
from ..engine import tile_settings as engine_tile_settings
from . import host

#: Scale-mode choices as the node shows them -> the engine's ScaleTarget modes.
SCALE_MODES = {
    "native": "native",
    "factor": "factor",
    "width x height": "size",
    "longest side": "longest",
    "megapixels": "megapixels",
}
MERGES = ("crop", "blend")
DEVICES = ("auto", "cpu")
OUTPUT_DEVICES = ("auto", "cpu", "processing")
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
    "tile_size": "Window fed to the model, in pixels. 0 = auto (the largest that fits memory; whole images for models "
    "with global context when they fit); -1 = no tiling (whole image at once).",
    "tile_padding": "Context margin read around each tile. -1 = auto (the model's receptive radius, measured once).",
    "merge": "crop: keep only tile centres (exact for convolutional models); blend: feather the margins (for models "
    "with global context).",
    "precision": "auto: fp16/bf16 on a GPU where the model supports it, else fp32. bf16 on a CPU with native bf16 is "
    "2-4x faster "
    "for convolutional models, within about 1/200 of fp32.",
    "tile_batch": "Tiles per forward pass.",
    "device": "auto: ComfyUI's device (honours --cpu); cpu: force the CPU.",
}
#: The tiling widgets, in the order the video nodes show them.
TILE_WIDGETS = tuple(TILE_TOOLTIPS)


class TilewiseUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TilewiseUpscale",
            display_name="Upscale Image (Tilewise)",
            category="image/upscaling",
            description=(
                "Upscales an image batch tile by tile without seams: each tile reads enough context for the "
                "model's receptive field and only its centre is kept, so the result equals an untiled run. "
                "Reaches any target size by applying the model again and resizing."
            ),
            inputs=[
                io.UpscaleModel.Input(
                    "upscale_model", tooltip="From 'Load Upscale Model (Tilewise)' or the core 'Load Upscale Model'."
                ),
                io.Image.Input("image"),
                *(tile_input(name) for name in ("tile_size", "tile_padding", "merge", "precision")),
                io.Combo.Input(
                    "scale_mode",
                    options=list(SCALE_MODES),
                    default="native",
                    optional=True,
                    tooltip="native: the model's scale; factor; exact width x height (0 keeps the aspect ratio); "
                    "longest side; megapixels.",
                ),
                io.Float.Input(
                    "scale_factor",
                    default=2.0,
                    min=0.01,
                    max=64.0,
                    step=0.01,
                    optional=True,
                    tooltip="For scale_mode factor.",
                ),
                io.Int.Input(
                    "width",
                    default=1024,
                    min=0,
                    max=MAX_SIDE,
                    step=1,
                    optional=True,
                    tooltip="For scale_mode width x height; 0 = from the height and the aspect ratio.",
                ),
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=MAX_SIDE,
                    step=1,
                    optional=True,
                    tooltip="For scale_mode width x height; 0 = from the width and the aspect ratio.",
                ),
                io.Int.Input(
                    "longest_side",
                    default=2048,
                    min=1,
                    max=MAX_SIDE,
                    step=1,
                    optional=True,
                    tooltip="For scale_mode longest side.",
                ),
                io.Float.Input(
                    "megapixels",
                    default=4.0,
                    min=0.01,
                    max=256.0,
                    step=0.01,
                    optional=True,
                    tooltip="For scale_mode megapixels.",
                ),
                io.Combo.Input(
                    "resample",
                    options=list(FILTERS),
                    default="lanczos",
                    optional=True,
                    tooltip="Filter for the final resize to the exact target size (unused when the model's scale is "
                    "the target).",
                ),
                io.Combo.Input(
                    "alpha",
                    options=list(ALPHA_MODES),
                    default="resize",
                    optional=True,
                    tooltip="Alpha channel of RGBA images: resize it with the filter, run it through the model, or "
                    "drop it.",
                ),
                tile_input("tile_batch"),
                tile_input("device"),
                io.Combo.Input(
                    "output_device",
                    options=list(OUTPUT_DEVICES),
                    default="auto",
                    optional=True,
                    tooltip="auto: ComfyUI's intermediate device (the CPU unless --gpu-only); processing: keep the "
                    "result on the model's device.",
                ),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(
        cls,
        upscale_model,
        image,
        tile_size: int = 0,
        tile_padding: int = -1,
        merge: str = "crop",
        precision: str = "auto",
        scale_mode: str = "native",
        scale_factor: float = 2.0,
        width: int = 1024,
        height: int = 0,
        longest_side: int = 2048,
        megapixels: float = 4.0,
        resample: str = "lanczos",
        alpha: AlphaMode = "resize",
        tile_batch: int = 4,
        device: str = "auto",
        output_device: str = "auto",
    ) -> io.NodeOutput:
        check_inputs(upscale_model, tile_size)
        run_device = host.processing_device(device)
        options = UpscaleOptions(
            tiles=tile_settings(tile_size, tile_padding, merge, tile_batch),
            precision=precision,
            device=str(run_device),
            devices=host.devices(),
            output_device=str(host.result_device(output_device, run_device)),
            target=scale_target(scale_mode, scale_factor, width, height, longest_side, megapixels),
            resample=resample,
            alpha=alpha,
        )
        pixels = image.movedim(-1, 1)  # ComfyUI IMAGE (B, H, W, C) -> the engine's (B, C, H, W)
        progress, cancel = host.callbacks()
        with host.run_on(upscale_model, run_device):
            # a first call makes room as the core node does (no probe forwards); later ones with the measured figure
            host.make_room(
                estimate_device_bytes(
                    upscale_model, pixels.shape[-2], pixels.shape[-1], options, images=pixels.shape[0], measure=False
                ),
                run_device,
            )
            try:
                result = upscale(upscale_model, pixels, options, progress=progress, cancel=cancel)
            except CancelledError:
                host.raise_interrupt()
                raise
        return io.NodeOutput(result.movedim(1, -1))


def check_inputs(upscale_model, tile_size: int) -> None:
    """Rejects what is not an image model before any work (tile settings: `tile_settings`)."""
    if not isinstance(upscale_model, ImageModelDescriptor):
        raise ImageError(
            f"upscale_model must be a single-image upscale model (a spandrel ImageModelDescriptor), got "
            f"{type(upscale_model).__name__}."
        )


def tile_settings(tile_size: int, tile_padding: int, merge: str, tile_batch: int) -> TileSettings:
    """The tile widgets as the engine's settings, validated by the engine as in every host
    (tile_size 0 = auto, -1 = whole image; tile_padding -1 = the model's receptive radius)."""
    try:
        return engine_tile_settings(tile_size, pad=tile_padding, merge=merge, batch=tile_batch)
    except TileSettingsError as error:
        raise ValueError(f"{_WIDGETS[error.setting]}: {error}") from None


_WIDGETS = {"tile": "tile_size", "pad": "tile_padding", "merge": "merge", "batch": "tile_batch"}


def scale_target(
    mode: str, factor: float, width: int, height: int, longest_side: int, megapixels: float
) -> ScaleTarget:
    """The node's scale widgets as the engine's target (only the chosen mode's values count)."""
    if mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {', '.join(SCALE_MODES)}, got '{mode}'")
    engine_mode = SCALE_MODES[mode]
    if engine_mode == "factor":
        return ScaleTarget("factor", factor=factor)
    if engine_mode == "size":
        return ScaleTarget("size", width=width or None, height=height or None)
    if engine_mode == "longest":
        return ScaleTarget("longest", longest=longest_side)
    if engine_mode == "megapixels":
        return ScaleTarget("megapixels", megapixels=megapixels)
    return ScaleTarget("native")


NODES = [TilewiseUpscale]
