"""Where Tilewise keeps its own files, and the one way it writes a file.

`replacing` is the package's atomic write: images and the probe store go
through it, so no reader ever sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """Tilewise's user cache folder: $TILEWISE_CACHE_DIR, else `tilewise` in the platform's user
    cache (XDG_CACHE_HOME or ~/.cache; %LOCALAPPDATA% on Windows)."""
    explicit = os.environ.get("TILEWISE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = (
        os.environ.get("XDG_CACHE_HOME")
        or (os.name == "nt" and os.environ.get("LOCALAPPDATA"))
        or Path.home() / ".cache"
    )
    return Path(base) / "tilewise"


@contextlib.contextmanager
def replacing(target: Path, suffix: str = "") -> Iterator[Path]:
    """A new, empty temporary file beside `target` to write; it is renamed onto `target` when the
    block completes and removed if the block raises, so `target` is never seen half-written (and
    two writers racing leave one whole file).

    The file is created exclusively under an unpredictable name (`exclusive_file`), so a link
    planted in the folder is never followed, and with mode 0666 minus the process umask, so the
    result has the permissions any other file written there gets (mkstemp's 0600 would survive
    the rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = exclusive_file(target.parent, suffix)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def exclusive_file(folder: Path, suffix: str = "") -> Path:
    """Creates a new empty file `.tilewise-<random><suffix>` in `folder` (O_EXCL: never an
    existing file or link) with the umask's permissions, and returns its path."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = Path(folder) / f".tilewise-{secrets.token_hex(8)}{suffix}"
        try:
            os.close(os.open(path, flags, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {folder}")
