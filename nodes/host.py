"""What the Tilewise nodes need from ComfyUI itself: devices, memory, precision, progress,
interrupts, the model-folder list and the model patcher of newer hosts.

Only this package imports ComfyUI; the numbers all come from the engine.
"""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterator

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from spandrel import ImageModelDescriptor

from ..engine import DevicePolicy, builtin_names, release_variants

log = logging.getLogger("tilewise")

MODEL_FOLDER = "upscale_models"


def model_names() -> list[str]:
    """The loader's choices: files under ComfyUI's upscale_models folders (subfolders and
    extra_model_paths.yaml included), then the built-in models."""
    return list(folder_paths.get_filename_list(MODEL_FOLDER)) + builtin_names()


def model_path(name: str) -> str:
    return folder_paths.get_full_path_or_raise(MODEL_FOLDER, name)


def model_file_stamp(name: str) -> str:
    """Changes when the named file changes on disk, so ComfyUI reloads an edited model."""
    path = folder_paths.get_full_path(MODEL_FOLDER, name)
    if path is None:
        return name
    with contextlib.suppress(OSError):
        stat = os.stat(path)
        return f"{name}:{stat.st_mtime_ns}:{stat.st_size}"
    return name


def attach_patcher(descriptor: ImageModelDescriptor) -> None:
    """Gives the descriptor the `.patcher` that newer ComfyUI's core upscale node reads.

    ComfyUI from 2026 wraps every loaded upscale model in `comfy.model_patcher.CoreModelPatcher`
    and its "Upscale Image (using Model)" node manages memory through it; 0.3.x has no such class
    and needs nothing. The class is looked up now, not at import: ComfyUI's main.py may rebind it.
    """
    if getattr(descriptor, "patcher", None) is not None:
        return
    try:
        import comfy.model_patcher as model_patcher
    except ImportError:
        return
    factory = getattr(model_patcher, "CoreModelPatcher", None)
    if factory is None:
        return
    try:
        # ComfyUI's own upscale-model loader sets this attribute on the descriptor too
        descriptor.patcher = factory(  # pyright: ignore[reportAttributeAccessIssue]
            descriptor.model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
        )
    except Exception as error:  # the pack's own nodes never need it: keep the model usable
        log.warning(
            "Tilewise: could not attach a ComfyUI model patcher (%s); the core upscale node may not accept this model.",
            error,
        )


class ComfyDevices(DevicePolicy):
    """ComfyUI's own answers about devices (`comfy.model_management`), for the engine.

    `auto` is ComfyUI's device (its --cpu, --directml, MPS, XPU ... choice); free memory is
    ComfyUI's figure (which counts memory its allocator holds but does not use); fp16/bf16 under
    `auto` follow ComfyUI's `should_use_fp16`/`should_use_bf16` (which know, e.g., GTX 16xx);
    its OOM exception (and `is_oom` where the host has it) counts as out of memory; cache
    emptying is ComfyUI's `soft_empty_cache`. Whatever ComfyUI does not answer falls back to
    plain PyTorch (the base class). Functions are looked up at call time: ComfyUI's main.py and
    its tests may rebind them."""

    name = "ComfyUI"

    def __init__(self, management=None):
        self.mm = management or mm
        oom = getattr(self.mm, "OOM_EXCEPTION", None)
        # ComfyUI sets OOM_EXCEPTION to Exception where torch has no OOM type: that is not a filter
        self.oom_errors = (
            (oom,) if isinstance(oom, type) and issubclass(oom, BaseException) and oom is not Exception else ()
        )

    def default_device(self) -> torch.device:
        return self.mm.get_torch_device()

    def free_memory(self, device: torch.device) -> int | None:
        try:
            return int(self.mm.get_free_memory(device))
        except Exception:  # noqa: BLE001 - the host cannot tell: ask PyTorch
            return super().free_memory(device)

    def fp16(self, device: torch.device) -> bool:
        return not self.is_cpu(device) and bool(self.mm.should_use_fp16(device=device))

    def bf16(self, device: torch.device) -> bool:
        return not self.is_cpu(device) and bool(self.mm.should_use_bf16(device=device))

    def is_out_of_memory(self, error: BaseException) -> bool:
        is_oom = getattr(self.mm, "is_oom", None)
        if callable(is_oom):
            with contextlib.suppress(Exception):
                if is_oom(error):
                    return True
        return super().is_out_of_memory(error)

    def empty_cache(self, device: torch.device) -> None:
        if not self.is_cpu(device):
            self.mm.soft_empty_cache()


def devices() -> ComfyDevices:
    """The device policy the nodes pass to the engine."""
    return ComfyDevices()


def processing_device(choice: str) -> torch.device:
    """`auto`: ComfyUI's device (the CPU under --cpu); `cpu`: the CPU."""
    return torch.device("cpu") if choice == "cpu" else mm.get_torch_device()


def result_device(choice: str, device: torch.device) -> torch.device:
    """`auto`: ComfyUI's intermediate device (the CPU unless --gpu-only); `cpu`; `processing`:
    stay on the model's device."""
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "processing":
        return device
    return mm.intermediate_device()


def make_room(bytes_needed: int, device: torch.device) -> None:
    """Asks ComfyUI to unload other models until `bytes_needed` are free on `device`."""
    mm.free_memory(bytes_needed, device)


class TileProgress:
    """The engine's (done, total) tile callback as ComfyUI's progress bar.

    The bar is made at the first tile, when the engine knows the total (tiles x images x passes).
    ComfyUI's progress hook also checks for an interrupt on every update."""

    def __init__(self):
        self.bar: comfy.utils.ProgressBar | None = None

    def __call__(self, done: int, total: int) -> None:
        bar = self.bar
        if bar is None:
            bar = self.bar = comfy.utils.ProgressBar(total)
        bar.update_absolute(done, total)


def interrupted() -> bool:
    """The engine's cancel callback: has the user pressed Cancel (POST /interrupt)?"""
    return mm.processing_interrupted()


def raise_interrupt() -> None:
    """Turns a cancelled run into ComfyUI's own interrupt exception (shown as 'interrupted')."""
    mm.throw_exception_if_processing_interrupted()


@contextlib.contextmanager
def run_on(descriptor: ImageModelDescriptor, device: torch.device) -> Iterator[None]:
    """Afterwards, on a GPU, drops the per-device copies the engine made and returns cached
    memory: ComfyUI budgets that memory for its own models. Copies in system memory are kept with
    the model (freed with it): rebuilding them on every call cost SPAN bf16 at 256² 0.1 of its
    0.26 s, against 0.15 s for the model's forward."""
    try:
        yield
    finally:
        if device.type != "cpu":
            release_variants(descriptor)
            mm.soft_empty_cache()


def callbacks() -> tuple[Callable[[int, int], None], Callable[[], bool]]:
    return TileProgress(), interrupted
