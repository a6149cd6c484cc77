"""Moving tiles between the host and the compute device without stalling the device.

The fast path (CUDA only): windows go up through pinned host memory with non-blocking copies,
and results come down on a side stream into pinned staging buffers, so the copy of one batch
overlaps the compute of the next, and the host waits for a batch's pixels only when it pastes
them, one batch later. The low-precision overflow check (`all_finite`) is evaluated on the device
and read at that same point, so there is no per-tile host synchronisation.

The plain path (every other backend, and the fallback): blocking `.to()` copies, pasted at once.

The fast path uses CUDA-only APIs (pinned memory, streams, events) that a driver, a sharing
tool or an unusual build can break in ways no CPU test reproduces. So it has a safety net: a
non-out-of-memory error raised by it switches this process to the plain path for good (one
logged line), and the runner recomputes the affected batch on the plain path. The CUDA calls
sit in `CudaCopies`, which tests replace with a CPU double to exercise both the deferred
bookkeeping and the safety net.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import first_line
from . import devices

log = logging.getLogger("tilewise")

#: Tests set this to exercise the deferred (one batch behind) bookkeeping on a CPU.
DEFER_ON_CPU = False
#: `doctor` sets this to compare the fast path with the plain one.
FORCE_PLAIN = False

_fast_path_failed: str | None = None  # why the fast path was switched off in this process
_lock = threading.Lock()


def fast_path_failure() -> str | None:
    """Why the fast path is off in this process (None while it is usable)."""
    return _fast_path_failed


def reset_fast_path() -> None:
    """Allows the fast path again (tests, and `doctor`'s own comparison)."""
    global _fast_path_failed
    with _lock:
        _fast_path_failed = None


class FastPathError(Exception):
    """Raised by `Pending.wait` when the fast path's copy failed; the batch must be recomputed."""


@dataclass
class Pending:
    """A batch whose result is on its way to the output device."""

    group: list
    windows: torch.Tensor  # the fp32 host windows, kept for a re-run
    result: torch.Tensor  # on the output device (or its pinned staging buffer) once `ready`
    finite: torch.Tensor | None = None  # device-side flag for low-precision results
    event: Any = None  # the backend's Event marking the end of the copy (fast path)
    keep: list = field(default_factory=list)  # tensors that must live until the copy is done
    transfers: "Transfers | None" = None

    def wait(self) -> None:
        """Waits for the copy; raises FastPathError (after switching the fast path off) when it failed."""
        if self.event is None:
            return
        try:
            self.event.synchronize()
        except Exception as error:
            if devices.active().is_out_of_memory(error) or self.transfers is None:
                raise
            self.transfers.disable(error)
            raise FastPathError() from error

    def overflowed(self) -> bool:
        return self.finite is not None and not bool(self.finite)


def all_finite(x: torch.Tensor) -> torch.Tensor:
    """Device-side flag: no value of `x` is NaN or infinite. One reduction (min and max propagate
    NaN, and an infinity is the min or the max) instead of `isfinite(x).all()`'s four passes and
    a mask: 0.9 against 4.6 ms on a 1024² bf16 output on a CPU, where that check was a third of
    Tilewise's time outside the model's forward. Backends without `aminmax` take the plain check."""
    try:
        low, high = torch.aminmax(x)
    except (NotImplementedError, RuntimeError):
        return torch.isfinite(x).all()
    return torch.isfinite(low) & torch.isfinite(high)


class CudaCopies:
    """The fast path's CUDA calls: pinned staging, a side stream, events."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self._staging: dict[tuple, list[torch.Tensor]] = {}

    def upload(self, windows: torch.Tensor) -> torch.Tensor:
        return windows.pin_memory().to(self.device, non_blocking=True)

    def download(self, result: torch.Tensor) -> tuple[torch.Tensor, object, list]:
        """Starts copying `result` (float32, clamped) into a pinned buffer; (buffer, event, keep-alive)."""
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            self.stream.wait_stream(compute)
            clamped = result.float().clamp_(0, 1)
            staging = self._buffer(tuple(clamped.shape))
            staging.copy_(clamped, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        result.record_stream(self.stream)
        return staging, event, [clamped]

    def _buffer(self, shape: tuple) -> torch.Tensor:
        """Two pinned buffers per shape, used in turn (one being filled while one is pasted)."""
        pool = self._staging.setdefault(shape, [])
        if len(pool) < 2:
            pool.append(torch.empty(shape, dtype=torch.float32, pin_memory=True))
            return pool[-1]
        pool.append(pool.pop(0))
        return pool[-1]


class Transfers:
    """Uploads windows and downloads results for one run (see the module docstring)."""

    def __init__(self, device: torch.device, output_device: torch.device, copies: CudaCopies | None = None):
        self.device = device
        self.output_device = output_device
        policy = devices.active()
        if (
            copies is None
            and not FORCE_PLAIN
            and _fast_path_failed is None
            and policy.backend(device) == "cuda"
            and policy.is_cpu(output_device)
        ):
            try:
                copies = CudaCopies(device)
            except Exception as error:  # noqa: BLE001 - a stream cannot be made: plain path
                self.copies = None
                self.disable(error)
        self.copies = copies
        self.deferred = copies is not None or DEFER_ON_CPU

    @property
    def fast(self) -> bool:
        return self.copies is not None

    def disable(self, error: BaseException) -> None:
        """Switches the fast path off for this run and the rest of the process (logged once)."""
        global _fast_path_failed
        self.copies = None
        self.deferred = DEFER_ON_CPU
        with _lock:
            first = _fast_path_failed is None
            if first:
                _fast_path_failed = f"{type(error).__name__}: {first_line(error)}"
        if first:
            log.warning(
                "Tilewise: the GPU copy fast path failed (%s); using plain copies from now on.", _fast_path_failed
            )

    def upload(self, windows: torch.Tensor, dtype: torch.dtype, layout: torch.memory_format) -> torch.Tensor:
        """Host windows -> device tensor in `dtype` and `layout` (asynchronous on the fast path)."""
        moved = None
        if self.copies is not None and windows.device.type == "cpu":
            try:
                moved = self.copies.upload(windows)
            except Exception as error:
                if devices.active().is_out_of_memory(error):
                    raise
                self.disable(error)
        if moved is None:
            moved = windows.to(self.device)
        return moved.to(dtype).contiguous(memory_format=layout)

    def download(self, group: list, windows: torch.Tensor, result: torch.Tensor, check_finite: bool) -> Pending:
        """Starts moving `result` to the output device clamped to [0, 1]: float32 on the fast path,
        else in the model's precision (the runner's paste converts)."""
        finite = all_finite(result) if check_finite else None
        if self.copies is not None:
            try:
                staging, event, keep = self.copies.download(result)
                return Pending(group, windows, staging, finite, event, keep, transfers=self)
            except Exception as error:
                if devices.active().is_out_of_memory(error):
                    raise
                self.disable(error)
        # clamped in the model's precision (the same values as after converting: 0 and 1 are
        # exact in every float type) and converted to float32 by the paste, one pass fewer
        moved = result.clamp_(0, 1).to(device=self.output_device)
        return Pending(group, windows, moved, finite)
