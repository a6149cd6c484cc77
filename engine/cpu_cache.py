"""The caching CPU allocator (`cpu_cache.cpp`): built on first use, scoped to engine runs.

Hosts run Tilewise in a worker thread, where glibc serves every block of a megabyte or more
from a fresh mapping and unmaps it on free: each large tensor costs a page fault per 4 KiB
each time it is created, and a whole-image forward of an attention model creates hundreds
(measured: ParagonSR2 photo on 0.78 MP, 19 s in the main thread with `heap.reusing_heap`
against 46 s in a worker thread). PyTorch has no CPU caching allocator and glibc cannot be
told to keep such blocks, so this small C++ allocator is placed in front of PyTorch's own:
while a run is active it keeps freed blocks of 1 MiB or more and hands them out again; when
the last run ends it frees them. Pixels are unaffected (it only decides where tensors live).

It is compiled once per torch version with the system C++ compiler into the user cache
directory (a few seconds), only on Linux. Without a compiler, or with `TILEWISE_CPU_CACHE=0`,
runs work exactly as before, only slower in worker threads; the reason is logged once.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_cache.cpp")
BUILD_TIMEOUT = 300  # seconds

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_reason = ""


def cache_dir() -> Path:
    """Where built helpers are kept: $TILEWISE_CACHE_DIR, else the user cache directory."""
    explicit = os.environ.get("TILEWISE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tilewise"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _command(compiler: str, output: Path) -> list[str]:
    # c10's headers and library only (not torch.utils.cpp_extension, which probes for CUDA)
    root = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [
        compiler, "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{root / 'include'}", str(SOURCE), f"-L{root / 'lib'}", "-lc10", f"-Wl,-rpath,{root / 'lib'}",
        "-o", str(output),
    ]  # fmt: skip


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(f"{torch.__version__}|{torch._C._GLIBCXX_USE_CXX11_ABI}|{compiler}|{sys.platform}".encode())
    return cache_dir() / f"cpu_cache-{key.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> None:
    """Compiles into a temporary file and renames it into place (safe against a parallel build)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(_command(compiler, Path(tmp)), capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}")
        os.replace(tmp, target)
        for stale in target.parent.glob("cpu_cache-*.so"):  # builds for other sources or torch versions
            if stale != target:
                with contextlib.suppress(OSError):
                    stale.unlink()
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL:
    if os.environ.get("TILEWISE_CPU_CACHE", "1") == "0":
        raise RuntimeError("switched off by TILEWISE_CPU_CACHE=0")
    if not sys.platform.startswith("linux"):
        raise RuntimeError("only built on Linux")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    path = _library_path(compiler)
    if not path.exists():
        log.info("building the caching CPU allocator into %s (once per torch version)", path)
        _build(compiler, path)
    lib = ctypes.CDLL(str(path))
    lib.tilewise_cache_install.restype = ctypes.c_int
    lib.tilewise_cache_enter.argtypes = (ctypes.c_size_t,)
    lib.tilewise_cache_pause.argtypes = (ctypes.c_int,)
    lib.tilewise_cache_stats.argtypes = (ctypes.POINTER(ctypes.c_size_t),)
    if not lib.tilewise_cache_install():
        raise RuntimeError("another CPU allocator took precedence")
    return lib


def load() -> ctypes.CDLL | None:
    """The installed allocator's library, building it on first call; None if unavailable."""
    global _lib, _tried, _reason
    with _lock:
        if not _tried:
            _tried = True
            try:
                _lib = _load()
            except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                _reason = str(error)
                log.warning("Tilewise runs without its caching CPU allocator (%s); CPU runs in host worker threads are slower", _reason)
    return _lib


def unavailable_reason() -> str:
    """Why `load()` gave None ('' when it did not, or was not asked yet)."""
    return _reason


@contextlib.contextmanager
def caching(limit: int) -> Iterator[bool]:
    """Large CPU blocks freed inside the block are kept (up to `limit` bytes) and reused; all
    kept blocks are freed when the outermost block exits. Yields whether the cache is active."""
    lib = load()
    if lib is None or limit <= 0:
        yield False
        return
    lib.tilewise_cache_enter(limit)
    try:
        yield True
    finally:
        lib.tilewise_cache_leave()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Inside the block large blocks behave as without the cache (the kept ones are freed on
    entry): memory measurements (`autotile`'s RSS probe) then see what they would see without
    it, so tile plans do not depend on whether the cache could be built."""
    lib = _lib
    if lib is None:
        yield
        return
    lib.tilewise_cache_pause(1)
    try:
        yield
    finally:
        lib.tilewise_cache_pause(0)


def stats() -> dict[str, int] | None:
    """Counters since start: reused blocks (hits), new blocks (misses), bytes kept now, blocks
    in use now, runs entered; None when the allocator is not loaded."""
    if _lib is None:
        return None
    out = (ctypes.c_size_t * 5)()
    _lib.tilewise_cache_stats(out)
    return dict(zip(("hits", "misses", "kept_bytes", "live_blocks", "runs"), out))
