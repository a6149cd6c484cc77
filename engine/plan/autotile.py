"""Automatic tile size: the largest window whose forward fits the device's free memory.

A model's working memory grows linearly with the window's pixel count, so one small probe
forward per (model, device, dtype) gives bytes per input pixel, measured as the device allows
(the device policy, `devices`, says what the device is):
- CUDA, XPU: the allocator's peak during a 64 x 64 forward, over its pixel count, plus device
  memory lost outside the allocator (exact);
- CPU, MPS, DirectML and other devices without allocator statistics: the peak of the tensors
  alive during a 64 x 64 forward, seen through `torch.overrides.TorchFunctionMode` (every
  operation's result, views counted once, freed when their last reference goes), times
  `CPU_OVERHEAD` for what operations allocate inside (oneDNN's reorders, concatenations). The
  same forward gives the tensor profile the CPU cost terms use, so the memory figure costs no
  forward of its own, and both are kept on disk per weights (`probe_store`): a later process
  runs no probe forward for a model it has seen. It replaced forward hooks (module outputs
  only: missed SPAN's functional convolutions) and resident-memory sampling during a 128 x 128
  forward (noisy with the heap's state, and its sampler thread made it cost 4x that forward);
  figures in benchmarks/README.md, "CPU cost terms".
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
import platform
import threading
import weakref

import torch
from spandrel import ImageModelDescriptor

from ..compute import devices
from ..compute.precision import forward_fn, is_out_of_memory, model_on
from . import probe_store

PROBE = 64
SAFETY = 0.5  # use at most half of what is free
#: Working memory over the peak of live tensors a forward's operations return (measured up to 2.1x:
#: RRDB 17 kB per pixel against 8 kB live, fp32).
CPU_OVERHEAD = 3.0


def _large_tensor_limit() -> int | None:
    """Where the large-tensor cost was measured, glibc: blocks under its dynamic mmap threshold
    (at most 32 MiB) are reused by the next forward, larger ones are mapped afresh and fault
    page by page, so windows whose tensors stay under it run faster per pixel. Elsewhere None,
    no such term: Windows' heap maps every block over 512 KiB afresh, so strips fault as much as
    the whole image and only add margins; macOS was not measured. Auto then runs the whole
    image where it fits, as the hosts' own upscale nodes do."""
    return 31 << 20 if platform.libc_ver()[0] == "glibc" else None


#: On a CPU with glibc, a forward whose largest tensor exceeds this runs about
#: `LARGE_TENSOR_PENALTY` times slower per pixel in a host's worker thread (see
#: `largest_tensor_per_pixel`); None where that does not hold (`_large_tensor_limit`).
LARGE_TENSOR: int | None = _large_tensor_limit()
LARGE_TENSOR_PENALTY = 1.45
#: On a CPU, a forward whose estimated working set (`bytes_per_pixel` x window) exceeds this runs
#: slower per pixel, by `WORKING_SET_SLOPE` per GiB beyond it (`working_set_rate`); fitted to
#: RRDB x4 windows of 256² to 640² (benchmarks/README.md, "CPU cost terms").
CPU_WORKING_SET = 6 << 30
WORKING_SET_SLOPE = 0.05


def working_set_rate(working_bytes: float) -> float:
    """Relative cost per computed pixel of a CPU forward with this working set."""
    return 1.0 + WORKING_SET_SLOPE * max(0.0, working_bytes - CPU_WORKING_SET) / (1 << 30)


MIN_AUTO_TILE = 128
#: Beyond this, larger windows no longer run faster (measured on CPU and GPU), they only cost memory.
MAX_AUTO_TILE = 2048

#: Distinct tensor sizes a model's kept profile holds (`_profile_steps`); smaller ones are pooled.
PROFILE_STEPS = 48
#: The fields of a record made by counting tensors (`_counted`).
_COUNTED = frozenset(("bytes", "largest", "sizes", "totals"))

#: (model, device, dtype) -> the probe's record: {"bytes": working memory per input pixel} and,
#: where the tensors were counted (`_counted`), "largest", "sizes" and "totals" (bytes per input
#: pixel); or, when the probe forward failed in that dtype, the error's message.
_records: "weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, torch.dtype], dict | str]]" = (
    weakref.WeakKeyDictionary()
)


class ProbeFailed(RuntimeError):
    """The probe forward failed in this dtype (the message is its error's); raised again for
    every later ask without running it, as a new exception that holds no earlier frames."""


_lock = threading.Lock()


def bytes_per_pixel(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> float:
    """Working memory of one forward per input pixel (probed once, kept in the process and, on
    the CPU, on disk: `_stored_key`)."""
    return _record(descriptor, device, dtype)["bytes"]


def known_bytes_per_pixel(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> float | None:
    """`bytes_per_pixel` when it is already known (this process or the disk store), else None:
    nothing is run."""
    with _lock:
        known = _records.get(descriptor.model, {}).get((str(device), dtype))
    if isinstance(known, dict):
        return known["bytes"]
    stored = _stored_key(descriptor, device, dtype)
    kept = _kept_record(probe_store.get(stored)) if stored else None
    return kept["bytes"] if kept is not None else None


def _kept_record(kept) -> dict | None:
    """A record from the disk store when it is whole: non-negative figures and a profile whose
    lists pair up (anything else is probed again and replaced)."""
    whole = probe_store.record(kept, numbers=("bytes", "largest"), lists=("sizes", "totals"))
    if whole is None or min(whole["bytes"], whole["largest"]) < 0 or len(whole["sizes"]) != len(whole["totals"]):
        return None
    return whole


def _record(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> dict:
    """The probe's record for (model, device, dtype): from this process, else from the disk
    store, else one probe forward (`_probe`), kept in both. A forward that fails in this dtype
    raises, now and on every later ask, without running again; running out of memory is not
    kept (it depends on what else holds memory)."""
    key = (str(device), dtype)
    with _lock:
        known = _records.get(descriptor.model, {}).get(key)
    if isinstance(known, str):
        raise ProbeFailed(known)
    if known is not None:
        return known
    stored = _stored_key(descriptor, device, dtype)
    found = probe_store.get(stored) if stored else None
    kept = _kept_record(found)
    if kept is not None:
        record: dict | str = kept
    else:
        try:
            record = _probe(descriptor, device, dtype)
        except Exception as error:
            if is_out_of_memory(error):
                raise
            record = f"{type(error).__name__}: {error}"
        if stored and isinstance(record, dict):  # a record another process kept meanwhile wins
            record = _kept_record(probe_store.put(stored, record, replace=found is not None)) or record
    with _lock:
        record = _records.setdefault(descriptor.model, {}).setdefault(key, record)
    if isinstance(record, str):
        raise ProbeFailed(record)
    return record


def _counted_record(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> dict | None:
    """The record with the tensor profile (`_counted`), or None when the model fails in this
    dtype or the record has none: devices with allocator statistics probe memory without
    counting tensors, and the large-tensor terms the profile feeds are a CPU's (only CPU plans
    read it)."""
    try:
        record = _record(descriptor, device, dtype)
    except Exception:  # noqa: BLE001 - fails in this dtype (the runner then falls back)
        return None
    return record if _COUNTED <= set(record) else None


def _probe_input(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype):
    """(module, forward, input, side) for a probe forward: a random PROBE-sized input (at least
    the model's minimum, a multiple of its `multiple_of`) on `device` in `dtype`."""
    model = model_on(descriptor, device, dtype)
    multiple = max(1, descriptor.size_requirements.multiple_of)
    size = -(-max(PROBE, descriptor.size_requirements.minimum) // multiple) * multiple
    x = torch.rand(1, descriptor.input_channels, size, size).to(device=device, dtype=dtype)
    return model, forward_fn(descriptor, model), x, size


def _probe(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> dict:
    """One probe forward: the allocator's peak where the device keeps statistics, else the
    counted record (`_counted`)."""
    _, forward, x, size = _probe_input(descriptor, device, dtype)
    allocator = devices.active().peak_memory(device)
    if allocator is not None:
        with allocator, torch.no_grad():
            forward(x)
        return {"bytes": allocator.bytes / (size * size)}
    return _counted(forward, x, size)


def _counted(forward, x: torch.Tensor, size: int) -> dict:
    """One forward of `x` under `_TensorMeter`, per input pixel: "bytes" (working memory: the
    peak of live tensors times `CPU_OVERHEAD`), "largest" (the largest tensor) and the tensor
    profile `large_tensor_rate` reads, "sizes" (distinct tensor sizes, largest first) with
    "totals" (the bytes of all tensors of each size), pooled to `PROFILE_STEPS` so that the
    disk store keeps it whole: every process then plans from the same figures."""
    meter = _TensorMeter()
    with torch.no_grad(), meter:
        forward(x)
    pixels = size * size
    sizes, totals = _profile_steps([s / pixels for s in meter.sizes])
    return {
        "bytes": CPU_OVERHEAD * meter.peak / pixels,
        "largest": meter.largest / pixels,
        "sizes": sizes,
        "totals": totals,
    }


def _profile_steps(sizes: list[float]) -> tuple[list[float], list[float]]:
    """(distinct sizes, largest first; the total of each), the smallest pooled into the last
    step at the largest size among them (never fewer bytes counted as large)."""
    totals: dict[float, float] = {}
    for size in sizes:
        totals[size] = totals.get(size, 0.0) + size
    steps = sorted(totals, reverse=True)
    kept, pooled = steps[: PROFILE_STEPS - 1], steps[PROFILE_STEPS - 1 :]
    result = [(size, totals[size]) for size in kept]
    if pooled:
        result.append((pooled[0], sum(totals[size] for size in pooled)))
    return [size for size, _ in result], [total for _, total in result]


def _stored_key(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> str | None:
    """The key a CPU probe is kept under between processes (None: not kept): per (architecture,
    class, scale, names and shapes of the weights, dtype, torch, CPU). The tensors a forward
    creates follow from shapes, not values, so the many checkpoints of one shape (community
    RRDB x4 models, say) share one probe; and every process on the machine plans the same
    windows (windows of different sizes agree to about 1e-6, not bitwise). CUDA's allocator peak
    is exact and not kept."""
    if not devices.active().is_cpu(device):
        return None
    model = descriptor.model
    settings = (
        f"memory4|{descriptor.architecture.id}|{type(model).__module__}.{type(model).__qualname__}|"
        f"{descriptor.scale}|{dtype}|{torch.__version__}|{devices.cpu_signature()}"
    )
    return probe_store.key(model, settings, values=False)


def free_memory(device: torch.device) -> int | None:
    """The device policy's free memory on `device` (None: unknown)."""
    return devices.active().free_memory(device)


def pixel_budget(
    descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype, limit: float | None = None
) -> float | None:
    """Input pixels one forward may hold in the device's free memory (with `SAFETY`), and in at
    most `limit` bytes when given; None when free memory is unknown, 0 when not even the probe fits."""
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


def largest_tensor_per_pixel(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype) -> float:
    """Bytes per input pixel of the largest tensor one forward creates (any operation's result,
    seen through `torch.overrides.TorchFunctionMode` on a 64 x 64 forward; kept with the memory
    probe's record).

    Why it matters on a CPU: C libraries hand large blocks to the operating system on free and
    map them afresh on the next allocation (glibc above its mmap threshold, at most 32 MiB;
    Windows' heap above 512 KiB), so every forward whose largest tensors exceed that pays a page
    fault and a zeroed page per 4 KiB for them: a step in seconds per pixel once feature maps
    pass about 32 MiB (benchmarks/README.md, "CPU cost terms"). A model that fails in `dtype`
    (the runner then falls back) is sized from its fp32 forward."""
    record = _counted_record(descriptor, device, dtype)
    if record is not None:
        return record["largest"]
    fallback = _counted_record(descriptor, device, torch.float32)
    if fallback is None:  # no measurement: no large-tensor preference
        return 0.0
    return fallback["largest"] * torch.empty((), dtype=dtype).element_size() / 4


class _TensorMeter(torch.overrides.TorchFunctionMode):
    """Inside the block, records the size of every tensor any torch function returns (`sizes`,
    `largest`) and the peak bytes of those alive at once (`peak`): a storage counts once however
    many views share it, from its first appearance until its last tensor is freed."""

    def __init__(self):
        super().__init__()
        self.largest = self.live = self.peak = 0
        self.sizes: list[int] = []
        self._views: dict[int, int] = {}  # storage address -> live tensors on it

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor):
                size = value.numel() * value.element_size()
                self.sizes.append(size)
                self.largest = max(self.largest, size)
                self._track(value)
        return result

    def _track(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
            address, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):  # no storage to see (a private backend's, sparse, ...)
            address, nbytes = id(tensor), tensor.numel() * tensor.element_size()  # counted as its own
        if address not in self._views:
            self._views[address] = 0
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        self._views[address] += 1
        weakref.finalize(tensor, self._freed, address, nbytes)

    def _freed(self, address: int, nbytes: int) -> None:
        left = self._views.get(address, 1) - 1
        if left > 0:
            self._views[address] = left
        else:
            self._views.pop(address, None)
            self.live -= nbytes


def large_tensor_rate(descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype, pixels: int) -> float:
    """Relative cost per pixel of a CPU forward over `pixels` input pixels: `LARGE_TENSOR_PENALTY`
    weighted by the share of the forward's tensor bytes that are in tensors over `LARGE_TENSOR`.
    A step on the largest tensor alone overstated it for models whose large tensors are few
    (SPAN's one large concatenation among smaller feature maps made auto cut an image that ran
    faster whole); Compact's feature maps are all large, so it keeps the full penalty. The sizes
    come from the memory probe's 64² forward (`_counted`), kept on disk with it."""
    limit = LARGE_TENSOR
    record = _counted_record(descriptor, device, dtype) if limit is not None else None
    if record is None:  # no such term here, or failing in this dtype: no preference
        return 1.0
    total = sum(record["totals"])
    if not total:
        return 1.0
    large = sum(t for size, t in zip(record["sizes"], record["totals"]) if size * pixels > limit)
    return 1.0 + (LARGE_TENSOR_PENALTY - 1.0) * large / total


#: Working memory per input pixel no model is known to exceed on a CPU, with room to spare over the
#: largest measured (RRDB; benchmarks/README.md, "CPU cost terms").
CPU_BOUND_PER_PIXEL = 64 << 10


def fits_without_probe(device: torch.device, pixels: int) -> bool:
    """Whether a CPU window of `pixels` surely fits without measuring the model's working memory:
    even at `CPU_BOUND_PER_PIXEL` it stays within half the free memory and under
    `CPU_WORKING_SET` (so it pays no working-set slowdown either). A model with global context
    then runs whole without a probe forward at all (SwinIR light: 0.13 s at fp32); others need
    the probe forward's tensor profile for the large-tensor cost anyway, which gives the working
    memory with it."""
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
