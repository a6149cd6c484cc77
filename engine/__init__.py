"""Host-agnostic inference: loading, detection, tiling, precision, channels, resizing.

Hosts (ComfyUI nodes, the A1111 script, the CLI) call only what this module exports.
"""

from ..archs import LoadHints
from .devices import DeviceError, DevicePolicy
from .catalog import CatalogEntry, find_model_files, model_names_in, scan_folder
from .errors import CancelledError, HintRequiredError, ImageError, ModelFileError, ModelRunError, TilewiseError, UnknownArchitectureError, UnsafeModelError
from .files import MODEL_EXTENSIONS, ONNX_EXTENSIONS, canonicalize, read_state_dict
from .loading import MODEL_CACHE, builtin_names, describe_state_dict, is_builtin, load_model, registry
from .pipeline import ALPHA_MODES, SCALE_MODES, ScaleTarget, UpscaleOptions, passes_needed, upscale
from .precision import PRECISIONS, resolve_device, resolve_dtype
from .resize import FILTERS, resize
from .runner import MIN_USER_TILE, TileSettings, TileSettingsError, plan_run, run_tiled, tile_settings
from .video import FIRST_FRAME_CONVENTIONS, SCENE_CUT_THRESHOLD, TEMPORAL_MODES, VideoOptions, VideoUpscaler

__all__ = [
    "ALPHA_MODES", "CancelledError", "DeviceError", "DevicePolicy", "CatalogEntry", "find_model_files", "model_names_in", "scan_folder", "FILTERS", "HintRequiredError", "ImageError", "LoadHints", "MODEL_CACHE",
    "MODEL_EXTENSIONS", "ONNX_EXTENSIONS", "ModelFileError", "ModelRunError", "PRECISIONS", "SCALE_MODES", "ScaleTarget", "TileSettings", "TileSettingsError", "TilewiseError", "MIN_USER_TILE", "tile_settings",
    "UnknownArchitectureError", "UnsafeModelError", "UpscaleOptions", "builtin_names", "canonicalize",
    "describe_state_dict", "is_builtin", "load_model", "passes_needed", "plan_run", "read_state_dict", "registry",
    "resize", "resolve_device", "resolve_dtype", "run_tiled", "upscale",
    "FIRST_FRAME_CONVENTIONS", "SCENE_CUT_THRESHOLD", "TEMPORAL_MODES", "VideoOptions", "VideoUpscaler",
]
