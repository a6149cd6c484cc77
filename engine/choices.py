"""The choices hosts offer (command-line options, node widgets) and the file kinds they accept.

Nothing here imports torch, so `python -m tilewise --help` answers at once: the CLI builds its
parser from these names, and the engine's modules take them from here too.
"""

from __future__ import annotations

from typing import Literal

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")
AlphaMode = Literal["resize", "model", "discard"]
ALPHA_MODES: tuple[str, ...] = ("resize", "model", "discard")
SCALE_MODES: tuple[str, ...] = ("native", "factor", "size", "fit", "longest", "megapixels")
#: Resampling filters for a final resize (Pillow's, by these names).
FILTERS: tuple[str, ...] = ("lanczos", "bicubic", "bilinear", "hamming", "area", "nearest")
TemporalMode = Literal["off", "auto", "feedback", "stabilize"]
TEMPORAL_MODES: tuple[str, ...] = ("off", "auto", "feedback", "stabilize")
FIRST_FRAME_CONVENTIONS: tuple[str, ...] = ("none", "zeros")
#: Mean absolute gray difference (0..1) between consecutive frame thumbnails that counts as a cut.
SCENE_CUT_THRESHOLD = 30 / 255

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".npy")
WRITE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".gif", ".npy")
#: Output formats that hold several frames (PNG as APNG).
FRAME_EXTENSIONS = (".png", ".gif", ".webp", ".tif", ".tiff")
