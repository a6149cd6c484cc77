"""Model loading: file -> canonical state dict -> detected architecture -> spandrel descriptor.

Detection runs over a *private* copy of spandrel's registry extended with this package's native
architectures (and `spandrel_extra_arches` when installed), so other ComfyUI node packs that
use spandrel's global registry see no change.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from spandrel import MAIN_REGISTRY, ArchRegistry, ImageModelDescriptor, ModelDescriptor, StateDict

from ...archs import (
    HintNeededError,
    LoadHints,
    NativeArchitecture,
    RecognisedButUnsupportedError,
    magic_kernel,
    native_arch_supports,
)
from ..errors import HintRequiredError, ModelFileError, TilewiseError, UnknownArchitectureError, first_line
from .files import ONNX_EXTENSIONS, read_state_dict, recognise_non_upscaler, top_level_keys

log = logging.getLogger("tilewise")

BUILTIN_SCHEME = "builtin:"
_MKS_NAME = re.compile(r"^magic-kernel-sharp-([1-9][0-9]?)x$")
#: Weights shipped inside the package (`models/`), by built-in name; see tools/train_default.py.
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "models"
BUNDLED = {
    "paragonsr2-realtime-2x": "tilewise_paragonsr2_realtime_x2.safetensors",
    "paragonsr2-realtime-4x": "tilewise_paragonsr2_realtime_x4.safetensors",
}

#: Loaded models kept for reuse; a few, since each may hold hundreds of MB.
CACHE_SIZE = 4

_registry_lock = threading.Lock()
_registry: ArchRegistry | None = None


def registry() -> ArchRegistry:
    """spandrel's architectures + ours (+ spandrel_extra_arches), in a private registry."""
    global _registry
    with _registry_lock:
        if _registry is None:
            reg = MAIN_REGISTRY.copy()
            _add_new(reg, native_arch_supports())
            try:
                from spandrel_extra_arches import EXTRA_REGISTRY  # type: ignore[import-not-found]

                _add_new(reg, list(EXTRA_REGISTRY))
            except ImportError:
                pass
            _registry = reg
        return _registry


def _add_new(reg: ArchRegistry, supports) -> None:
    """Adds the architectures `reg` lacks. (Not `add(ignore_duplicates=True)`: spandrel 0.3.4,
    which A1111 1.10 and Forge pin, has no such argument.)"""
    reg.add(*[s for s in supports if s.architecture.id not in reg])


def builtin_names() -> list[str]:
    """Model names that need no model file from the user (`builtin:...`)."""
    bundled = [f"{BUILTIN_SCHEME}{name}" for name, file in BUNDLED.items() if (BUNDLED_DIR / file).is_file()]
    return bundled + [f"{BUILTIN_SCHEME}magic-kernel-sharp-{s}x" for s in (2, 3, 4)]


def is_builtin(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(BUILTIN_SCHEME)


def _load_builtin(name: str, hints: LoadHints) -> ImageModelDescriptor:
    key = name[len(BUILTIN_SCHEME) :]
    match = _MKS_NAME.match(key)
    if match:
        return magic_kernel.builtin(int(match.group(1)), alpha=hints.upsampler_alpha or 0.0)
    if key in BUNDLED and (BUNDLED_DIR / BUNDLED[key]).is_file():
        path = BUNDLED_DIR / BUNDLED[key]
        return describe_state_dict(read_state_dict(path), path, hints)
    raise ModelFileError(name, "is not a built-in model.", f"Built-in models: {', '.join(builtin_names())}.")


def describe_state_dict(
    state_dict: StateDict, path: str | Path = "<state dict>", hints: LoadHints | None = None
) -> ImageModelDescriptor:
    """Detects the architecture of a canonical state dict and builds its descriptor (on CPU, fp32)."""
    hints = hints or LoadHints(file_name=Path(path).name)
    support = next((s for s in registry().architectures("detection") if _detects(s, state_dict)), None)
    if support is None:
        raise UnknownArchitectureError(
            path,
            _unknown_reason(state_dict),
            "If it is an upscaler, its architecture is not supported yet; check for a newer Tilewise or "
            "spandrel_extra_arches.",
        )
    arch = support.architecture
    try:
        with _BuildBudget(path, arch.name, state_dict):
            if isinstance(arch, NativeArchitecture):
                descriptor: ModelDescriptor = arch.load(state_dict, hints)
            else:
                descriptor = arch.load(state_dict)
    except HintNeededError as error:
        raise HintRequiredError(path, str(error)) from None
    except RecognisedButUnsupportedError as error:
        raise UnknownArchitectureError(path, str(error)) from None
    except TilewiseError:
        raise
    except Exception as error:  # a detector matched but the weights do not fit: name both
        raise ModelFileError(
            path,
            f"looks like {arch.name} but its weights do not fit that architecture ({first_line(error)}).",
            "The file may be damaged or a variant Tilewise does not know; report it with the model's download page.",
        ) from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UnknownArchitectureError(
            path, f"is a {arch.name} {descriptor.purpose.lower()} model, not an upscaler or restoration model."
        )
    descriptor.model.eval()
    for parameter in descriptor.model.parameters():
        parameter.requires_grad_(False)
    return descriptor


#: Memory a model may allocate while it is built, beyond `BUILD_BUDGET_FACTOR` times its weights.
BUILD_BUDGET_SLACK = 256 << 20
BUILD_BUDGET_FACTOR = 4


class _BuildBudget(torch.overrides.TorchFunctionMode):
    """Stops building a model that allocates far more than the file's weights.

    Architectures read hyper-parameters from key names (spandrel's Compact takes its depth from
    the highest `body.N`), so a small file can describe a huge model: a 7.5 KB Compact-shaped
    file whose highest index is 74002 makes 37 000 convolutions, 6 GB, before strict loading
    would notice the missing weights. Every tensor a torch function returns while the model is
    built and loaded is counted (in-place results, which return their input, are not), and
    building stops with a clear error past `BUILD_BUDGET_FACTOR` x the weights' bytes +
    `BUILD_BUDGET_SLACK`. The mode is per thread (torch function modes are thread-local), so
    other threads of the host are not affected.
    """

    def __init__(self, path, name: str, state_dict: StateDict):
        super().__init__()
        weights = sum(t.numel() * t.element_size() for t in state_dict.values() if isinstance(t, torch.Tensor))
        self.path, self.name = path, name
        self.budget, self.weights, self.used = BUILD_BUDGET_FACTOR * weights + BUILD_BUDGET_SLACK, weights, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor) and not any(value is a for a in args) and value.device.type != "meta":
                self.used += value.numel() * value.element_size()
        if self.used > self.budget:
            raise ModelFileError(
                self.path,
                f"describes a {self.name} model that needs more than {self.budget >> 20} MB to build while its weights "
                f"hold {self.weights >> 10} KB; it was refused as malformed or hostile.",
                "Download it again from its original page.",
            )
        return result


def _detects(support: Any, state_dict: StateDict) -> bool:
    try:
        return bool(support.detect(state_dict))
    except Exception:  # a buggy detector must not hide the others
        return False


def _unknown_reason(state_dict: StateDict) -> str:
    heads = ", ".join(top_level_keys(state_dict))
    kind = recognise_non_upscaler(state_dict.keys())
    if kind:
        return f"looks like {kind} (top-level keys: {heads})."
    return f"has an unknown architecture (top-level keys: {heads})."


@dataclass(frozen=True)
class _CacheKey:
    source: str
    mtime_ns: int
    size: int
    device: str
    dtype: str
    hints: LoadHints


class ModelCache:
    """Least-recently-used cache of loaded models keyed by (file, mtime, size, device, dtype, hints).

    A changed file (new mtime or size) is a new key, so editing a model in place reloads it.
    """

    def __init__(self, capacity: int = CACHE_SIZE):
        self.capacity = capacity
        self._items: OrderedDict[_CacheKey, ImageModelDescriptor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: _CacheKey) -> ImageModelDescriptor | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: _CacheKey, value: ImageModelDescriptor) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


MODEL_CACHE = ModelCache()


def load_model(
    source: str | Path,
    *,
    hints: LoadHints | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache: ModelCache | None = MODEL_CACHE,
) -> ImageModelDescriptor:
    """Loads a model file (or a `builtin:` name) and returns its spandrel descriptor in eval mode.

    `.onnx` files run through onnxruntime (`onnx_backend`); everything else is read as weights.

    `hints` supplies what a format may not store (scale, ParagonSR2 `upsampler_alpha`); the file
    name is always used as a scale hint too. Raises `ModelFileError` and subclasses with a message
    naming the file and the fix. The result is shared through `cache`: treat it as read-only.
    """
    hints = hints or LoadHints()
    device = torch.device(device)
    if is_builtin(source):
        key = _CacheKey(str(source), 0, 0, str(device), str(dtype), hints)
        build = lambda: _load_builtin(str(source), hints)  # noqa: E731
    else:
        path = Path(source).expanduser()
        if hints.file_name is None:
            hints = replace(hints, file_name=path.name)
        try:
            stat = path.resolve().stat()
            key = _CacheKey(str(path.resolve()), stat.st_mtime_ns, stat.st_size, str(device), str(dtype), hints)
        except OSError:
            key = None  # the reader below raises the clear error
        if path.suffix.lower() in ONNX_EXTENSIONS:
            build = lambda: _load_onnx(path, hints)  # noqa: E731
        else:
            build = lambda: describe_state_dict(read_state_dict(path), path, hints)  # noqa: E731
    if cache is not None and key is not None:
        cached = cache.get(key)
        if cached is not None:
            return cached
    descriptor = build()
    descriptor = _to(descriptor, device, dtype, source)
    if cache is not None and key is not None:
        cache.put(key, descriptor)
    return descriptor


def _load_onnx(path: Path, hints: LoadHints) -> ImageModelDescriptor:
    """An `.onnx` graph through onnxruntime (`onnx_backend`, imported only when needed)."""
    from .onnx_backend import load_onnx

    return load_onnx(path, hints)


def _to(
    descriptor: ImageModelDescriptor, device: torch.device, dtype: torch.dtype, source: str | Path
) -> ImageModelDescriptor:
    if dtype == torch.float16 and not descriptor.supports_half:
        raise ModelFileError(
            source, f"({descriptor.architecture.name}) does not support fp16.", "Use precision fp32 or auto."
        )
    if dtype == torch.bfloat16 and not descriptor.supports_bfloat16:
        raise ModelFileError(
            source, f"({descriptor.architecture.name}) does not support bf16.", "Use precision fp32 or auto."
        )
    descriptor.model.to(device=device, dtype=dtype)
    return descriptor
