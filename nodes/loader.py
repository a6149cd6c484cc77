"""Tilewise Load Upscale Model: a file from ComfyUI's upscale_models folders or a built-in model."""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..engine import ONNX_EXTENSIONS, LoadHints, is_builtin, load_model, model_names_in
from . import host

#: Widget value meaning "no hint": the model's own (or its file name's) value.
NO_SCALE_HINT = 0
NO_ALPHA_HINT = -1.0


def model_names() -> list[str]:
    """ComfyUI's upscale_models files, the `.onnx` files its extension filter leaves out
    (`folder_paths` lists PyTorch extensions only), then the built-in models."""
    listed = host.model_names()
    files = [n for n in listed if not is_builtin(n)]
    known = set(files)
    onnx = [
        n for n in model_names_in(folder_paths.get_folder_paths(host.MODEL_FOLDER), ONNX_EXTENSIONS) if n not in known
    ]
    return sorted(files + onnx) + [n for n in listed if is_builtin(n)]


class TilewiseModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = model_names()
        default = next((n for n in names if is_builtin(n)), None)
        return io.Schema(
            node_id="TilewiseModelLoader",
            display_name="Load Upscale Model (Tilewise)",
            category="loaders",
            description=(
                "Loads any upscale or restoration model from your upscale_models folder, whatever its "
                "architecture (everything spandrel knows, plus ParagonSR2, EDSR, RDN and more), .onnx files too, "
                "or a built-in model that needs no download. Files are checked before loading: nothing in a "
                "model file can run code. Also works with the core Upscale Image (using Model) node."
            ),
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=names,
                    default=default,
                    tooltip="A file in models/upscale_models (subfolders included) or a built-in model.",
                ),
                io.Int.Input(
                    "scale_hint",
                    default=NO_SCALE_HINT,
                    min=0,
                    max=16,
                    step=1,
                    optional=True,
                    tooltip="Scale for formats that do not store it (SRCNN, FSRCNN); 0 = from the file or its name "
                    "(x2, 4x).",
                ),
                io.Float.Input(
                    "upsampler_alpha",
                    default=NO_ALPHA_HINT,
                    min=-1.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="ParagonSR2 / MagicKernelSharp base-path sharpening; -1 = the model's default.",
                ),
            ],
            outputs=[io.UpscaleModel.Output()],
        )

    @classmethod
    def execute(
        cls, model_name: str, scale_hint: int = NO_SCALE_HINT, upsampler_alpha: float = NO_ALPHA_HINT
    ) -> io.NodeOutput:
        hints = LoadHints(
            scale=scale_hint if scale_hint and scale_hint > 0 else None,
            upsampler_alpha=None if upsampler_alpha is None or upsampler_alpha < 0 else float(upsampler_alpha),
        )
        source = model_name if is_builtin(model_name) else host.model_path(model_name)
        descriptor = load_model(source, hints=hints)
        host.attach_patcher(descriptor)
        return io.NodeOutput(descriptor)

    @classmethod
    def fingerprint_inputs(
        cls, model_name: str, scale_hint: int = NO_SCALE_HINT, upsampler_alpha: float = NO_ALPHA_HINT
    ):
        return (host.model_file_stamp(model_name), scale_hint, upsampler_alpha)


NODES = [TilewiseModelLoader]
