"""Measuring a model's tile margin when the host runs everything under `torch.inference_mode()`.

ComfyUI executes every node inside `torch.inference_mode()`, so the weights of the models it
loads (its core loader's, and ours when loaded by a node) are inference tensors. The exact
receptive-radius probe (`receptive.exact_radius`) takes input gradients through the weights,
which autograd refuses for inference tensors ("Inference tensors cannot be saved for backward").
`receptive.model_context` handles that itself (it probes a gradient-capable copy);
`measure_context` lets a host take that measurement before a run (outside its timing and
progress), leaving the result in the probe's per-model cache.
"""

from __future__ import annotations

import torch
from spandrel import ImageModelDescriptor, ModelTiling

from .precision import forward_fn, model_on
from .receptive import Context, model_context
from .runner import TileSettings, _alignment


def measure_context(descriptor: ImageModelDescriptor, settings: TileSettings, device: torch.device) -> Context | None:
    """Measures (and caches) the tile margin `upscale` will use, so that it also works for a model
    whose weights are inference tensors. Returns None when no margin is needed or it is given."""
    if settings.pad is not None or descriptor.tiling == ModelTiling.INTERNAL:
        return None
    forward = forward_fn(descriptor, model_on(descriptor, device, torch.float32))
    return model_context(descriptor, forward, device, _alignment(descriptor))

