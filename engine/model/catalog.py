"""Model folders: listing model files and describing each without letting one bad file spoil the rest.

Hosts list a folder filled from the internet; every file is treated as hostile. `scan_folder`
loads each file in turn and records either its descriptor or the clear reason it was refused.
Model files are PyTorch weights and `.onnx` graphs (`files.MODEL_EXTENSIONS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from spandrel import ImageModelDescriptor

from ...archs import LoadHints
from ..errors import TilewiseError
from .files import MODEL_EXTENSIONS
from .loading import load_model


@dataclass
class CatalogEntry:
    """A model file: `name` relative to its folder; `model` when it loads, else `error`."""

    path: Path
    name: str
    model: ImageModelDescriptor | None = None
    error: str | None = None


def find_model_files(
    folder: str | Path, recursive: bool = True, extensions: tuple[str, ...] = MODEL_EXTENSIONS
) -> list[Path]:
    """Model files under `folder` (sorted; hidden files and folders skipped; symlink loops safe)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found: list[Path] = []
    seen: set[str] = set()
    for directory, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a symlink loop, or the same folder linked twice
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if recursive else []
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in extensions:
                found.append(Path(directory) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix().lower())


def model_names_in(folders: list[str | Path], extensions: tuple[str, ...] = MODEL_EXTENSIONS) -> list[str]:
    """Model files under several folders as names relative to their folder (with the platform's
    separator, as ComfyUI names them), first folder first, each name once."""
    names: dict[str, None] = {}
    for folder in folders:
        for path in find_model_files(folder, extensions=extensions):
            names.setdefault(os.path.relpath(path, folder), None)
    return list(names)


def scan_folder(folder: str | Path, hints: LoadHints | None = None, recursive: bool = True) -> list[CatalogEntry]:
    """Every model file under `folder`, each loaded (through the cache) or with its refusal message."""
    root = Path(folder)
    entries = []
    for path in find_model_files(root, recursive):
        entry = CatalogEntry(path=path, name=path.relative_to(root).as_posix())
        try:
            entry.model = load_model(path, hints=hints)
        except TilewiseError as error:
            entry.error = str(error)
        entries.append(entry)
    return entries


def model_summary(descriptor) -> dict:
    """The fields `info --json` prints (also shown by the hosts' model-info views).

    `params` of an ONNX model counts its stored weights (`parameter_count`): it has no torch
    parameters. `backend` says what runs it: pytorch or onnxruntime.
    """
    requirements = descriptor.size_requirements
    model = descriptor.model
    onnx = descriptor.architecture.id == "ONNX"
    return {
        "architecture": descriptor.architecture.id,
        "purpose": descriptor.purpose,
        "scale": descriptor.scale,
        "input_channels": descriptor.input_channels,
        "output_channels": descriptor.output_channels,
        "params": model.parameter_count if onnx else sum(p.numel() for p in model.parameters()),
        "supports_half": descriptor.supports_half,
        "supports_bfloat16": descriptor.supports_bfloat16,
        "tiling": descriptor.tiling.name.lower(),
        "size_requirements": {
            "minimum": requirements.minimum,
            "multiple_of": requirements.multiple_of,
            "square": requirements.square,
        },
        "tags": list(descriptor.tags),
        "backend": "onnxruntime" if onnx else "pytorch",
    }
