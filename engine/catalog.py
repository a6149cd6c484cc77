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

from ..archs import LoadHints
from .errors import TilewiseError
from .files import MODEL_EXTENSIONS
from .loading import load_model


@dataclass
class CatalogEntry:
    """A model file: `name` relative to its folder; `model` when it loads, else `error`."""

    path: Path
    name: str
    model: ImageModelDescriptor | None = None
    error: str | None = None


def find_model_files(folder: str | Path, recursive: bool = True, extensions: tuple[str, ...] = MODEL_EXTENSIONS) -> list[Path]:
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
