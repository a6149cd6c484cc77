"""Fused window attention on the CPU for 16- and 32-wide heads (`window_attention.cpp`).

ParagonSR2's photo and pro blocks attend within 256-token windows with 16-wide heads. PyTorch's
CPU attention is built for wide heads: with 16 channels per head its matrix products are too
small to amortise their overhead, and it needs the heads split out of the qkv projection and
merged back (two copies of q, k, v and of the output per block). On a whole photo that was more
than half of a forward. The kernel reads q, k and v where the projection wrote them and writes
what the output projection reads. Measured on 0.78 MP (3072 windows of 256 tokens, 4 heads,
2 threads, AVX-512): 0.32 s per block in fp32 against SDPA's 0.56 s, 0.30 s in bf16 against
0.60 s.

Numerics match SDPA's CPU kernel: fp32 accumulation, softmax with the row maximum subtracted,
bf16 inputs widened exactly and outputs rounded to nearest even (tested against fp64).

It is built with the system compiler on first use (`native.py`, about a second) and used only
where `attend` returns a tensor: CPU, fp32 or bf16, no autograd, tracing or compiling (those see
PyTorch's attention, which exports). `TILEWISE_CPU_KERNELS=0` switches it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch

from .. import native

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("window_attention.cpp")
HEAD_DIMS = (16, 32)
MAX_TOKENS = 4096  # per window; a 64 x 64 window keeps each thread's buffers near 1 MiB
FLAGS = ("-O3", "-march=native", "-std=c++17", "-pthread")


def _load() -> ctypes.CDLL:
    if os.environ.get("TILEWISE_CPU_KERNELS", "1") == "0":
        raise RuntimeError("switched off by TILEWISE_CPU_KERNELS=0")
    lib = ctypes.CDLL(str(native.library("window_attention", SOURCE, FLAGS, key=native.cpu_features())))
    lib.tilewise_window_attention.restype = ctypes.c_int
    lib.tilewise_window_attention.argtypes = (
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
    )  # fmt: skip
    return lib


_helper = native.Helper(_load, "Tilewise's CPU window-attention kernel is unavailable (%s); PyTorch's attention is used, which is slower", log)


def load() -> ctypes.CDLL | None:
    """The kernel's library, building it on first call; None if unavailable (reason logged once)."""
    return _helper.load()


def unavailable_reason() -> str:
    """Why `load()` gave None ('' when it did not, or was not asked yet)."""
    return _helper.reason


def supports(qkv: torch.Tensor, heads: int) -> bool:
    """Whether `attend` can take this (windows, n, 3C) projection (the library aside)."""
    if qkv.dim() != 3 or qkv.device.type != "cpu" or qkv.dtype not in (torch.float32, torch.bfloat16):
        return False
    windows, n, width = qkv.shape
    if qkv.requires_grad or width % (3 * heads):
        return False
    return width // (3 * heads) in HEAD_DIMS and 16 <= n <= MAX_TOKENS and n % 16 == 0 and windows > 0


def attend(qkv: torch.Tensor, heads: int) -> torch.Tensor | None:
    """softmax(q kᵀ / sqrt(d)) v per window and head, for `qkv` of shape (windows, n, 3C) laid out
    as `qkv.chunk(3, -1)` with head h in channels [h d, (h + 1) d) of each: (windows, n, C), the
    heads side by side. None when the kernel cannot take it; the caller then uses SDPA."""
    if not supports(qkv, heads):
        return None
    lib = load()
    if lib is None:
        return None
    qkv = qkv.contiguous()
    windows, n, width = qkv.shape
    out = torch.empty(windows, n, width // 3, dtype=qkv.dtype)
    done = lib.tilewise_window_attention(
        qkv.data_ptr(), out.data_ptr(), windows, n, heads, width // (3 * heads), int(qkv.dtype == torch.bfloat16), torch.get_num_threads(),
    )  # fmt: skip
    return out if done else None
