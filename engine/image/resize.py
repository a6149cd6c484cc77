"""Resampling tensors with Pillow's filters, in float precision.

Pillow's resampling (antialiased: the kernel widens when downscaling) is the quality reference
users know. It runs on single-channel 32-bit float images (mode "F"), so no precision is lost
on the way; each plane of the (B, C, H, W) tensor is resized on the CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


#: How far each filter reaches, in source pixels when enlarging (times the reduction when
#: shrinking): Pillow's supports, for wrapping a tileable image's edges (`resize(wrap=True)`).
SUPPORT = {"lanczos": 3.0, "bicubic": 2.0, "bilinear": 1.0, "hamming": 1.0, "area": 0.5, "nearest": 0.5}


def resize(image: torch.Tensor, height: int, width: int, method: str = "lanczos", wrap: bool = False) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, height, width) float on the same device, clamped to [0, 1].

    `wrap`: the image repeats (a tileable texture), so the filter reads across each edge from
    the opposite one and the result repeats without a seam too: the planes are padded by
    wrapping as far as the filter reaches, and Pillow resizes the original extent (its `box`)
    reading into that padding."""
    if method not in FILTERS:
        raise ValueError(f"resampling filter must be one of {', '.join(FILTERS)}, got '{method}'")
    if tuple(image.shape[-2:]) == (height, width):
        return image
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    resample = FILTERS[method]
    planes = image.detach().to(device="cpu", dtype=torch.float32).numpy()
    source_height, source_width = planes.shape[-2:]
    box = None
    if wrap:
        reach = SUPPORT[method] * max(1.0, source_height / height, source_width / width)
        margin = math.ceil(reach) + 1
        planes = np.pad(planes, ((0, 0), (0, 0), (margin, margin), (margin, margin)), mode="wrap")
        box = (margin, margin, margin + source_width, margin + source_height)
    out = np.empty(planes.shape[:2] + (height, width), dtype=np.float32)
    for b in range(planes.shape[0]):
        for c in range(planes.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(planes[b, c]), mode="F")
            out[b, c] = np.asarray(plane.resize((width, height), resample=resample, box=box), dtype=np.float32)
    return torch.from_numpy(out).clamp_(0, 1).to(device=image.device, dtype=image.dtype)
