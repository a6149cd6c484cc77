"""Tilewise Upscale Image: seamless tiled upscaling of an IMAGE batch with any UPSCALE_MODEL."""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

from comfy_api.latest import io
from spandrel import ImageModelDescriptor

from ..engine import (
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
from .options import MAX_SIDE, OPTIONS_TYPE, NodeOptions, alpha_input, output_device_input, resample_input, tile_input

#: Scale-mode choices of the legacy node -> the engine's ScaleTarget modes.
SCALE_MODES = {
    "native": "native",
    "factor": "factor",
    "width x height": "size",
    "longest side": "longest",
    "megapixels": "megapixels",
}
#: Scale-mode choices of Upscale Image (Tilewise): "fit inside" a width x height box replaces
#: "longest side" (fit inside N x N is longest side N, to the pixel), so that five widgets say it all.
SIZE_MODES = {
    "native": "native",
    "factor": "factor",
    "width x height": "size",
    "fit inside": "fit",
    "megapixels": "megapixels",
}


def size_inputs() -> list:
    """The five widgets of Upscale Image (Tilewise): the output size, nothing else (all optional, so an API
    prompt with only a model and an image runs at the model's scale, as the core node does)."""
    return [
        io.Combo.Input(
            "scale_mode",
            options=list(SIZE_MODES),
            default="native",
            optional=True,
            tooltip="Output size. native: the model's own scale; factor: scale_by times the input; width x height: "
            "exactly that size (0 keeps the aspect ratio); fit inside: as large as fits in width x height; "
            "megapixels: about that many million pixels. Sizes beyond the model's scale run it again.",
        ),
        io.Float.Input(
            "scale_by",
            default=2.0,
            min=0.01,
            max=64.0,
            step=0.01,
            optional=True,
            tooltip="For factor: 2.0 doubles width and height.",
        ),
        io.Int.Input(
            "width",
            default=1024,
            min=0,
            max=MAX_SIDE,
            step=1,
            optional=True,
            tooltip="For width x height and fit inside, in pixels.",
        ),
        io.Int.Input(
            "height",
            default=1024,
            min=0,
            max=MAX_SIDE,
            step=1,
            optional=True,
            tooltip="For width x height and fit inside, in pixels.",
        ),
        io.Float.Input(
            "megapixels", default=4.0, min=0.01, max=256.0, step=0.01, optional=True, tooltip="For megapixels."
        ),
    ]


class TilewiseUpscaleImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TilewiseUpscaleImage",
            display_name="Upscale Image (Tilewise)",
            category="image/upscaling",
            description="Upscales images with any upscale model, to its own scale or to any size, without seams and "
            "without running out of memory: large images are processed in tiles that join exactly as if the whole "
            "image had been processed at once. Connect Tilewise Options for tile size, precision and devices.",
            inputs=[
                io.UpscaleModel.Input(
                    "upscale_model", tooltip="From Load Upscale Model (Tilewise) or the core Load Upscale Model."
                ),
                io.Image.Input("image"),
                *size_inputs(),
                OPTIONS_TYPE.Input(
                    "options", optional=True, tooltip="From Tilewise Options; leave empty for the defaults."
                ),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(
        cls,
        upscale_model,
        image,
        scale_mode: str = "native",
        scale_by: float = 2.0,
        width: int = 1024,
        height: int = 1024,
        megapixels: float = 4.0,
        options: NodeOptions | None = None,
    ) -> io.NodeOutput:
        target = scale_target(scale_mode, scale_by, width, height, 0, megapixels, modes=SIZE_MODES)
        return io.NodeOutput(run_upscale(upscale_model, image, target, options or NodeOptions()))


class TilewiseUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TilewiseUpscale",
            display_name="Upscale Image (Tilewise, all options)",
            category="image/upscaling",
            description=(
                "The first Upscale Image (Tilewise), with every option on the node; kept so that saved workflows "
                "load and give the same pixels. New workflows: Upscale Image (Tilewise) with Tilewise Options."
            ),
            is_deprecated=True,
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
                resample_input(),
                alpha_input(),
                tile_input("tile_batch"),
                tile_input("device"),
                output_device_input(),
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
        target = scale_target(scale_mode, scale_factor, width, height, longest_side, megapixels)
        settings = NodeOptions(
            tile_size=tile_size,
            tile_padding=tile_padding,
            merge=merge,
            precision=precision,
            tile_batch=tile_batch,
            device=device,
            output_device=output_device,
            resample=resample,
            alpha=alpha,
        )
        return io.NodeOutput(run_upscale(upscale_model, image, target, settings))


def run_upscale(upscale_model, image, target: ScaleTarget, settings: NodeOptions):
    """Both upscale nodes: the engine's `upscale` on a ComfyUI IMAGE batch, with ComfyUI's devices,
    memory, progress bar and Cancel."""
    check_inputs(upscale_model, settings.tile_size)
    run_device = host.processing_device(settings.device)
    options = UpscaleOptions(
        tiles=tile_settings(settings.tile_size, settings.tile_padding, settings.merge, settings.tile_batch),
        precision=settings.precision,
        device=str(run_device),
        devices=host.devices(),
        output_device=str(host.result_device(settings.output_device, run_device)),
        target=target,
        resample=settings.resample,
        alpha=settings.alpha,
        tileable=settings.tileable,
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
    return result.movedim(1, -1)


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
    mode: str,
    factor: float,
    width: int,
    height: int,
    longest_side: int,
    megapixels: float,
    modes: dict[str, str] = SCALE_MODES,
) -> ScaleTarget:
    """A node's scale widgets as the engine's target (only the chosen mode's values count); `modes`
    maps the node's choices to the engine's (`SCALE_MODES` for the legacy node, `SIZE_MODES`)."""
    if mode not in modes:
        raise ValueError(f"scale_mode must be one of {', '.join(modes)}, got '{mode}'")
    engine_mode = modes[mode]
    if engine_mode == "factor":
        return ScaleTarget("factor", factor=factor)
    if engine_mode == "size":
        return ScaleTarget("size", width=width or None, height=height or None)
    if engine_mode == "fit":
        return ScaleTarget("fit", width=width, height=height)
    if engine_mode == "longest":
        return ScaleTarget("longest", longest=longest_side)
    if engine_mode == "megapixels":
        return ScaleTarget("megapixels", megapixels=megapixels)
    return ScaleTarget("native")


NODES = [TilewiseUpscaleImage, TilewiseUpscale]
