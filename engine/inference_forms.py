"""Inference forms of spandrel modules: the same numbers, bit for bit, with less work.

Some architectures do work in every eval forward that only their training needs. SPAN's
`Conv3XC` re-derives its fused 3x3 kernel from the three training branches on every call, and
its `SPAB` block allocates two more full-size feature maps than the arithmetic needs. On a CPU
each fresh feature map costs a page fault per 4 KiB the first time it is written, so a
whole-image run of SPAN spent more time in the kernel than in half of its convolutions.

`prepare(model)` swaps the class of each such submodule, in place, for a subclass whose eval
forward computes exactly what the original computes (same operations in the same order, on
the same dtypes; the tests compare bitwise against spandrel) and whose training forward is the
original one. State dicts, parameters and `isinstance` checks are unchanged. It is idempotent
and is applied wherever the engine takes a model to run (`precision.model_on`).
"""

from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F

_prepared: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()
_lock = threading.Lock()


def _span_forms() -> dict[type, type]:
    try:
        from spandrel.architectures.SPAN.__arch.span import SPAB, Conv3XC
    except ImportError:  # a spandrel without SPAN, or with a different layout: nothing to swap
        return {}

    class FusedConv3XC(Conv3XC):
        """Derives the fused kernel once, and again only when a source weight changes
        (new tensor, new dtype or device, or an in-place write), instead of on every call."""

        def _sources(self) -> tuple:
            tensors = (self.conv[0].weight, self.conv[0].bias, self.conv[1].weight, self.conv[1].bias,
                       self.conv[2].weight, self.conv[2].bias, self.sk.weight, self.sk.bias)
            return tuple((t.data_ptr(), _version(t), t.dtype, t.device) for t in tensors)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training or torch.compiler.is_compiling():  # the compiler traces the original
                return super().forward(x)
            sources = self._sources()
            if getattr(self, "_fused_from", None) != sources:
                self.update_params()
                self._fused_from = sources
            out = self.eval_conv(x)
            if self.has_relu:
                out = F.leaky_relu(out, negative_slope=0.05)
            return out

    class InPlaceSPAB(SPAB):
        """The attention gate written in place: `out3` and the sigmoid's result are dead after
        their last use, so they hold the sums instead of two new feature maps."""

        def forward(self, x: torch.Tensor):
            # autograd needs the sigmoid's output intact; the compiler fuses the gate by itself
            if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
                return super().forward(x)
            out1 = self.c1_r(x)
            out1_act = self.act1(out1)
            out2 = self.c2_r(out1_act)
            out2_act = self.act1(out2)
            out3 = self.c3_r(out2_act)
            sim_att = torch.sigmoid(out3).sub_(0.5)
            out = out3.add_(x).mul_(sim_att)
            return out, out1, sim_att

    return {Conv3XC: FusedConv3XC, SPAB: InPlaceSPAB}


def _version(tensor: torch.Tensor) -> int:
    """In-place write counter; inference tensors (a model loaded inside ComfyUI's inference
    mode) have none, and their identity, dtype and device are the whole key."""
    try:
        return tensor._version
    except RuntimeError:
        return -1


_FORMS: dict[type, type] | None = None


def forms() -> dict[type, type]:
    """Original class -> inference form, for every architecture this spandrel has."""
    global _FORMS
    if _FORMS is None:
        _FORMS = _span_forms()
    return _FORMS


def prepare(model: torch.nn.Module) -> int:
    """Swaps every submodule with an inference form to that form; returns how many were swapped."""
    with _lock:
        if model in _prepared:
            return 0
        table = forms()
        swapped = 0
        for module in model.modules():
            form = table.get(type(module))
            if form is not None:
                module.__class__ = form
                swapped += 1
        _prepared.add(model)
        return swapped
