"""Memory probes kept between processes: a small JSON file in the user cache directory.

`autotile` keeps its CPU probe results here under a key made of the model's weights and the
run's settings, so every process on a machine plans the same auto windows for the same model
(see `autotile._stored_key`). The file is only an optimisation: unreadable, corrupt or missing,
it is ignored (and rewritten); `TILEWISE_PROBE_CACHE=0` switches it off (the test suite does,
so that each test probes afresh). Deleting it makes the next run probe again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from pathlib import Path

import torch

from . import storage

FILE = "memory_probes.json"
MAX_ENTRIES = 512  # oldest dropped beyond this

_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get("TILEWISE_PROBE_CACHE", "1") != "0"


def path() -> Path:
    return storage.cache_dir() / FILE


def key(model: torch.nn.Module, settings: str) -> str | None:
    """A digest of `settings` and every parameter and buffer of `model` (names, shapes, dtypes,
    bytes); None when keeping is switched off or the module has no state."""
    if not enabled():
        return None
    state = model.state_dict()
    if not state:  # nothing identifies it (an onnxruntime session's module)
        return None
    digest = hashlib.blake2b(settings.encode(), digest_size=16)
    for name, tensor in state.items():
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read() -> dict[str, float]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path().read_text())
        if isinstance(data, dict):
            return {k: float(v) for k, v in data.items() if isinstance(k, str) and isinstance(v, (int, float)) and math.isfinite(v) and v > 0}
    return {}


def get(key: str) -> float | None:
    with _lock:
        return _read().get(key)


def put(key: str, value: float) -> float:
    """Adds an entry unless another process stored one meanwhile, and returns the kept value
    (best effort: a read-only cache directory only means probing again)."""
    with _lock:
        entries = _read()
        if key in entries:
            return entries[key]
        entries[key] = float(value)
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        with contextlib.suppress(OSError), storage.replacing(path(), ".json") as tmp:
            tmp.write_text(json.dumps(entries))
        return float(value)
