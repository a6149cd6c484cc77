"""Inference forms of spandrel modules: the same numbers, bit for bit, with less work.

Some architectures do work in every eval forward that only their training needs. SPAN's
`Conv3XC` re-derives its fused 3x3 kernel from the three training branches on every call, and
its `SPAB` block allocates two more full-size feature maps than the arithmetic needs. On a CPU
each fresh feature map costs a page fault per 4 KiB the first time it is written, so a
whole-image run of SPAN spent more time in the kernel than in half of its convolutions.

`prepare(model)` swaps the class of each such submodule, in place, for a subclass whose eval
forward computes exactly what the original computes (same operations in the same order, on
the same dtypes; the tests compare bitwise against spandrel) and whose training forward is the
original one. State dicts, parameters and `isinstance` checks are unchanged. It is idempotent.
It is only ever applied to Tilewise's *private copy* of a model (`precision.model_on` copies
any model for which `applies` is true): the module a host loaded is shared with its core
nodes and other packs, which must keep running spandrel's own classes.

One deliberate difference: spandrel's SwinIR builds its shifted-window mask in fp32 whatever the
model's dtype and so fails when cast to bf16 or fp16 (except at its stored size); its form builds
the mask in the model's dtype, and equals the original wherever the original runs.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import cast

import torch
import torch.nn.functional as F

from ...archs.windows import from_windows, gathers_allowed, to_windows, window_order

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
            tensors = cast(
                tuple[torch.Tensor, ...],
                (
                    self.conv[0].weight,
                    self.conv[0].bias,
                    self.conv[1].weight,
                    self.conv[1].bias,
                    self.conv[2].weight,
                    self.conv[2].bias,
                    self.sk.weight,
                    self.sk.bias,
                ),
            )
            return tuple((t.data_ptr(), _version(t), t.dtype, t.device) for t in tensors)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # autograd (the receptive-radius probe) must not meet a kernel derived under
            # inference mode; the compiler traces the original
            if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
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


#: Windows attended per step in the SwinIR form: its attention matrices then stay a few MiB
#: (64-token windows, 6 heads: 1.5 MiB per 16 windows) instead of a GiB for a whole image.
SWIN_WINDOWS_PER_STEP = 128


def _swinir_forms() -> dict[type, type]:
    try:
        from spandrel.architectures.SwinIR.__arch.SwinIR import SwinTransformerBlock
    except ImportError:
        return {}

    class WindowedSwinBlock(SwinTransformerBlock):
        """Same numbers, less memory traffic: shift and partition by gathers (`archs.windows`),
        the shifted-window mask rebuilt per step from cached region labels instead of a full
        (windows, N, N) tensor per block and forward, attention in steps of
        `SWIN_WINDOWS_PER_STEP` windows with the bias and mask added in place, and the
        residual sums and GELU written into their fresh temporaries."""

        def forward(self, x: torch.Tensor, x_size):
            if self.training or not gathers_allowed():
                return super().forward(x, x_size)
            h, w = x_size
            b, _, c = x.shape
            ws, shift = self.window_size, self.shift_size
            n = ws * ws
            order = window_order(h, w, ws, shift, x.device)
            windows = to_windows(self.norm1(x), order, n)
            stored = shift > 0 and self.input_resolution == tuple(x_size)  # the original uses its buffer
            mask: torch.Tensor | None = None
            uniform = None
            if stored:
                mask = cast(torch.Tensor, self.attn_mask)
            elif shift > 0:
                mask, uniform = _swin_region_labels(h, w, ws, shift, x.device)
            # The original builds this mask in fp32 whatever the model's dtype, so a bf16 or fp16
            # model fails at any size but the stored one (whose buffer was cast with the model).
            # Built in the model's dtype instead (its -100 and 0 are exact there), casting to
            # that dtype works as the stored size does; under autocast it stays fp32 as the
            # original's, whose promotion autocast relies on.
            mask_dtype = None if _autocasting(x.device) else self.attn.relative_position_bias_table.dtype
            attended = _swin_attention(self.attn, windows, mask, stored, mask_dtype, uniform)
            out = _sum(from_windows(attended, order, b), x)
            hidden = self.mlp.fc1(self.norm2(out))
            act = self.mlp.act
            hidden = (
                torch.ops.aten.gelu_(hidden)
                if type(act) is torch.nn.GELU and act.approximate == "none"
                else act(hidden)
            )
            return _sum(self.mlp.fc2(hidden), out)

    return {SwinTransformerBlock: WindowedSwinBlock}


@functools.lru_cache(maxsize=8)
def _swin_region_labels(
    h: int, w: int, ws: int, shift: int, device: torch.device
) -> tuple[torch.Tensor, tuple[bool, ...]]:
    """SwinIR's `calculate_mask` regions per window slot, (windows, ws*ws) float: in the rolled
    frame, rows [0, H-ws), [H-ws, H-shift), [H-shift, H) times the same for columns; and per
    window whether all its slots share one region (its mask is then all zeros)."""

    def bands(size: int) -> torch.Tensor:
        index = torch.arange(size)
        return (index >= size - ws).long() + (index >= size - shift).long()

    rows, cols = bands(h).view(h // ws, 1, ws, 1), bands(w).view(1, w // ws, 1, ws)
    labels = (rows * 3 + cols).float().reshape(-1, ws * ws)
    return labels.to(device), tuple((labels == labels[:, :1]).all(dim=1).tolist())


def _sum(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`fresh + other`, written into `fresh` when that gives the same tensor (same dtype after
    promotion, e.g. not a bf16 result under autocast plus an fp32 residual; no broadcasting
    into it); `fresh` must be a temporary nobody else holds."""
    if (
        torch.result_type(fresh, other) == fresh.dtype
        and torch.broadcast_shapes(fresh.shape, other.shape) == fresh.shape
    ):
        return fresh.add_(other)
    return fresh + other


def _autocasting(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() if device.type == "cpu" else torch.is_autocast_enabled()


def _swin_attention(
    attn, windows: torch.Tensor, labels: torch.Tensor | None, stored_mask: bool,
    mask_dtype: torch.dtype | None, uniform: tuple[bool, ...] | None,
) -> torch.Tensor:  # fmt: skip
    """spandrel's SwinIR `WindowAttention.forward`, step by step over windows, same operations.

    `labels` is the block's stored (windows, N, N) mask when `stored_mask`, else per-slot
    region labels from which each step's mask rows are built as `calculate_mask` builds them;
    `uniform` flags the windows whose mask is all zeros (None: build every step's mask)."""
    total, n, c = windows.shape
    heads = attn.num_heads
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(n, n, -1)
    bias = bias.permute(2, 0, 1).contiguous().unsqueeze(0)
    per_image = labels.shape[0] if labels is not None else 1
    # Windows inside one region get an all-zero mask; adding zeros changes no softmax (at most
    # a -0.0 score turns +0.0), so steps without a window on the wrapped border skip the mask
    # unless the sum would promote the scores' dtype (autocast), which the original relies on.
    if mask_dtype is None:
        uniform = None
    out = None
    for start in range(0, total, SWIN_WINDOWS_PER_STEP):
        stop = min(start + SWIN_WINDOWS_PER_STEP, total)
        chunk = windows[start:stop]
        qkv = attn.qkv(chunk).reshape(stop - start, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = _sum((q * attn.scale) @ k.transpose(-2, -1), bias)
        needs_mask = labels is not None and (
            uniform is None or scores.dtype != mask_dtype or not all(uniform[i % per_image] for i in range(start, stop))
        )
        if needs_mask:
            assert labels is not None
            index = torch.arange(start, stop, device=windows.device) % per_image
            if stored_mask:
                mask = labels.index_select(0, index)
            else:
                regions = labels.index_select(0, index)
                mask = regions.unsqueeze(1) - regions.unsqueeze(2)
                mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
                if mask_dtype is not None:
                    mask = mask.to(mask_dtype)
            scores = _sum(scores, mask.unsqueeze(1))
        scores = scores.softmax(dim=-1)
        step = attn.proj((scores @ v).transpose(1, 2).reshape(stop - start, n, c))
        if out is None:
            out = windows.new_empty(windows.shape, dtype=step.dtype)
        out[start:stop] = step
    assert out is not None, "no windows"
    return out


def _version(tensor: torch.Tensor) -> int:
    """In-place write counter; inference tensors (a model loaded inside ComfyUI's inference
    mode) have none, and their identity, dtype and device are the whole key. Asked first rather
    than caught: the error costs about 30 µs, 5 ms per SPAN forward (160 weights)."""
    if tensor.is_inference():
        return -1
    try:
        return tensor._version
    except RuntimeError:
        return -1


_FORMS: dict[type, type] | None = None


def forms() -> dict[type, type]:
    """Original class -> inference form, for every architecture this spandrel has."""
    global _FORMS
    if _FORMS is None:
        _FORMS = {**_span_forms(), **_swinir_forms()}
    return _FORMS


def applies(model: torch.nn.Module) -> bool:
    """Whether `model` has a submodule with an inference form (so it is run from a private copy)."""
    table = forms()
    return any(type(module) in table for module in model.modules())


def prepare(model: torch.nn.Module) -> int:
    """Swaps every submodule with an inference form to that form, in place; returns how many
    were swapped. Only for a module Tilewise owns (a private copy; see the module docstring)."""
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
