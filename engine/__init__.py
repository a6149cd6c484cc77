"""Host-agnostic inference: loading, detection, tiling, precision, channels, resizing.

Hosts (ComfyUI nodes, the A1111 script, the CLI) call only what this module exports. Every name
is imported when first used (PEP 562), so importing the engine, or taking only its choices
(`engine/choices.py`: what an option may be), costs nothing: `python -m tilewise --help` never
imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what each name resolves to, for type checkers
    from ..archs import LoadHints
    from ..archs.base import scale_from_file_name
    from . import doctor
    from .choices import (
        ALPHA_MODES,
        FILTERS,
        FIRST_FRAME_CONVENTIONS,
        FRAME_EXTENSIONS,
        IMAGE_EXTENSIONS,
        PRECISIONS,
        SCALE_MODES,
        SCENE_CUT_THRESHOLD,
        TEMPORAL_MODES,
        WRITE_EXTENSIONS,
        AlphaMode,
        TemporalMode,
    )
    from .compute.devices import DeviceError, DevicePolicy
    from .compute.precision import release_variants, resolve_device, resolve_dtype
    from .errors import (
        CancelledError,
        HintRequiredError,
        ImageError,
        ModelFileError,
        ModelRunError,
        TilewiseError,
        UnknownArchitectureError,
        UnsafeModelError,
        named_message,
    )
    from .image.images import (
        ImageMetadata,
        check_decodable,
        check_readable,
        pil_to_tensor,
        read_frames,
        read_header,
        read_image,
        tensor_to_pil,
        write_frames,
        write_image,
    )
    from .image.jobs import upscale_file
    from .image.memory import estimate_device_bytes
    from .image.pipeline import ScaleTarget, UpscaleOptions, check_fits, passes_needed, upscale
    from .image.resize import resize
    from .model.catalog import CatalogEntry, find_model_files, model_names_in, model_summary, scan_folder
    from .model.export import MIN_OPSET, export_onnx
    from .model.files import MODEL_EXTENSIONS, ONNX_EXTENSIONS, canonicalize, read_state_dict
    from .model.loading import MODEL_CACHE, builtin_names, describe_state_dict, is_builtin, load_model, registry
    from .plan.planner import MIN_USER_TILE, TileSettings, TileSettingsError, plan_run, tile_settings
    from .run.runner import run_tiled
    from .video.files import VideoIOError, upscale_video_file
    from .video.temporal import VideoOptions, VideoUpscaler

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
    "named_message",
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
    "MIN_OPSET",
    "export_onnx",
    "VideoIOError",
    "upscale_video_file",
    "doctor",
    "FRAME_EXTENSIONS",
    "ImageMetadata",
    "read_frames",
    "write_frames",
    "read_header",
    "upscale_file",
]

#: Public name -> the module (relative to this package) that defines it.
_LAZY = {
    "ALPHA_MODES": ".choices",
    "AlphaMode": ".choices",
    "CancelledError": ".errors",
    "DeviceError": ".compute.devices",
    "DevicePolicy": ".compute.devices",
    "CatalogEntry": ".model.catalog",
    "find_model_files": ".model.catalog",
    "model_names_in": ".model.catalog",
    "model_summary": ".model.catalog",
    "scan_folder": ".model.catalog",
    "FILTERS": ".choices",
    "HintRequiredError": ".errors",
    "ImageError": ".errors",
    "LoadHints": "..archs",
    "MODEL_CACHE": ".model.loading",
    "MODEL_EXTENSIONS": ".model.files",
    "ONNX_EXTENSIONS": ".model.files",
    "ModelFileError": ".errors",
    "ModelRunError": ".errors",
    "PRECISIONS": ".choices",
    "SCALE_MODES": ".choices",
    "ScaleTarget": ".image.pipeline",
    "TileSettings": ".plan.planner",
    "TileSettingsError": ".plan.planner",
    "TilewiseError": ".errors",
    "named_message": ".errors",
    "MIN_USER_TILE": ".plan.planner",
    "tile_settings": ".plan.planner",
    "UnknownArchitectureError": ".errors",
    "UnsafeModelError": ".errors",
    "UpscaleOptions": ".image.pipeline",
    "builtin_names": ".model.loading",
    "canonicalize": ".model.files",
    "describe_state_dict": ".model.loading",
    "is_builtin": ".model.loading",
    "load_model": ".model.loading",
    "passes_needed": ".image.pipeline",
    "plan_run": ".plan.planner",
    "read_state_dict": ".model.files",
    "registry": ".model.loading",
    "resize": ".image.resize",
    "resolve_device": ".compute.precision",
    "resolve_dtype": ".compute.precision",
    "run_tiled": ".run.runner",
    "upscale": ".image.pipeline",
    "check_fits": ".image.pipeline",
    "estimate_device_bytes": ".image.memory",
    "release_variants": ".compute.precision",
    "scale_from_file_name": "..archs.base",
    "IMAGE_EXTENSIONS": ".choices",
    "WRITE_EXTENSIONS": ".choices",
    "check_decodable": ".image.images",
    "check_readable": ".image.images",
    "pil_to_tensor": ".image.images",
    "read_image": ".image.images",
    "tensor_to_pil": ".image.images",
    "write_image": ".image.images",
    "FIRST_FRAME_CONVENTIONS": ".choices",
    "SCENE_CUT_THRESHOLD": ".choices",
    "TEMPORAL_MODES": ".choices",
    "TemporalMode": ".choices",
    "VideoOptions": ".video.temporal",
    "VideoUpscaler": ".video.temporal",
    "MIN_OPSET": ".model.export",
    "export_onnx": ".model.export",
    "VideoIOError": ".video.files",
    "upscale_video_file": ".video.files",
    "FRAME_EXTENSIONS": ".choices",
    "ImageMetadata": ".image.images",
    "read_frames": ".image.images",
    "write_frames": ".image.images",
    "read_header": ".image.images",
    "upscale_file": ".image.jobs",
}


def __getattr__(name: str):
    if name == "doctor":
        return importlib.import_module(f"{__name__}.doctor")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
