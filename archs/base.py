"""Shared pieces for the native architectures: load hints and the errors a loader may raise.

Architectures here plug into spandrel's `Architecture` extension point. spandrel's own
`Architecture.load(state_dict)` takes no extra information, but some formats do not store
everything (FSRCNN's scale, ParagonSR2's `upsampler_alpha`), so a `NativeArchitecture`
also accepts `LoadHints`. The engine passes hints when it loads a file; spandrel's plain
`load(state_dict)` still works and uses the defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeVar

import torch
from spandrel import Architecture, ImageModelDescriptor, StateDict

T = TypeVar("T", bound=torch.nn.Module, covariant=True)


@dataclass(frozen=True)
class LoadHints:
    """What a user can tell the loader that a checkpoint may not store.

    `scale`: the upscale factor, for formats whose weights do not fix it (SRCNN, FSRCNN).
    `upsampler_alpha`: ParagonSR2's base-path sharpening blend (not stored in its files).
    `file_name`: the checkpoint's file name; a scale written in it (`x3`, `_3x`) is a hint too.
    """

    scale: int | None = None
    upsampler_alpha: float | None = None
    file_name: str | None = None

    def scale_or_none(self) -> int | None:
        """The explicit scale, else one read from the file name, else None."""
        if self.scale is not None:
            return int(self.scale)
        return scale_from_file_name(self.file_name)


_SCALE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(?:x([1-9])|([1-9])x)(?:$|[^a-z0-9])", re.IGNORECASE)


def scale_from_file_name(name: str | None) -> int | None:
    """Reads a scale such as `x3`, `_3x`, `4x-` from a checkpoint's file name.

    >>> scale_from_file_name("fsrcnn_x3.pth"), scale_from_file_name("2x_model.pth")
    (3, 2)
    """
    if not name:
        return None
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    match = _SCALE_IN_NAME.search(stem)
    if match is None:
        return None
    return int(match.group(1) or match.group(2))


class HintNeededError(ValueError):
    """The weights do not fix a hyper-parameter; the user must supply it as a load hint."""

    def __init__(self, architecture: str, hint: str, how: str):
        self.architecture = architecture
        self.hint = hint
        super().__init__(f"{architecture} weights do not store the {hint}; {how}")


class RecognisedButUnsupportedError(ValueError):
    """The file is recognisably something (a discriminator, an old layout) that we do not run."""


class NativeArchitecture(Architecture[T]):
    """An `Architecture` whose `load` can take `LoadHints`."""

    def load(self, state_dict: StateDict, hints: LoadHints | None = None) -> ImageModelDescriptor[T]:  # type: ignore[override]
        raise NotImplementedError
