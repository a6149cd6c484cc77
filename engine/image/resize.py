"""Resampling tensors with Pillow's filters, in float precision.

Pillow's resampling (antialiased: the kernel widens when downscaling) is the quality reference
users know. It runs on single-channel 32-bit float images (mode "F"), so no precision is lost
on the way; each plane of the (B, C, H, W) tensor is resized on the CPU.
"""

from __future__ import annotations

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


def resize(image: torch.Tensor, height: int, width: int, method: str = "lanczos") -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, height, width) float on the same device, clamped to [0, 1]."""
    if method not in FILTERS:
        raise ValueError(f"resampling filter must be one of {', '.join(FILTERS)}, got '{method}'")
    if tuple(image.shape[-2:]) == (height, width):
        return image
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    resample = FILTERS[method]
    planes = image.detach().to(device="cpu", dtype=torch.float32).numpy()
    out = np.empty(planes.shape[:2] + (height, width), dtype=np.float32)
    for b in range(planes.shape[0]):
        for c in range(planes.shape[1]):
            plane = Image.fromarray(np.ascontiguousarray(planes[b, c]), mode="F")
            out[b, c] = np.asarray(plane.resize((width, height), resample=resample), dtype=np.float32)
    return torch.from_numpy(out).clamp_(0, 1).to(device=image.device, dtype=image.dtype)
