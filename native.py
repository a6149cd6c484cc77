"""Builds Tilewise's small C++ helpers with the system compiler, once, into the user cache.

Two helpers are compiled on the user's machine rather than shipped: the caching CPU allocator
(`engine/cpu_cache.cpp`, against torch's c10 headers) and the window-attention kernel
(`archs/window_attention.cpp`, plain C++ tuned with `-march=native`). Each build is keyed by
its source, flags, compiler, platform and CPU features, so an upgraded torch, an edited source
or a home directory shared between machines never loads a stale or foreign library; builds for
other keys are removed. Without a compiler a helper is simply unavailable and its caller takes
the pure-PyTorch path (the callers log why, once).

This module imports nothing from the rest of Tilewise, so `archs` and `engine` can both use it;
for that reason it also holds `replacing`, the package's one way to write a file atomically.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

BUILD_TIMEOUT = 300  # seconds


def cache_dir() -> Path:
    """Where built helpers are kept: $TILEWISE_CACHE_DIR, else the user cache directory."""
    explicit = os.environ.get("TILEWISE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tilewise"


def compiler() -> str | None:
    """$CXX, else the first of c++, g++, clang++ on PATH."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@functools.cache
def cpu_features() -> str:
    """The CPU's feature flags as the kernel reports them (Linux), else the machine name: part of
    a `-march=native` build's key."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def library(name: str, source: Path, flags: Sequence[str], link: Sequence[str] = (), key: str = "") -> Path:
    """The shared library `name-<digest>.so` built from `source` with compiler `flags` and
    `link` options (placed after the source), compiling it now if it is not in the cache yet;
    `key` adds whatever else the build depends on. Raises RuntimeError (with the compiler's
    last line) or subprocess.SubprocessError when it cannot be built."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    digest = hashlib.sha256(source.read_bytes())
    digest.update("|".join([*flags, *link, key, cxx, sys.platform]).encode())
    target = cache_dir() / f"{name}-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        log.info("building %s into %s (once)", source.name, target)
        _build([cxx, *flags, "-shared", "-fPIC", str(source), *link], target, name)
    return target


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


def _build(command: list[str], target: Path, name: str) -> None:
    """Compiles into a temporary file and renames it into place (safe against a parallel build)."""
    with replacing(target, ".so") as tmp:
        done = subprocess.run([*command, "-o", str(tmp)], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}")
    for stale in target.parent.glob(f"{name}-*.so"):  # builds for other sources, flags or machines
        if stale != target:
            with contextlib.suppress(OSError):
                stale.unlink()


class Helper:
    """A helper library loaded (and built if need be) on the first `load()`; when that fails,
    `load()` gives None from then on and the reason is logged once, as `warning % reason`."""

    def __init__(self, loader: Callable[[], ctypes.CDLL], warning: str, logger: logging.Logger):
        self._loader = loader
        self._warning = warning
        self._log = logger
        self._lock = threading.Lock()
        self._tried = False
        self.library: ctypes.CDLL | None = None  # None until loaded, or for good after a failure
        self.reason = ""  # why it is unavailable ('' when loaded or not asked yet)

    def load(self) -> ctypes.CDLL | None:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    self.library = self._loader()
                except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                    self.reason = str(error)
                    self._log.warning(self._warning, self.reason)
        return self.library
