"""Everything the engine knows about devices, asked of the host.

Tilewise runs inside other programs (ComfyUI, A1111/Forge), and those programs own the devices:
which GPU to use, how much of its memory is free for us, which low precisions run well on it
(ComfyUI knows fp16 is broken on GTX 16xx cards), what an out-of-memory error looks like
(DirectML raises its own), how to give cached memory back. A `DevicePolicy` is that knowledge;
the engine asks it and never guesses.

- `DevicePolicy` itself answers with plain, documented PyTorch APIs (`torch.accelerator` for
  CUDA, MPS and XPU; `torch.cuda`/`torch.mps`/`torch.xpu` where a question has no generic
  form) and psutil for the CPU: the command line uses it, and it is the fallback for anything
  a host does not say. Nothing Linux-only (no procfs, no glibc calls).
- A host subclasses it and answers from its own API (`nodes/host.py`: ComfyUI's
  `comfy.model_management`; `scripts/tilewise_upscaler.py`: A1111's `modules.devices`), and
  passes it in `UpscaleOptions.devices`.
- `backend(device)` names what a device *is* for planning ("cpu", "cuda", "mps", "xpu",
  "privateuseone" for DirectML). The engine branches on it, never on `device.type`, so tests
  can simulate a host's MPS, XPU or DirectML policy on CPU tensors.

The policy in force is a context variable (`using`, `active`): it is set by the engine's entry
points for the length of one call, per thread, and never process-wide.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import platform
from collections.abc import Iterator

import psutil
import torch

from ..errors import TilewiseError

log = logging.getLogger("tilewise")

BACKENDS = ("cpu", "cuda", "mps", "xpu", "privateuseone")
#: Fragments of out-of-memory messages raised as plain RuntimeError (or torch.AcceleratorError):
#: CPU allocation failures, MPS, XPU, and DirectML's "not enough GPU video memory".
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough gpu video memory", "failed to allocate memory")
#: torch.OutOfMemoryError appeared in PyTorch 2.5; older hosts (A1111 pins 2.1) have only CUDA's.
OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    {
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    }
)


class DeviceError(TilewiseError, ValueError):
    """A device was asked for that this machine does not have."""


class DevicePolicy:
    """What a device is, and what it can do now. Every method has a plain-PyTorch answer;
    hosts override the ones their own API answers better."""

    name = "torch"
    #: Exception types the host raises for out-of-memory, besides the ones recognised here.
    oom_errors: tuple[type[BaseException], ...] = ()

    # -- which device --------------------------------------------------------------------
    def default_device(self) -> torch.device:
        """What `auto` means: the current accelerator (CUDA, MPS, XPU), else the CPU."""
        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None and accelerator.is_available():
            kind = accelerator.current_accelerator()
            return torch.device(kind.type, accelerator.current_device_index())
        return torch.device("cpu")

    def resolve(self, device: str | torch.device | None) -> torch.device:
        """`auto`/None -> `default_device()`; else the named device, which must exist here."""
        if device is None or str(device) == "auto":
            return self.default_device()
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise DeviceError(f"'{device}' is not a device name; use auto, cpu, cuda, cuda:N, mps or xpu") from error
        if not self.exists(resolved):
            found = ", ".join(str(d) for d in self.devices()) or "cpu"
            raise DeviceError(
                f"there is no {resolved} device on this machine (found: {found}); use --device auto or cpu"
            )
        return resolved

    def exists(self, device: torch.device) -> bool:
        if device.type in ("cpu", "meta"):
            return True
        module = getattr(torch, device.type, None)
        if module is None or not hasattr(module, "is_available"):
            return True  # a backend PyTorch cannot be asked about (DirectML): the host knows
        try:
            available = bool(module.is_available())
            count = module.device_count() if available and hasattr(module, "device_count") else 1
        except Exception:  # a backend that cannot even answer
            return False
        return available and (device.index is None or device.index < count)

    def devices(self) -> list[torch.device]:
        """Every device this policy can run on: the CPU, then each accelerator."""
        found = [torch.device("cpu")]
        for kind in ("cuda", "mps", "xpu"):
            module = getattr(torch, kind, None)
            with contextlib.suppress(Exception):
                if module is not None and module.is_available():
                    count = module.device_count() if hasattr(module, "device_count") else 1
                    found += [torch.device(kind, i) for i in range(count)]
        return found

    def backend(self, device: torch.device) -> str:
        """What the device is, for planning decisions (see the module docstring)."""
        return device.type

    def is_cpu(self, device: torch.device) -> bool:
        return self.backend(device) == "cpu"

    def same_device(self, a: torch.device, b: torch.device) -> bool:
        """`cuda` and `cuda:0` are one device when 0 is the current one (for every backend)."""
        if a.type != b.type:
            return False
        if a.index == b.index:
            return True
        current = _current_index(a.type)
        return (current if a.index is None else a.index) == (current if b.index is None else b.index)

    # -- memory --------------------------------------------------------------------------
    def free_memory(self, device: torch.device) -> int | None:
        """Bytes free for us on `device` now, or None when the backend cannot tell."""
        kind = self.backend(device)
        try:
            if kind == "cpu":
                return int(psutil.virtual_memory().available)
            if kind == "mps":  # unified memory: what the system has available, as ComfyUI counts it
                return int(psutil.virtual_memory().available)
            if kind == "cuda":
                return int(torch.cuda.mem_get_info(device)[0])
            if kind == "xpu" and hasattr(torch.xpu, "mem_get_info"):
                return int(torch.xpu.mem_get_info(device)[0])
            accelerator = getattr(torch, "accelerator", None)
            if accelerator is not None and hasattr(accelerator, "get_memory_info") and kind == _accelerator_type():
                return int(accelerator.get_memory_info(device)[0])
        except Exception:  # noqa: BLE001 - a backend that cannot answer means "unknown"
            return None
        return None

    def peak_memory(self, device: torch.device) -> "PeakMeter | None":
        """A meter of the allocator's peak on `device` (CUDA, XPU), None where the backend keeps
        no such statistics (MPS, DirectML, the CPU)."""
        module = getattr(torch, self.backend(device), None)
        with contextlib.suppress(Exception):
            if (
                self.backend(device) in ("cuda", "xpu")
                and module is not None
                and hasattr(module, "max_memory_allocated")
                and module.is_available()
            ):
                return PeakMeter(module, device, self)
        return None

    def empty_cache(self, device: torch.device) -> None:
        """Gives the device's cached, unused memory back (after an out-of-memory error, a run)."""
        kind = self.backend(device)
        module = getattr(torch, kind, None)
        if kind != "cpu" and module is not None and hasattr(module, "empty_cache"):
            with contextlib.suppress(Exception):
                module.empty_cache()

    def synchronize(self, device: torch.device) -> None:
        kind = self.backend(device)
        module = getattr(torch, kind, None)
        if kind != "cpu" and module is not None and hasattr(module, "synchronize"):
            module.synchronize()

    def is_out_of_memory(self, error: BaseException) -> bool:
        """Whether `error` means the device (or the CPU) ran out of memory."""
        if isinstance(error, (MemoryError, *OOM_TYPES, *self.oom_errors)):
            return True
        return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in OOM_MESSAGES)

    # -- precision -----------------------------------------------------------------------
    def usable_precisions(self, device: torch.device) -> tuple[torch.dtype, ...]:
        """The dtypes that run natively on `device` (fp32 always)."""
        kind = self.backend(device)
        found = [torch.float32]
        if kind == "cpu":
            if cpu_has_native_bf16():
                found.append(torch.bfloat16)
            return tuple(found)
        if self.fp16(device):
            found.append(torch.float16)
        if self.bf16(device):
            found.append(torch.bfloat16)
        return tuple(found)

    def fp16(self, device: torch.device) -> bool:
        """Whether `auto` may pick fp16 on `device` (never on the CPU)."""
        kind = self.backend(device)
        if kind == "cuda":
            with contextlib.suppress(Exception):
                major, _ = torch.cuda.get_device_capability(device)
                name = torch.cuda.get_device_name(device)
                # Turing GTX 16xx cards give NaNs or black images in fp16 (a known driver/hardware issue)
                return major >= 7 and "GTX 16" not in name
            return False
        return kind in ("mps", "xpu")

    def bf16(self, device: torch.device) -> bool:
        """Whether `auto` may pick bf16 on `device` where a model runs only that (never on the CPU,
        where it moves outputs by more than one 8-bit step; `--precision bf16` opts in)."""
        kind = self.backend(device)
        with contextlib.suppress(Exception):
            if kind == "cuda":
                try:
                    return bool(torch.cuda.is_bf16_supported(including_emulation=False))
                except TypeError:  # PyTorch before 2.3 has no emulation to exclude
                    return bool(torch.cuda.is_bf16_supported())
            if kind == "xpu":
                return bool(torch.xpu.is_bf16_supported())
            if kind == "mps":
                return bool(torch.backends.mps.is_macos_or_newer(14, 0))
        return False


class PeakMeter:
    """The allocator's peak growth over a block: `with meter: forward(x)`, then `meter.bytes`,
    which also counts device memory lost outside the allocator (library workspaces,
    onnxruntime's arena) where the backend reports free memory."""

    def __init__(self, module, device: torch.device, policy: DevicePolicy):
        self.module, self.device, self.policy = module, device, policy
        self.bytes = 0

    def __enter__(self) -> "PeakMeter":
        self.policy.synchronize(self.device)
        self.module.reset_peak_memory_stats(self.device)
        self._allocated = self.module.memory_allocated(self.device)
        self._reserved = self.module.memory_reserved(self.device)
        self._free = self.policy.free_memory(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.policy.synchronize(self.device)
        inside = self.module.max_memory_allocated(self.device) - self._allocated
        free = self.policy.free_memory(self.device)
        outside = 0
        if self._free is not None and free is not None:
            outside = (self._free - free) - (self.module.memory_reserved(self.device) - self._reserved)
        self.bytes = inside + max(0, outside)


def _accelerator_type() -> str | None:
    accelerator = getattr(torch, "accelerator", None)
    with contextlib.suppress(Exception):
        if accelerator is not None and accelerator.is_available():
            return accelerator.current_accelerator().type
    return None


def _current_index(kind: str) -> int:
    module = getattr(torch, kind, None)
    with contextlib.suppress(Exception):
        if module is not None and module.is_available() and hasattr(module, "current_device"):
            return int(module.current_device())
    return 0


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX); None when PyTorch
    cannot tell (other CPUs), so that no one is warned about what may not apply to them."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is None or platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return None
    with contextlib.suppress(Exception):
        return bool(probe() or (amx is not None and amx()))
    return None


def cpu_signature() -> str:
    """What decides CPU kernels' speed and memory here: machine, PyTorch's SIMD level, native bf16."""
    with contextlib.suppress(Exception):
        capability = torch.backends.cpu.get_cpu_capability()
        return f"{platform.machine()}|{capability}|bf16={cpu_has_native_bf16()}"
    return platform.machine()


def resident_bytes() -> int:
    """This process's resident memory (psutil: Linux, macOS, Windows)."""
    return int(psutil.Process().memory_info().rss)


DEFAULT = DevicePolicy()
_active: contextvars.ContextVar[DevicePolicy] = contextvars.ContextVar("tilewise_devices", default=DEFAULT)


def active() -> DevicePolicy:
    """The policy of the engine call in progress in this thread (the plain one outside calls)."""
    return _active.get()


@contextlib.contextmanager
def using(policy: DevicePolicy | None) -> Iterator[DevicePolicy]:
    """Makes `policy` the active one for the block (None keeps the current one)."""
    if policy is None:
        yield active()
        return
    token = _active.set(policy)
    try:
        yield policy
    finally:
        _active.reset(token)
