"""`tilewise doctor`: what this machine has, and whether the engine computes correctly on it.

The first thing to run (and attach to a bug report) when something is wrong on a user's
machine, and the first thing a maintainer with a GPU runs. It reports versions, the devices
the device policy finds with their usable precisions and free memory, then checks, on the
chosen device with a built-in model (no download):

- tiled equals untiled (crop merge is exact for a convolutional model);
- each usable low precision stays close to fp32;
- a simulated out-of-memory error is recovered from (smaller tiles) with the clean result;
- the device fast path (pinned copies on a side stream, CUDA only) equals the plain path;
- a tiled run's speed against one plain untiled forward of the same model.

Every check is computed here, in the engine, so it means the same in every host.
"""

from __future__ import annotations

import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata

import torch
from spandrel import ImageModelDescriptor

from .compute import devices, transfer
from .compute.precision import model_on
from .image.pipeline import UpscaleOptions, upscale
from .model.loading import load_model
from .plan.planner import TileSettings, plan_run

MODEL = "builtin:paragonsr2-realtime-2x"
SIZE = (96, 128)  # (height, width) of the check image
TILE = 48
#: Tiled against untiled, fp32: float rounding only.
EXACT = 1e-4
#: A low precision against fp32: mean absolute difference in [0, 1] units (two 8-bit steps).
LOW_PRECISION_MEAN = 2 / 255
#: Tilewise's auto run may take at most this many times one plain untiled forward (validation,
#: copies and layout cost something on an image this small; a pathological slowdown far more).
SLOWEST = 3.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    value: float | None = None


@dataclass
class Report:
    versions: dict[str, str]
    devices: list[dict]
    device: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__}
    for name in ("spandrel", "tilewise", "onnxruntime", "av"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["host"] = _host()
    return found


def _host() -> str:
    if "comfy.model_management" in sys.modules:
        return "ComfyUI"
    if "modules.shared" in sys.modules:
        return "Stable Diffusion WebUI"
    return "none (command line)"


def device_table(policy: devices.DevicePolicy) -> list[dict]:
    table = []
    for device in policy.devices():
        free = policy.free_memory(device)
        entry = {
            "device": str(device),
            "name": _device_name(device),
            "precisions": [_short(dtype) for dtype in policy.usable_precisions(device)],
            "free_memory_gib": None if free is None else round(free / 2**30, 2),
        }
        table.append(entry)
    return table


def _device_name(device: torch.device) -> str:
    if device.type == "cpu":
        threads, capability = torch.get_num_threads(), torch.backends.cpu.get_cpu_capability()
        return f"{platform.processor() or platform.machine()} ({threads} threads, {capability})"
    try:
        module = getattr(torch, device.type)
        return module.get_device_name(device) if hasattr(module, "get_device_name") else device.type
    except Exception:  # noqa: BLE001 - a name is only decoration
        return device.type


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def check_image(channels: int = 3) -> torch.Tensor:
    """(1, C, H, W) in [0, 1] with edges, gradients and texture (seeded, so every run sees the same)."""
    generator = torch.Generator().manual_seed(0)
    height, width = SIZE
    y = torch.linspace(0, 1, height)[:, None]
    x = torch.linspace(0, 1, width)[None, :]
    base = torch.stack([x * y, 0.5 + 0.5 * torch.sin(12 * x + 7 * y), (x > 0.4).float() * 0.8 + 0.1 * y])
    noise = torch.rand(channels, height, width, generator=generator) * 0.15
    return (base[:channels] * 0.85 + noise).clamp(0, 1)[None]


def run(
    device: str = "auto", policy: devices.DevicePolicy | None = None, descriptor: ImageModelDescriptor | None = None
) -> Report:
    """Versions, devices and the self-check on `device` (see the module docstring)."""
    policy = policy or devices.DevicePolicy()
    with devices.using(policy):
        target = policy.resolve(device)
        report = Report(versions(), device_table(policy), str(target))
        descriptor = descriptor or load_model(MODEL, cache=None)
        image = check_image(descriptor.input_channels)
        base = UpscaleOptions(tiles=TileSettings(tile=-1), precision="fp32", device=str(target), devices=policy)
        untiled = upscale(descriptor, image, base)
        report.checks.append(_tiled(descriptor, image, base, untiled))
        report.checks.extend(_precisions(descriptor, image, base, untiled, policy, target))
        report.checks.append(_out_of_memory(descriptor, image, base, untiled, target))
        report.checks.append(_fast_path(descriptor, image, base, policy, target))
        report.checks.append(_speed(descriptor, image, base, policy, target))
    return report


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _tiled(descriptor, image, base: UpscaleOptions, untiled: torch.Tensor) -> Check:
    tiled = upscale(descriptor, image, _with_tile(base, TILE))
    error = _max_error(tiled, untiled)
    return Check(
        "tiled equals untiled", error <= EXACT, f"max error {error:.2e} with {TILE}-px tiles (limit {EXACT:.0e})", error
    )


def _with_tile(options: UpscaleOptions, tile: int, pad: int | None = None) -> UpscaleOptions:
    return replace(options, tiles=replace(options.tiles, tile=tile, pad=pad))


def _precisions(descriptor, image, base: UpscaleOptions, untiled, policy, target) -> list[Check]:
    checks = []
    for dtype in policy.usable_precisions(target):
        name = _short(dtype)
        if dtype == torch.float32:
            continue
        if (
            dtype == torch.float16
            and not descriptor.supports_half
            or dtype == torch.bfloat16
            and not descriptor.supports_bfloat16
        ):
            checks.append(
                Check(
                    f"{name} against fp32",
                    True,
                    f"not applicable: {descriptor.architecture.name} does not support {name}",
                )
            )
            continue
        out = upscale(descriptor, image, replace(base, precision=name))
        finite = bool(torch.isfinite(out).all())
        mean = float((out - untiled).abs().mean())
        worst = _max_error(out, untiled)
        checks.append(
            Check(
                f"{name} against fp32",
                finite and mean <= LOW_PRECISION_MEAN,
                f"mean error {mean * 255:.2f}/255, max {worst * 255:.1f}/255 (limit: mean "
                f"{LOW_PRECISION_MEAN * 255:.0f}/255)",
                mean,
            )
        )
    return checks


class _RunsOutOfMemoryAbove(torch.nn.Module):
    """The model, raising the device's out-of-memory error for inputs above `pixels`."""

    def __init__(self, inner: torch.nn.Module, pixels: int):
        super().__init__()
        self.inner, self.pixels, self.raised = inner, pixels, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] > self.pixels:
            self.raised += 1
            raise devices.OOM_TYPES[0]("simulated out of memory (tilewise doctor)")
        return self.inner(x)


def _out_of_memory(descriptor: ImageModelDescriptor, image, base: UpscaleOptions, untiled, target) -> Check:
    height, width = image.shape[-2:]
    pad = plan_run(descriptor, height, width, TileSettings(tile=TILE), target).pad
    limit = (TILE + 2 * pad) ** 2
    failing = _RunsOutOfMemoryAbove(descriptor.model, limit)
    copy = ImageModelDescriptor(
        failing, failing.state_dict(), descriptor.architecture, descriptor.purpose, list(descriptor.tags),
        descriptor.supports_half, descriptor.supports_bfloat16, descriptor.scale, descriptor.input_channels,
        descriptor.output_channels, descriptor.size_requirements, descriptor.tiling,
    )  # fmt: skip
    logger = logging.getLogger("tilewise")
    level, logger.level = logger.level, logging.ERROR  # the simulated error's "retrying" line is noise here
    try:
        out = upscale(copy, image, _with_tile(base, -1, pad))
    except Exception as error:  # noqa: BLE001 - the check failed; say how
        return Check("out-of-memory recovery", False, f"the run failed: {type(error).__name__}: {error}")
    finally:
        logger.setLevel(level)
    error = _max_error(out, untiled)
    passed = failing.raised > 0 and error <= EXACT
    return Check(
        "out-of-memory recovery",
        passed,
        f"{failing.raised} simulated out-of-memory error(s), then smaller tiles; max error {error:.2e} against a "
        f"clean run",
        error,
    )


def _fast_path(descriptor, image, base: UpscaleOptions, policy, target) -> Check:
    if policy.backend(target) != "cuda":
        return Check(
            "device fast path equals plain path", True, f"not applicable on {policy.backend(target)} (CUDA only)"
        )
    options = _with_tile(base, TILE)
    transfer.reset_fast_path()
    fast = upscale(descriptor, image, options)
    failure = transfer.fast_path_failure()
    previous, transfer.FORCE_PLAIN = transfer.FORCE_PLAIN, True
    try:
        plain = upscale(descriptor, image, options)
    finally:
        transfer.FORCE_PLAIN = previous
    error = _max_error(fast, plain)
    if failure is not None:
        return Check(
            "device fast path equals plain path", False, f"the fast path failed and was switched off: {failure}"
        )
    return Check("device fast path equals plain path", error == 0.0, f"max error {error:.2e} (must be 0)", error)


def _speed(descriptor: ImageModelDescriptor, image, base: UpscaleOptions, policy, target) -> Check:
    options = _with_tile(base, 0)  # auto, as users run it
    model = model_on(descriptor, target, torch.float32)
    x = image.to(target)

    def plain() -> None:
        with torch.inference_mode():
            model(x)
        policy.synchronize(target)

    def ours() -> None:
        upscale(descriptor, image, options)
        policy.synchronize(target)

    plain()  # warm-up: first-call costs are not what this measures
    ours()
    plain_time, our_time = _best_of_interleaved(plain, ours)
    ratio = our_time / plain_time if plain_time > 0 else math.inf
    return Check(
        "speed against one plain untiled forward",
        ratio <= SLOWEST,
        f"{our_time * 1000:.0f} ms with auto tiles against {plain_time * 1000:.0f} ms for one plain forward: "
        f"{ratio:.2f}x (limit {SLOWEST:.0f}x)",
        ratio,
    )


def _best_of_interleaved(first, second, repeats: int = 5) -> tuple[float, float]:
    """Each function's best time over `repeats` alternating runs (load from other processes then
    falls on both alike)."""
    best = [math.inf, math.inf]
    for _ in range(repeats):
        for index, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            best[index] = min(best[index], time.perf_counter() - start)
    return best[0], best[1]
