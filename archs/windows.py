"""Shifted-window partition by gathers, for window-attention blocks without autograd.

Swin-style blocks zero-pad (when needed), roll the feature map by `-shift`, cut it into
`ws x ws` windows, attend, then undo all three. Written with `pad`, `roll` and reshapes that is
about ten copies of the feature map per block; as one `index_select` each way it is two, and
the numbers are the same (pure data movement). Used by ParagonSR2's attention and by the
inference form of spandrel's SwinIR block (`engine/compute/inference_forms.py`).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

_plain = threading.local()


@contextlib.contextmanager
def plain_forms() -> Iterator[None]:
    """Inside the block, in this thread, our modules run their plain, upstream-shaped forms even
    without autograd (no gathers, no in-place residuals): what the model's own
    reference code computes. The speed benchmark's naive baseline runs in it, so that only the
    upstream implementation's speed is compared with ours, as for spandrel's models."""
    before = getattr(_plain, "on", False)
    _plain.on = True
    try:
        yield
    finally:
        _plain.on = before


def in_place_allowed() -> bool:
    """True without autograd, outside `plain_forms`: results may be written into temporaries."""
    return not (torch.is_grad_enabled() or getattr(_plain, "on", False))


def gathers_allowed() -> bool:
    """True in a plain eager forward without autograd (outside `plain_forms`), where the
    gathered forms may run. Training, tracing (ONNX export: the gather indices would be frozen
    to one size) and torch.compile see the plain, upstream-shaped forms."""
    return in_place_allowed() and not (torch.jit.is_tracing() or torch.compiler.is_compiling())  # pyright: ignore[reportPrivateImportUsage]


@dataclass(frozen=True)
class WindowOrder:
    source: torch.Tensor  # (windows * ws * ws,): image token behind each window slot (any, for padding)
    padding: torch.Tensor | None  # window slots that hold zero padding
    back: torch.Tensor  # (H * W,): window slot of each image token


@functools.lru_cache(maxsize=8)
def window_order(h: int, w: int, ws: int, shift: int, device: torch.device) -> WindowOrder:
    """Gather indices for zero-pad to a multiple of `ws`, roll by `-shift`, split into windows.

    Window slot (row r, column c, y i, x j), in that order, holds padded pixel
    ((r*ws + i + shift) mod Hp, (c*ws + j + shift) mod Wp), as `torch.roll`'s definition; image
    pixel (y, x) returns from the slot of ((y - shift) mod Hp, (x - shift) mod Wp).
    """
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    ys = ((torch.arange(hp) + shift) % hp).view(hp // ws, 1, ws, 1)
    xs = ((torch.arange(wp) + shift) % wp).view(1, wp // ws, 1, ws)
    pad = ((ys >= h) | (xs >= w)).flatten()
    source = (ys.clamp(max=h - 1) * w + xs.clamp(max=w - 1)).flatten()
    wy, wx = (torch.arange(h) - shift) % hp, (torch.arange(w) - shift) % wp
    slot_y = (wy // ws * (wp // ws) * ws * ws + wy % ws * ws).view(h, 1)
    slot_x = (wx // ws * ws * ws + wx % ws).view(1, w)
    padding = pad.nonzero().flatten() if pad.any() else None
    to = functools.partial(torch.Tensor.to, device=device)
    return WindowOrder(to(source), None if padding is None else to(padding), to((slot_y + slot_x).flatten()))


def _batched(index: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """`index` into each of `batch` consecutive runs of `length` rows."""
    if batch == 1:
        return index
    return (torch.arange(batch, device=index.device).view(-1, 1) * length + index).flatten()


def to_windows(tokens: torch.Tensor, order: WindowOrder, n: int) -> torch.Tensor:
    """(B, H*W, C) image tokens -> (B * windows, n, C) window tokens, padding slots zeroed.

    Rows are gathered from the (B*H*W, C) matrix: `index_select` over the first dimension of a
    matrix is much faster than over the middle one of the 3-d tensor, for the same values
    (benchmarks/README.md, "Attention windows")."""
    b, hw, c = tokens.shape
    windows = tokens.reshape(b * hw, c).index_select(0, _batched(order.source, b, hw))
    if order.padding is not None:
        windows.index_fill_(0, _batched(order.padding, b, order.source.numel()), 0)
    return windows.view(-1, n, c)


def from_windows(windows: torch.Tensor, order: WindowOrder, batch: int) -> torch.Tensor:
    """(B * windows, n, C) -> (B, H*W, C) image tokens (padding slots dropped)."""
    c = windows.shape[-1]
    slots = windows.reshape(-1, c)
    return slots.index_select(0, _batched(order.back, batch, slots.shape[0] // batch)).view(batch, -1, c)
