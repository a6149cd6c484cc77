"""Moving tiles between the host and the compute device without stalling the device.

On CUDA, windows go up through pinned host memory with non-blocking copies, and results come
down on a side stream into pinned staging buffers: the copy of one batch overlaps the compute
of the next, and the host waits for a batch's pixels only when it pastes them, one batch later.
The low-precision overflow check (`isfinite`) is evaluated on the device and read at that same
point, so there is no per-tile host synchronisation. On the CPU all of this collapses to plain
casts, and results are pasted at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: Tests set this to exercise the deferred (one batch behind) bookkeeping on a CPU.
DEFER_ON_CPU = False


@dataclass
class Pending:
    """A batch whose result is on its way to the output device."""

    group: list
    windows: torch.Tensor  # the fp32 host windows, kept for an fp32 re-run
    result: torch.Tensor  # on the output device (or its pinned staging buffer) once `ready`
    finite: torch.Tensor | None = None  # device-side flag for low-precision results
    event: object | None = None  # CUDA event marking the end of the copy
    keep: list = field(default_factory=list)  # tensors that must live until the copy is done

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()

    def overflowed(self) -> bool:
        return self.finite is not None and not bool(self.finite)


class Transfers:
    def __init__(self, device: torch.device, output_device: torch.device):
        self.device = device
        self.output_device = output_device
        self.cuda = device.type == "cuda" and torch.cuda.is_available()
        self.deferred = self.cuda or DEFER_ON_CPU
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self._staging: dict[tuple, list[torch.Tensor]] = {}

    def upload(self, windows: torch.Tensor, dtype: torch.dtype, layout: torch.memory_format) -> torch.Tensor:
        """Host windows -> device tensor in `dtype` and `layout` (asynchronous on CUDA)."""
        if self.cuda and windows.device.type == "cpu":
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        else:
            windows = windows.to(self.device)
        return windows.to(dtype).contiguous(memory_format=layout)

    def download(self, group: list, windows: torch.Tensor, result: torch.Tensor, check_finite: bool) -> Pending:
        """Starts moving `result` to the output device as float32 clamped to [0, 1]."""
        finite = torch.isfinite(result).all() if check_finite else None
        if not self.cuda or self.output_device.type == "cuda":
            moved = result.to(device=self.output_device, dtype=torch.float32).clamp_(0, 1)
            return Pending(group, windows, moved, finite)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_stream(compute)
            clamped = result.float().clamp_(0, 1)
            staging = self._buffer(tuple(clamped.shape))
            staging.copy_(clamped, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        result.record_stream(self.copy_stream)
        return Pending(group, windows, staging, finite, event, keep=[clamped])

    def _buffer(self, shape: tuple) -> torch.Tensor:
        """Two pinned buffers per shape, used in turn (one being filled while one is pasted)."""
        pool = self._staging.setdefault(shape, [])
        if len(pool) < 2:
            pool.append(torch.empty(shape, dtype=torch.float32, pin_memory=True))
            return pool[-1]
        pool.append(pool.pop(0))
        return pool[-1]
