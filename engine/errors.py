"""Errors the engine raises. Each message names the thing at fault and says what to do next.

Hosts show `str(error)` to the user as is (ComfyUI error, A1111 log line, CLI stderr line),
so messages are single sentences without tracebacks.
"""

from __future__ import annotations

from pathlib import Path


def first_line(error: BaseException) -> str:
    """An exception's message reduced to one line of at most 200 characters (its type if empty),
    for quoting inside a user-facing message."""
    text = str(error).strip()
    return printable((text.splitlines()[0] if text else type(error).__name__), 200)


def printable(text: str, limit: int = 80) -> str:
    """Untrusted text (a key or name from a model file) for a message: control characters and
    non-ASCII escaped, at most `limit` characters."""
    text = text[: limit * 4]  # escaping grows text at most 4x (\xNN); never escape more than is kept
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in escaped)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


#: The longest message a model-file error carries (a damaged file can put anything in it).
MAX_MESSAGE = 2000


class TilewiseError(Exception):
    """Base class for every error meant for the user."""


def named_message(path: str | Path, error: BaseException) -> str:
    """The error's message with `path` in front, unless the message names it already (a batch
    reports each file's failure on one line that says which file)."""
    text = str(error)
    return text if str(path) in text else f"{path}: {text}"


class ModelFileError(TilewiseError):
    """A model file cannot be used. `path` is the file; the message says why and what to do."""

    def __init__(self, path: str | Path, problem: str, advice: str = ""):
        self.path = Path(path)
        self.problem = problem = printable(problem, MAX_MESSAGE)
        self.advice = advice
        text = f"{printable(self.path.name, 255)}: {problem}"
        if advice:
            text += f" {advice}"
        super().__init__(text)


class UnsafeModelError(ModelFileError):
    """The file would execute code or is a format we refuse to run (pickled code, TorchScript)."""


class UnknownArchitectureError(ModelFileError):
    """The weights load but match no known architecture."""


class HintRequiredError(ModelFileError):
    """The architecture is known but the file lacks a hyper-parameter the user must give."""


class ModelRunError(TilewiseError):
    """The model itself failed on a tile (a bug or an unsupported input in the architecture)."""


class ImageError(TilewiseError):
    """An image cannot be processed (wrong shape, empty, too large, unreadable)."""


class CancelledError(TilewiseError):
    """The caller cancelled the run; nothing was written."""

    def __init__(self, message: str = "Upscale cancelled."):
        super().__init__(message)
