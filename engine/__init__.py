"""Host-agnostic inference: loading, detection, tiling, precision, channels, resizing.

Hosts (ComfyUI nodes, the A1111 script, the CLI) call only what this module exports.
"""

from typing import TYPE_CHECKING

from ..archs import LoadHints
from ..archs.base import scale_from_file_name
from .compute.devices import DeviceError, DevicePolicy
from .compute.precision import PRECISIONS, release_variants, resolve_device, resolve_dtype
from .errors import (
    CancelledError,
    HintRequiredError,
    ImageError,
    ModelFileError,
    ModelRunError,
    TilewiseError,
    UnknownArchitectureError,
    UnsafeModelError,
)
from .image.images import (
    IMAGE_EXTENSIONS,
    WRITE_EXTENSIONS,
    check_decodable,
    check_readable,
    pil_to_tensor,
    read_image,
    tensor_to_pil,
    write_image,
)
from .image.memory import estimate_device_bytes
from .image.pipeline import (
    ALPHA_MODES,
    SCALE_MODES,
    AlphaMode,
    ScaleTarget,
    UpscaleOptions,
    check_fits,
    passes_needed,
    upscale,
)
from .image.resize import FILTERS, resize
from .model.catalog import CatalogEntry, find_model_files, model_names_in, model_summary, scan_folder
from .model.files import MODEL_EXTENSIONS, ONNX_EXTENSIONS, canonicalize, read_state_dict
from .model.loading import MODEL_CACHE, builtin_names, describe_state_dict, is_builtin, load_model, registry
from .plan.planner import MIN_USER_TILE, TileSettings, TileSettingsError, plan_run, tile_settings
from .run.runner import run_tiled
from .video.temporal import (
    FIRST_FRAME_CONVENTIONS,
    SCENE_CUT_THRESHOLD,
    TEMPORAL_MODES,
    TemporalMode,
    VideoOptions,
    VideoUpscaler,
)

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers only
    from . import doctor
    from .model.export import MIN_OPSET, export_onnx
    from .video.files import VideoIOError, upscale_video_file

__all__ = [
    "ALPHA_MODES",
    "AlphaMode",
    "CancelledError",
    "DeviceError",
    "DevicePolicy",
    "CatalogEntry",
    "find_model_files",
    "model_names_in",
    "model_summary",
    "scan_folder",
    "FILTERS",
    "HintRequiredError",
    "ImageError",
    "LoadHints",
    "MODEL_CACHE",
    "MODEL_EXTENSIONS",
    "ONNX_EXTENSIONS",
    "ModelFileError",
    "ModelRunError",
    "PRECISIONS",
    "SCALE_MODES",
    "ScaleTarget",
    "TileSettings",
    "TileSettingsError",
    "TilewiseError",
    "MIN_USER_TILE",
    "tile_settings",
    "UnknownArchitectureError",
    "UnsafeModelError",
    "UpscaleOptions",
    "builtin_names",
    "canonicalize",
    "describe_state_dict",
    "is_builtin",
    "load_model",
    "passes_needed",
    "plan_run",
    "read_state_dict",
    "registry",
    "resize",
    "resolve_device",
    "resolve_dtype",
    "run_tiled",
    "upscale",
    "check_fits",
    "estimate_device_bytes",
    "release_variants",
    "scale_from_file_name",
    "IMAGE_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "check_decodable",
    "check_readable",
    "pil_to_tensor",
    "read_image",
    "tensor_to_pil",
    "write_image",
    "FIRST_FRAME_CONVENTIONS",
    "SCENE_CUT_THRESHOLD",
    "TEMPORAL_MODES",
    "TemporalMode",
    "VideoOptions",
    "VideoUpscaler",
    # imported when first used (ONNX export needs the onnx extra; video files need PyAV; the doctor runs a self-check)
    "MIN_OPSET",
    "export_onnx",
    "VideoIOError",
    "upscale_video_file",
    "doctor",
]

#: Public names whose modules are imported when first used, so that importing the engine stays light.
_LAZY = {
    "MIN_OPSET": "model.export",
    "export_onnx": "model.export",
    "VideoIOError": "video.files",
    "upscale_video_file": "video.files",
    "doctor": None,
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    if _LAZY[name] is None:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
