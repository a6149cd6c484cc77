"""Native architectures that spandrel lacks, each registered through spandrel's `Architecture`."""

from __future__ import annotations

from spandrel import ArchSupport

from . import classic, paragonsr2
from .base import HintNeededError, LoadHints, NativeArchitecture, RecognisedButUnsupportedError
from .magic_kernel import MagicKernelSharp2021Upsample, MagicKernelSharpArch


def native_arch_supports() -> list[ArchSupport]:
    """Our architectures in detection order, with the spandrel ids each must precede."""
    return [
        ArchSupport.from_architecture(MagicKernelSharpArch()),
        *classic.ARCH_SUPPORTS,
        *paragonsr2.ARCH_SUPPORTS,
    ]


__all__ = [
    "HintNeededError",
    "LoadHints",
    "MagicKernelSharp2021Upsample",
    "NativeArchitecture",
    "RecognisedButUnsupportedError",
    "native_arch_supports",
]
