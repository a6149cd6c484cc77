"""Devices, precisions and per-(device, dtype) copies of a loaded model.

Precision is always explicit: inputs and weights are cast to the working dtype and the model is
never run under an ambient autocast region (a host's autocast turned fp32-only models into NaNs
in the past). `auto` picks fp16 where the architecture supports it and the device policy
(`devices`: the host's judgement) says fp16 runs well there, bf16 where only that is supported
and the policy allows it, else fp32; the CPU is always fp32 under `auto`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import threading
import weakref
from typing import Callable, Literal, cast

import torch
from spandrel import ImageModelDescriptor

from ..choices import PRECISIONS
from . import devices, inference_forms

log = logging.getLogger("tilewise")

Precision = Literal["auto", "fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto`/None -> the active device policy's default (the host's device; else the current
    accelerator, else the CPU); also `cpu`, `cuda`, `cuda:1`, `mps`, `xpu`, which must exist."""
    return devices.active().resolve(device)


def resolve_dtype(precision: str, descriptor: ImageModelDescriptor, device: torch.device) -> torch.dtype:
    """The working dtype for `precision`; a precision the model cannot run falls back to fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    policy = devices.active()
    if precision == "auto":
        if policy.is_cpu(device):
            return torch.float32
        if descriptor.supports_half and policy.fp16(device):
            return torch.float16
        if descriptor.supports_bfloat16 and policy.bf16(device):
            return torch.bfloat16
        return torch.float32
    dtype = _DTYPES[precision]
    if (
        dtype == torch.float16
        and not descriptor.supports_half
        or dtype == torch.bfloat16
        and not descriptor.supports_bfloat16
    ):
        log.warning("Tilewise: %s does not support %s; running in fp32.", descriptor.architecture.name, precision)
        return torch.float32
    if dtype == torch.bfloat16 and policy.is_cpu(device) and devices.cpu_has_native_bf16() is False:
        log.warning("Tilewise: this CPU has no native bf16; bf16 will be slower than fp32 here.")
    return dtype


def prefers_channels_last(model: torch.nn.Module) -> bool:
    """True for pure convolutional nets (no token layers), which run faster on NHWC input.

    Conv nets gain in fp32 and more with bf16; transformers (Linear/LayerNorm over tokens)
    reshape to NCHW and back anyway, so they keep the default layout. Only the input is
    converted: convolutions propagate NHWC, and PyTorch reorders the weights itself about as
    fast as converting them, so the shared model is never touched. A model may decide for
    itself with a boolean `prefers_channels_last` attribute (ParagonSR2 photo/pro: attention
    runs on tokens-last features, so NHWC saves its permute copies). Figures: benchmarks/README.md,
    "Layout".
    """
    declared = getattr(model, "prefers_channels_last", None)
    if isinstance(declared, bool):
        return declared
    has_conv = False
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.MultiheadAttention)):
            return False
        has_conv = has_conv or isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
    return has_conv


_variants: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, torch.nn.Module]]" = weakref.WeakKeyDictionary()
_variants_lock = threading.Lock()


def model_on(
    descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype, compiled: bool = False
) -> torch.nn.Module:
    """The descriptor's module on `device` in `dtype`; a cached copy when that differs from the original.

    The original is never moved or cast, so a model shared by several hosts or threads keeps
    its placement. `compiled` gives a `torch.compile`d copy (static shapes), cached like the others:
    compiling costs seconds to minutes, so it pays off for long runs of equal tiles (video).
    """
    if compiled:
        key = (str(device), dtype, "compiled")
        with _variants_lock:
            variants = _variants.setdefault(descriptor.model, {})
            if key not in variants:
                base = model_on_unlocked(descriptor, device, dtype)
                variants[key] = cast(torch.nn.Module, torch.compile(base, dynamic=False))
            return variants[key]
    with _variants_lock:
        return model_on_unlocked(descriptor, device, dtype)


def model_on_unlocked(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`model_on` without the lock. The shared module is returned only when it already sits on
    `device` in `dtype` and has no inference form to apply; otherwise a private copy, cast and
    moved, gets the forms (`inference_forms`), so the module the host shares with other nodes
    and packs keeps its own classes and placement."""
    model = descriptor.model
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    if first is None:
        return model
    if same_device(first.device, device) and first.dtype == dtype and not inference_forms.applies(model):
        return model
    key = (str(device), dtype)
    variants = _variants.setdefault(model, {})
    if key not in variants:
        variant = private_copy(model, device, dtype).eval()
        for parameter in variant.parameters():
            parameter.requires_grad_(False)
        inference_forms.prepare(variant)
        variants[key] = variant
    return variants[key]


def private_copy(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `model` on `device` with its floating-point parameters and buffers in `dtype`
    (the others only moved), sharing no storage with it.

    Each parameter and buffer is cast and moved once, straight from the original, and handed to
    `copy.deepcopy` as already copied; deepcopy then only rebuilds the modules around them. Copying
    first and casting after read the weights twice and held a second full-precision copy in
    host memory meanwhile, the size of the model: on a GPU, where the copy is made afresh for
    every call (`nodes.host.run_on`), that was the cost of each call beside ComfyUI's own
    `model.to(device)` (RRDB 23 blocks to bf16 on a CPU: 84 against 66 ms). Tensors of a subclass
    of their own are left to deepcopy and cast after it, as before."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if id(tensor) in memo or type(tensor) not in (torch.nn.Parameter, torch.Tensor):
            continue
        target = dtype if tensor.is_floating_point() else tensor.dtype
        data = tensor.detach().to(device=device, dtype=target, copy=True)
        if type(tensor) is torch.nn.Parameter:
            memo[id(tensor)] = torch.nn.Parameter(data, requires_grad=tensor.requires_grad)
        else:
            memo[id(tensor)] = data
    return copy.deepcopy(model, memo).to(device=device, dtype=dtype)


def same_device(a: torch.device, b: torch.device) -> bool:
    """`cuda` and `cuda:0` (or `xpu` and `xpu:0`) are the same device when 0 is the current one."""
    return devices.active().same_device(a, b)


_failing: "weakref.WeakKeyDictionary[torch.nn.Module, dict[torch.dtype, str]]" = weakref.WeakKeyDictionary()


def mark_failing(descriptor: ImageModelDescriptor, dtype: torch.dtype, fallback: str = "fp32") -> None:
    """Remembers that this model cannot run cast to `dtype` (despite its flags) and what to do
    instead: `autocast` (fp32 weights, `dtype` matmuls and convolutions) or `fp32`."""
    with _variants_lock:
        _failing.setdefault(descriptor.model, {})[dtype] = fallback


def run_mode(descriptor: ImageModelDescriptor, dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of weights and input, autocast dtype or None) for a run asked in `dtype`.

    Casting the whole model is the fast path. Some models flagged bf16/fp16-capable still mix
    dtypes inside (spandrel's SwinIR adds an fp32 attention mask to bf16 logits and fails, unless
    its inference form from `inference_forms` builds that mask in the model's dtype); for
    them the runner falls back to autocast, which keeps fp32 weights and runs matmuls and
    convolutions in `dtype` (still faster than fp32: benchmarks/README.md), and only
    if that fails too, to fp32. The outcome is remembered per model.
    """
    with _variants_lock:
        fallback = _failing.get(descriptor.model, {}).get(dtype)
    if fallback is None:
        return dtype, None
    return torch.float32, (dtype if fallback == "autocast" else None)


def release_variants(descriptor: ImageModelDescriptor) -> None:
    """Drops the cached device/dtype copies of a model (frees GPU memory after a run)."""
    with _variants_lock:
        _variants.pop(descriptor.model, None)


_forward_locks: "weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock]" = weakref.WeakKeyDictionary()


def _forward_lock(module: torch.nn.Module) -> threading.Lock:
    with _variants_lock:
        lock = _forward_locks.get(module)
        if lock is None:
            lock = _forward_locks[module] = threading.Lock()
        return lock


def forward_fn(
    descriptor: ImageModelDescriptor, module: torch.nn.Module, autocast: torch.dtype | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module`'s forward as the descriptor calls it (its `call_fn`), without spandrel's clamp,
    with any host autocast disabled, or under our own `autocast` dtype when one is given. Keyword
    arguments go to the module itself (video feature feedback: `prev_feat`, `alpha`).

    Forwards of one module are serialised: some architectures write to their own weights during
    an eval forward (SPAN re-derives its 3x3 kernels on every call), so two threads sharing a
    cached model (ComfyUI can do this) would otherwise corrupt each other's results.
    """
    call = getattr(descriptor, "_call_fn", None) or (lambda m, x: m(x))
    lock = _forward_lock(module)

    def forward(x: torch.Tensor, **inputs):
        region = torch.autocast(x.device.type, dtype=autocast) if autocast is not None else no_autocast(x.device)
        with lock, region:
            return module(x, **inputs) if inputs else call(module, x)

    return forward


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Disables any autocast region a host may have opened around us (on backends with autocast)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a backend without autocast (meta, some private ones)
        return contextlib.nullcontext()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an out-of-memory error, as the active device policy recognises them
    (CUDA, MPS, XPU, DirectML, CPU allocation failures, and the host's own OOM exception)."""
    return devices.active().is_out_of_memory(error)
