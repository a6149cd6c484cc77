"""One image file to one image file: what the CLI does per input, and what a Ray worker does.

Both call `upscale_file`, so a file gives the same pixels, metadata and frames wherever it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from spandrel import ImageModelDescriptor

from ..choices import FRAME_EXTENSIONS
from ..errors import ImageError, named_message
from ..run.runner import ProgressFn
from .images import check_decodable, read_frames, read_image, write_frames, write_image
from .pipeline import UpscaleOptions, check_fits, upscale

#: Makes the progress callback for one picture ("" for a still image, "frame 2/5" for a frame).
ProgressFactory = Callable[[str], "ProgressFn | None"]


def upscale_file(
    model: ImageModelDescriptor,
    source: str | Path,
    destination: str | Path,
    options: UpscaleOptions,
    progress: ProgressFactory | None = None,
) -> tuple[int, int]:
    """Upscales `source` into `destination` (every frame of a multi-frame image, with its metadata),
    written atomically; returns the output's (height, width). Checks the image's size against
    memory and the target from its header before decoding it."""
    source, destination = Path(source), Path(destination)
    header = check_decodable(source)
    try:
        check_fits(model, header.height, header.width, header.channels, options)
    except ImageError as error:
        raise ImageError(named_message(source, error)) from None
    if header.frames > 1:
        if destination.suffix.lower() not in FRAME_EXTENSIONS:
            raise ImageError(
                f"{source}: has {header.frames} frames, but a {destination.suffix.lstrip('.').upper()} file holds one "
                f"picture; write .png (animated PNG), .gif, .webp or .tif to keep them all (--format for folders)"
            )
        animation = read_frames(source, header)
        results = []
        for number, frame in enumerate(animation.frames, start=1):
            callback = progress(f"frame {number}/{animation.count}") if progress else None
            results.append(upscale(model, frame.tensor, options, progress=callback).cpu())
            _finish(callback)
        write_frames(
            destination,
            results,
            animation.durations,
            animation.loop,
            bits=animation.bits,
            metadata=animation.metadata,
        )
        return results[0].shape[-2], results[0].shape[-1]
    loaded = read_image(source, header)
    callback = progress("") if progress else None
    result = upscale(model, loaded.tensor, options, progress=callback)
    _finish(callback)
    write_image(destination, result, bits=loaded.bits, metadata=loaded.metadata)
    return result.shape[-2], result.shape[-1]


def _finish(callback) -> None:
    finish = getattr(callback, "finish", None)
    if finish is not None:
        finish()
