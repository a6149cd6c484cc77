"""Probe results kept between processes: a small JSON file in the user cache directory.

`autotile` keeps its CPU memory probes here under a key made of the model's architecture, the
names and shapes of its weights and the run's settings, so every process on a machine plans the
same auto windows for the same model, and one probe serves every checkpoint of the same shapes
(see `autotile._stored_key`); `receptive` keeps each model's tile margin (a probe that costs a
deep RRDB many forwards), so only the first process that uses a model file pays for it.
Values are positive numbers or small records of numbers and short lists of numbers (readers
take records through `record`, which checks each field's kind). The file is only an
optimisation: unreadable, corrupt or missing, it is ignored (and rewritten);
`TILEWISE_PROBE_CACHE=0` switches it off (the test suite does, so that each test probes
afresh). Deleting it makes the next run probe again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import weakref
from pathlib import Path

import torch

from .. import storage

FILE = "memory_probes.json"
MAX_ENTRIES = 512  # oldest dropped beyond this

_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get("TILEWISE_PROBE_CACHE", "1") != "0"


def path() -> Path:
    return storage.cache_dir() / FILE


def key(model: torch.nn.Module, settings: str, values: bool = True) -> str | None:
    """A digest of `settings` and every parameter and buffer of `model`: names, shapes, dtypes
    and, with `values`, their bytes; None when keeping is switched off or the module has no state."""
    if not enabled():
        return None
    weights = _weights_digest(model, values)
    if weights is None:  # nothing identifies it (an onnxruntime session's module)
        return None
    return hashlib.blake2b(f"{settings}|{weights}".encode(), digest_size=16).hexdigest()


_digests: "weakref.WeakKeyDictionary[torch.nn.Module, dict[bool, str | None]]" = weakref.WeakKeyDictionary()


def _weights_digest(model: torch.nn.Module, values: bool = True) -> str | None:
    """The digest of a model's state (with or without the values), computed once per model
    object: hashing a 64 MB RRDB's values costs about 0.1 s, so it is done only for what
    depends on them (the tile margin), and only once."""
    with _lock:
        known = _digests.get(model, {})
        if values in known:
            return known[values]
    state = model.state_dict()
    digest = None
    if state:
        hasher = hashlib.blake2b(digest_size=16)
        for name, tensor in state.items():
            hasher.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
            flat = tensor.detach().to("cpu").contiguous().reshape(-1) if values else None
            if flat is not None and flat.numel():
                hasher.update(flat.view(torch.uint8).numpy().tobytes())
        digest = hasher.hexdigest()
    with _lock:
        _digests.setdefault(model, {})[values] = digest
    return digest


Value = float | dict[str, float | list[float]]

#: The longest list of numbers a record may hold (a tensor profile, `autotile.PROFILE_STEPS`).
MAX_LIST = 64


def _valid(value) -> bool:
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    def field(v) -> bool:
        return number(v) or (isinstance(v, list) and len(v) <= MAX_LIST and all(number(n) for n in v))

    if isinstance(value, dict):
        return 0 < len(value) <= 8 and all(isinstance(k, str) and field(v) for k, v in value.items())
    return number(value) and value > 0


def _read() -> dict[str, Value]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path().read_text())
        if isinstance(data, dict):
            return {
                k: (v if isinstance(v, dict) else float(v)) for k, v in data.items() if isinstance(k, str) and _valid(v)
            }
    return {}


def get(key: str) -> Value | None:
    with _lock:
        return _read().get(key)


def record(value: Value | None, numbers: tuple[str, ...], lists: tuple[str, ...] = ()) -> dict | None:
    """`value` (from `get`) when it is a record with a number in each of `numbers` and a list in
    each of `lists`, else None: a store written by another version or by hand is then probed
    again, and `put(..., replace=True)` overwrites it."""
    if not isinstance(value, dict):
        return None
    fields_ok = all(isinstance(value.get(name), (int, float)) for name in numbers) and all(
        isinstance(value.get(name), list) for name in lists
    )
    return value if fields_ok else None


def put(key: str, value: Value, replace: bool = False) -> Value:
    """Adds an entry unless another process stored one meanwhile, and returns the kept value
    (best effort: a read-only cache directory only means probing again). `replace`: overwrite
    an entry the caller found unusable (written by another version, or by hand)."""
    with _lock:
        entries = _read()
        if key in entries and not replace:
            return entries[key]
        entries[key] = value if isinstance(value, dict) else float(value)
        while len(entries) > MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        with contextlib.suppress(OSError), storage.replacing(path(), ".json") as tmp:
            tmp.write_text(json.dumps(entries))
        return entries[key]
