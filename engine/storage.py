"""Where Tilewise keeps its own files, and the one way it writes a file.

`replacing` is the package's atomic write: images and the probe store go
through it, so no reader ever sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Tilewise's user cache folder: $TILEWISE_CACHE_DIR, else `tilewise` in the platform's user
    cache (XDG_CACHE_HOME or ~/.cache; %LOCALAPPDATA% on Windows)."""
    explicit = os.environ.get("TILEWISE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or (os.name == "nt" and os.environ.get("LOCALAPPDATA")) or Path.home() / ".cache"
    return Path(base) / "tilewise"


@contextlib.contextmanager
def replacing(target: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary file beside `target` to write; it is renamed onto `target` when the block
    completes and removed if the block raises, so `target` is never seen half-written (and two
    writers racing leave one whole file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tilewise-", suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
