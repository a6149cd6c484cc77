"""Automatic tile size: the largest window whose forward fits the device's free memory.

A model's working memory grows linearly with the window's pixel count, so one small probe
forward per (model, device, dtype) gives bytes per input pixel, measured as the device allows
(the device policy, `devices`, says what the device is):
- CUDA, XPU: the allocator's peak during a 64 x 64 forward, over its pixel count, plus device
  memory lost outside the allocator (exact);
- CPU: the allocator keeps no statistics, so the probe takes the larger of two estimates:
  forward hooks' output sizes (the two largest layers live at once plus the final output,
  times `CPU_OVERHEAD` for temporaries) and the resident-memory growth sampled during a
  128 x 128 forward (psutil). Either alone missed by up to 4x on some architecture (hooks on
  SPAN, whose re-parameterised kernels are not outputs; RSS on models whose buffers the
  allocator reuses); their maximum over-estimates Compact, RRDB and SPAN, the safe side;
- MPS, DirectML and other devices without allocator statistics: the hook estimate, run on
  the device itself.
The window is then sqrt(free * SAFETY / (bytes per pixel * tiles per batch)), aligned to 8 and
clamped to [MIN_AUTO_TILE, MAX_AUTO_TILE], where `free` is the policy's free memory (the host's
own figure inside ComfyUI). An out-of-memory error still halves the tile.

On a CPU the cost of a plan is the pixels its windows compute (margins included), weighted
by how fast those pixels run: a forward whose largest tensor exceeds `LARGE_TENSOR` runs about
`LARGE_TENSOR_PENALTY` times slower per pixel (`largest_tensor_per_pixel`). The runner compares
the memory-limited window with the largest window below that size and takes the cheaper
(`planner._cheaper_cpu_tile`). A window whose estimated working set exceeds `CPU_WORKING_SET`
costs more per pixel the further it exceeds it (`working_set_rate`). That working set was once
a hard cap, which made RRDB-like models (margins of 79 px) run 42-px cores in 200-px windows,
computing 20x the image's pixels where the whole image fitted; as a cost it still picks
windows for RRDB with narrow margins. The measurements behind these constants are in
benchmarks/README.md, "CPU cost terms".
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import cast

import torch
from spandrel import ImageModelDescriptor

from ..compute import devices
from ..compute.precision import forward_fn, model_on
from . import probe_store

PROBE = 64
SAFETY = 0.5  # use at most half of what is free
CPU_OVERHEAD = 3.0
#: On a CPU, a forward whose largest tensor exceeds this runs about `LARGE_TENSOR_PENALTY` times
#: slower per pixel in a host's worker thread (see `largest_tensor_per_pixel`).
LARGE_TENSOR = 31 << 20
LARGE_TENSOR_PENALTY = 1.45
#: On a CPU, a forward whose estimated working set (`bytes_per_pixel` x window) exceeds this runs
#: slower per pixel, by `WORKING_SET_SLOPE` per GiB beyond it (`working_set_rate`); fitted to
#: RRDB x4 windows of 256² to 640² (benchmarks/README.md, "CPU cost terms").
CPU_WORKING_SET = 4 << 30
WORKING_SET_SLOPE = 0.07


def working_set_rate(working_bytes: float) -> float:
    """Relative cost per computed pixel of a CPU forward with this working set."""
    return 1.0 + WORKING_SET_SLOPE * max(0.0, working_bytes - CPU_WORKING_SET) / (1 << 30)


MIN_AUTO_TILE = 128
#: Beyond this, larger windows no longer run faster (measured on CPU and GPU), they only cost memory.
MAX_AUTO_TILE = 2048

_cache: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, torch.dtype], float]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def bytes_per_pixel(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> float:
    """Working memory of one forward per input pixel (probed once, cached in the process and,
    on the CPU, on disk: `_stored_key`)."""
    return _memo(_cache, descriptor, device, dtype, lambda: _measured(descriptor, device, dtype)["bytes"])


def known_bytes_per_pixel(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> float | None:
    """`bytes_per_pixel` when it is already known (this process or the disk store), else None:
    nothing is run."""
    with _lock:
        known = _cache.get(descriptor.model, {}).get((str(device), dtype))
    if known is not None:
        return known
    stored = _stored_key(descriptor, device, dtype)
    kept = probe_store.get(stored) if stored else None
    return kept["bytes"] if isinstance(kept, dict) and "bytes" in kept else None


def _measured(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """{"bytes": working memory per pixel, "largest": largest tensor per pixel (CPU only)}, from
    the disk store when kept there, else probed; on a CPU one 64² forward gives the hook
    estimate and the largest tensor together, and both are kept."""
    stored = _stored_key(descriptor, device, dtype)
    kept = probe_store.get(stored) if stored else None
    if isinstance(kept, dict) and {"bytes", "largest"} <= set(kept):
        return kept
    measured = _probe(descriptor, device, dtype)
    if stored:
        measured = cast(dict[str, float], probe_store.put(stored, measured))
    if "largest" in measured:
        _memo(_largest, descriptor, device, dtype, lambda: measured["largest"])
    return measured


def _memo(
    table: "weakref.WeakKeyDictionary",
    descriptor: ImageModelDescriptor,
    device: torch.device,
    dtype: torch.dtype,
    measure,
) -> float:
    """`table`'s figure for (model, device, dtype), from `measure()` the first time."""
    key = (str(device), dtype)
    with _lock:
        known = table.get(descriptor.model, {}).get(key)
    if known is not None:
        return known
    measured = measure()
    with _lock:
        table.setdefault(descriptor.model, {})[key] = measured
    return measured


def _probe_input(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype):
    """(module, forward, input, side) for a probe forward: a random PROBE-sized input (at least
    the model's minimum, a multiple of its `multiple_of`) on `device` in `dtype`."""
    model = model_on(descriptor, device, dtype)
    multiple = max(1, descriptor.size_requirements.multiple_of)
    size = -(-max(PROBE, descriptor.size_requirements.minimum) // multiple) * multiple
    x = torch.rand(1, descriptor.input_channels, size, size).to(device=device, dtype=dtype)
    return model, forward_fn(descriptor, model), x, size


def _probe(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    model, forward, x, size = _probe_input(descriptor, device, dtype)
    policy = devices.active()
    meter = policy.peak_memory(device)
    if meter is not None:
        with meter, torch.no_grad():
            forward(x)
        return {"bytes": meter.bytes / (size * size)}
    largest = _LargestResult()
    with largest:
        hooked = _hooked_estimate(model, forward, x) / (size * size)
    with _lock:  # the same forward gives the tensor profile (`large_tensor_rate`)
        _profiles.setdefault(descriptor.model, {}).setdefault(
            (str(device), dtype), tuple(s / (size * size) for s in largest.sizes)
        )
    if policy.is_cpu(device):
        return {
            "bytes": max(hooked, _rss_growth(forward, descriptor, device, dtype)),
            "largest": largest.largest / (size * size),
        }
    return {"bytes": hooked, "largest": largest.largest / (size * size)}


def _stored_key(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> str | None:
    """The key a CPU probe is kept under between processes (None: not kept). The resident-memory
    estimate varies between processes (SPAN: 5.8-6.6 kB per pixel over three runs, with glibc's
    heap state), and with it the auto window (416-432 px); windows of different sizes agree to
    about 1e-6, not bitwise, so the CLI and a host could differ in a rare 8-bit step. Keeping the
    first probe per (weights, dtype, torch, CPU) makes every later process on the machine plan
    the same windows, and skips the probe. CUDA's allocator peak is exact and not kept."""
    if not devices.active().is_cpu(device):
        return None
    return probe_store.key(
        descriptor.model, f"memory2|{descriptor.architecture.id}|{dtype}|{torch.__version__}|{devices.cpu_signature()}"
    )


def _hooked_estimate(model: torch.nn.Module, forward, x: torch.Tensor) -> float:
    sizes: list[int] = []

    def record(_module, _inputs, output):
        tensors = output if isinstance(output, (tuple, list)) else (output,)
        sizes.append(sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)))

    handles = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = forward(x)
    finally:
        for handle in handles:
            handle.remove()
    largest = sorted(sizes, reverse=True)[:2]
    return CPU_OVERHEAD * (sum(largest) + out.numel() * out.element_size())


resident_bytes = devices.resident_bytes


def _rss_growth(forward, descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> float:
    """Peak resident-memory growth per input pixel during one 128 x 128 forward on the CPU
    `device` (0 if unknown)."""
    import gc

    size = 128
    x = torch.rand(1, descriptor.input_channels, size, size).to(device=device, dtype=dtype)
    try:
        gc.collect()
        base = resident_bytes()
    except Exception:  # noqa: BLE001 - psutil cannot read this process: no estimate
        return 0.0
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(resident_bytes())
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with torch.no_grad():
            forward(x)
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak) - base) / (size * size)


def free_memory(device: torch.device) -> int | None:
    """The device policy's free memory on `device` (None: unknown)."""
    return devices.active().free_memory(device)


def pixel_budget(
    descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype, limit: float | None = None
) -> float | None:
    """Input pixels one forward may hold in the device's free memory (with `SAFETY`), and in at
    most `limit` bytes when given; None when free memory is unknown, 0 when not even the probe fits."""
    from ..compute.precision import is_out_of_memory

    free = free_memory(device)
    if free is None:
        return None
    try:
        per_pixel = max(bytes_per_pixel(descriptor, device, dtype), 1.0)
    except Exception as error:
        if is_out_of_memory(error):  # even the probe does not fit: start small, OOM handling does the rest
            return 0.0
        if dtype == torch.float32:
            raise
        # the model fails in this precision (the runner then falls back to fp32): size for fp32
        per_pixel = max(bytes_per_pixel(descriptor, device, torch.float32), 1.0)
    usable = free * SAFETY if limit is None else min(free * SAFETY, limit)
    return usable / per_pixel


def auto_tile_size(
    descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype, batch: int = 1, cap: bool = True
) -> int:
    """The window length for `tile=0` (auto): the largest square whose `batch` windows fit.

    `cap=False` drops `MAX_AUTO_TILE`, for models with global context, where a larger window
    is not only no slower but also closer to the whole-image result.
    """
    budget = pixel_budget(descriptor, device, dtype)
    if budget is None:
        return 512
    side = int(math.sqrt(budget / max(1, batch))) // 8 * 8
    return max(MIN_AUTO_TILE, min(MAX_AUTO_TILE, side) if cap else side)


_largest: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, torch.dtype], float]]" = (
    weakref.WeakKeyDictionary()
)


def largest_tensor_per_pixel(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> float:
    """Bytes per input pixel of the largest tensor one forward creates (any operation's result,
    seen through `torch.overrides.TorchFunctionMode` on a 64 x 64 forward; cached per model).

    Why it matters on a CPU: C libraries hand large blocks to the operating system on free and
    map them afresh on the next allocation (glibc above its mmap threshold, at most 32 MiB;
    Windows' heap above 512 KiB), so every forward whose largest tensors exceed that pays a page
    fault and a zeroed page per 4 KiB for them: a step in seconds per pixel once feature maps
    pass about 32 MiB (benchmarks/README.md, "CPU cost terms")."""

    def measure() -> float:
        try:
            stored = _stored_key(descriptor, device, dtype)
            kept = probe_store.get(stored) if stored else None
            if isinstance(kept, dict) and "largest" in kept:  # measured with the memory probe, kept on disk
                return kept["largest"]
            return _largest_result(descriptor, device, dtype)
        except Exception:  # noqa: BLE001 - fails in this dtype (the runner then falls back): size by fp32
            try:
                element = torch.empty((), dtype=dtype).element_size()
                return _largest_result(descriptor, device, torch.float32) * element / 4
            except Exception:  # noqa: BLE001 - no measurement: no large-tensor preference
                return 0.0

    return _memo(_largest, descriptor, device, dtype, measure)


def _largest_result(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> float:
    profile = _tensor_profile(descriptor, device, dtype)
    if profile is None:
        raise RuntimeError("the model failed in this dtype")
    return max(profile, default=0.0)


def _tensor_profile(
    descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype
) -> tuple[float, ...] | None:
    """Bytes per input pixel of every tensor one 64² forward creates (None: it failed in this
    dtype); one forward per (model, device, dtype) serves both the largest tensor and
    `large_tensor_rate`."""
    key = (str(device), dtype)
    with _lock:
        known = _profiles.get(descriptor.model, {})
        if key in known:
            return known[key]
    try:
        _, forward, x, size = _probe_input(descriptor, device, dtype)
        meter = _LargestResult()
        with torch.no_grad(), meter:
            forward(x)
        profile: tuple[float, ...] | None = tuple(s / (size * size) for s in meter.sizes)
    except Exception:  # noqa: BLE001 - fails in this dtype (the runner then falls back)
        profile = None
    with _lock:
        _profiles.setdefault(descriptor.model, {})[key] = profile
    return profile


class _LargestResult(torch.overrides.TorchFunctionMode):
    """Records the size of every tensor any torch function returns inside the block, and the largest."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.sizes: list[int] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor):
                size = value.numel() * value.element_size()
                self.sizes.append(size)
                self.largest = max(self.largest, size)
        return result


_profiles: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, torch.dtype], tuple[float, ...] | None]]" = (
    weakref.WeakKeyDictionary()
)


def large_tensor_rate(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype, pixels: int) -> float:
    """Relative cost per pixel of a CPU forward over `pixels` input pixels: `LARGE_TENSOR_PENALTY`
    weighted by the share of the forward's tensor bytes that are in tensors over `LARGE_TENSOR`.
    A step on the largest tensor alone overstated it for models whose large tensors are few
    (SPAN's one large concatenation among smaller feature maps made auto cut an image that ran
    faster whole); Compact's feature maps are all large, so it keeps the full penalty. The sizes
    come from one 64² forward
    (deterministic, so every process plans alike)."""
    profile = _tensor_profile(descriptor, device, dtype) or ()  # failing in this dtype: no preference
    total = sum(profile)
    if not total:
        return 1.0
    large = sum(per_pixel for per_pixel in profile if per_pixel * pixels > LARGE_TENSOR)
    return 1.0 + (LARGE_TENSOR_PENALTY - 1.0) * large / total


#: Working memory per input pixel no model is known to exceed on a CPU, with room to spare over the
#: largest measured (RRDB; benchmarks/README.md, "CPU cost terms").
CPU_BOUND_PER_PIXEL = 64 << 10


def fits_without_probe(device: torch.device, pixels: int) -> bool:
    """Whether a CPU window of `pixels` surely fits without measuring the model's working memory:
    even at `CPU_BOUND_PER_PIXEL` it stays within half the free memory and under
    `CPU_WORKING_SET` (so it pays no working-set slowdown either). The runner then weighs only
    the large-tensor window against the whole image (`planner._cheaper_cpu_tile`), and the full
    probe (a further 128² forward sampling resident memory) is skipped: on small images it was
    most of what a first call cost over a later one."""
    if not devices.active().is_cpu(device):
        return False
    free = free_memory(device)
    return free is not None and pixels * CPU_BOUND_PER_PIXEL <= min(free * SAFETY, CPU_WORKING_SET)


def whole_image_fits(
    descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype, height: int, width: int
) -> bool:
    """Whether one forward over the whole (height x width) image fits the free memory."""
    budget = pixel_budget(descriptor, device, dtype)
    return budget is not None and height * width <= budget
