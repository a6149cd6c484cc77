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
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from .. import native

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_cache.cpp")

def _build_flags() -> tuple[list[str], list[str]]:
    """Compiler and link options: c10's headers and library only (not torch.utils.cpp_extension,
    which probes for CUDA), with torch's C++ ABI."""
    root = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = ["-O2", "-std=c++17", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{root / 'include'}"]
    return flags, [f"-L{root / 'lib'}", "-lc10", f"-Wl,-rpath,{root / 'lib'}"]


def _load() -> ctypes.CDLL:
    if os.environ.get("TILEWISE_CPU_CACHE", "1") == "0":
        raise RuntimeError("switched off by TILEWISE_CPU_CACHE=0")
    if not sys.platform.startswith("linux"):
        raise RuntimeError("only built on Linux")
    flags, link = _build_flags()
    lib = ctypes.CDLL(str(native.library("cpu_cache", SOURCE, flags, link, key=torch.__version__)))
    lib.tilewise_cache_install.restype = ctypes.c_int
    lib.tilewise_cache_enter.argtypes = (ctypes.c_size_t,)
    lib.tilewise_cache_pause.argtypes = (ctypes.c_int,)
    lib.tilewise_cache_stats.argtypes = (ctypes.POINTER(ctypes.c_size_t),)
    if not lib.tilewise_cache_install():
        raise RuntimeError("another CPU allocator took precedence")
    return lib


_helper = native.Helper(_load, "Tilewise runs without its caching CPU allocator (%s); CPU runs in host worker threads are slower", log)


def load() -> ctypes.CDLL | None:
    """The installed allocator's library, building it on first call; None if unavailable."""
    return _helper.load()


def unavailable_reason() -> str:
    """Why `load()` gave None ('' when it did not, or was not asked yet)."""
    return _helper.reason


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
    lib = _helper.library
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
    lib = _helper.library
    if lib is None:
        return None
    out = (ctypes.c_size_t * 5)()
    lib.tilewise_cache_stats(out)
    return dict(zip(("hits", "misses", "kept_bytes", "live_blocks", "runs"), out))
