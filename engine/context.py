"""Measuring a model's tile margin when the host runs everything under `torch.inference_mode()`.

ComfyUI executes every node inside `torch.inference_mode()`, so the weights of the models it
loads (its core loader's, and ours when loaded by a node) are inference tensors. The exact
receptive-radius probe (`receptive.exact_radius`) takes input gradients through the weights,
which autograd refuses for inference tensors ("Inference tensors cannot be saved for backward").
`measure_context` runs the probe once through a gradient-capable copy of the model and leaves
the result in the probe's per-model cache, so the run that follows never probes again.
"""

from __future__ import annotations

import copy

import torch
from spandrel import ImageModelDescriptor, ModelTiling

from .precision import forward_fn, model_on
from .receptive import Context, model_context
from .runner import TileSettings, _alignment


def has_inference_weights(module: torch.nn.Module) -> bool:
    """Whether any weight of `module` was created inside `torch.inference_mode()`."""
    return any(t.is_inference() for t in module.parameters()) or any(t.is_inference() for t in module.buffers())


class _CopyForward:
    """The model's forward on a normal-tensor fp32 copy, made at the first call only."""

    def __init__(self, descriptor: ImageModelDescriptor, device: torch.device):
        self.descriptor, self.device, self.forward = descriptor, device, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.forward is None:
            with torch.inference_mode(False):  # a clone made outside inference mode is a normal tensor
                module = copy.deepcopy(self.descriptor.model).to(device=self.device, dtype=torch.float32).eval()
            self.forward = forward_fn(self.descriptor, module)
        return self.forward(x)


def measure_context(descriptor: ImageModelDescriptor, settings: TileSettings, device: torch.device) -> Context | None:
    """Measures (and caches) the tile margin `upscale` will use, so that it also works for a model
    whose weights are inference tensors. Returns None when no margin is needed or it is given."""
    if settings.pad is not None or descriptor.tiling == ModelTiling.INTERNAL:
        return None
    if has_inference_weights(descriptor.model):
        forward = _CopyForward(descriptor, device)
    else:
        forward = forward_fn(descriptor, model_on(descriptor, device, torch.float32))
    return model_context(descriptor, forward, device, _alignment(descriptor))

