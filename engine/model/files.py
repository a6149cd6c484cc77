"""Reading checkpoint files into state dicts, safely, with a clear error for every bad file.

Only two readers ever touch file contents:
- safetensors (`safetensors.torch.load_file`): data only, by construction;
- `torch.load(weights_only=True)` for `.pth/.pt/.ckpt/.bin`: torch's restricted unpickler, which
  builds tensors and plain containers and refuses every other global. TorchScript archives are
  refused outright (loading one would run its code).

Before either reader runs, the first bytes are sniffed so that the usual wrong files (an empty
download, an HTML error page, a Git LFS pointer, a file cut short) get a message that says what
happened instead of a parser error.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..errors import ModelFileError, UnsafeModelError, printable
from . import pickle_scan

StateDict = dict[str, torch.Tensor]

#: Checkpoint files read as PyTorch weights (this module).
WEIGHT_EXTENSIONS = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
PICKLE_EXTENSIONS = (".pth", ".pt", ".ckpt", ".bin")
#: ONNX graphs, run through onnxruntime (`onnx_backend`).
ONNX_EXTENSIONS = (".onnx",)
#: Every file a models folder may hold (hosts list these).
MODEL_EXTENSIONS = WEIGHT_EXTENSIONS + ONNX_EXTENSIONS

#: safetensors headers of real upscalers are a few hundred KiB at most; a larger one is hostile.
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024
#: torch writes archive members uncompressed; a member inflating beyond this ratio is a zip bomb.
MAX_ZIP_RATIO = 200

_WRAPPER_KEYS = (
    "params_ema",
    "params-ema",
    "params",
    "model_state_dict",
    "state_dict",
    "model",
    "net",
    "netG",
    "generator",
)
_PREFIXES = ("module.", "netG.", "_orig_mod.")
_DOWNLOAD_AGAIN = "Download it again from its original page (use the file's direct download link)."


def read_state_dict(path: str | Path) -> StateDict:
    """Reads the weights of a checkpoint file and returns its canonical state dict.

    Raises `ModelFileError` (or its subclass `UnsafeModelError`) naming the file and the fix.
    """
    path = Path(path)
    head = _check_file(path)
    kind = _sniff(path, head)
    suffix = path.suffix.lower()
    if suffix == ".safetensors" and kind != "safetensors":
        raise UnsafeModelError(
            path,
            f"is named .safetensors but holds a {kind} file; it was refused because safetensors files must contain "
            f"only data.",
            _DOWNLOAD_AGAIN,
        )
    if kind == "safetensors":
        raw = _read_safetensors(path)
    else:
        if suffix not in PICKLE_EXTENSIONS and suffix != ".safetensors":
            raise ModelFileError(
                path, f"has an unsupported extension '{path.suffix}'.", f"Use one of {', '.join(WEIGHT_EXTENSIONS)}."
            )
        if kind == "zip":
            _check_torch_zip(path)
        _scan_pickles(path, kind)
        raw = _read_torch_pickle(path)
    return canonicalize(raw, path)


def check_model_file(path: Path) -> bytes:
    """The first KiB of a model file; raises a clear error for a missing, folder or empty path."""
    return _check_file(Path(path))


def _check_file(path: Path) -> bytes:
    if not path.exists():
        raise ModelFileError(
            path, f"not found at '{path}'.", "Check the path, or put the model file in your upscale models folder."
        )
    if path.is_dir():
        raise ModelFileError(path, "is a folder, not a model file.", "Give the path of a .safetensors or .pth file.")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(path, "is empty (0 bytes), so its download or copy failed.", _DOWNLOAD_AGAIN)
    with path.open("rb") as f:
        return f.read(1024)


def _refuse_pages(path: Path, head: bytes) -> None:
    """Raises for the usual wrong downloads: a Git LFS pointer, an HTML page."""
    text = head.lstrip()[:200].lower()
    if text.startswith(b"version https://git-lfs"):
        raise ModelFileError(
            path,
            "is a Git LFS pointer (a small text file), not the model weights.",
            "Download the real file (on Hugging Face, the 'download' button; with git, run `git lfs pull`).",
        )
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in text:
        raise ModelFileError(
            path,
            "is a web page (HTML), not model weights: the link saved the download page instead of the file.",
            _DOWNLOAD_AGAIN,
        )


def _refuse_image(path: Path, head: bytes) -> None:
    """Checked after the checkpoint formats: a safetensors header length can begin with b"BM"."""
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM")):
        raise ModelFileError(
            path, "is an image, not model weights.", "Give the model file, and pass images as the input."
        )


def sniff_foreign(path: Path, head: bytes) -> None:
    """For a file named as another format (`.onnx`): raises for the usual wrong downloads and
    for PyTorch checkpoints under that name, which would otherwise get a parser error."""
    _refuse_pages(path, head)
    kind = None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        kind = "a PyTorch archive"
    elif head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        kind = "a pickle"
    elif len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] + 8 <= path.stat().st_size:
        kind = "a safetensors file"
    if kind:
        raise ModelFileError(
            path,
            f"is named {path.suffix} but holds {kind} (PyTorch weights).",
            "Rename it to .safetensors or .pth (whichever it is) so that Tilewise reads it as weights.",
        )
    _refuse_image(path, head)


def _sniff(path: Path, head: bytes) -> str:
    """Returns "safetensors", "zip" or "pickle", or raises for a file that is no checkpoint."""
    _refuse_pages(path, head)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{":
            if header_len > MAX_SAFETENSORS_HEADER:
                raise UnsafeModelError(
                    path,
                    f"declares a safetensors header of {header_len} bytes (limit {MAX_SAFETENSORS_HEADER}); it was "
                    f"refused as malformed or hostile.",
                    _DOWNLOAD_AGAIN,
                )
            if header_len + 8 > path.stat().st_size:
                raise ModelFileError(
                    path, "is a truncated safetensors file (its header is cut short).", _DOWNLOAD_AGAIN
                )
            return "safetensors"
    _refuse_image(path, head)
    raise ModelFileError(
        path,
        "is not a checkpoint Tilewise can read (neither safetensors nor a PyTorch archive).",
        _DOWNLOAD_AGAIN
        + " Other formats are not PyTorch weights (an ONNX model must be named .onnx; NCNN and TensorRT are not "
        "supported).",
    )


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _check_safetensors_extent(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(path, f"is a damaged safetensors file ({_short(error)}).", _DOWNLOAD_AGAIN) from None


def _check_safetensors_extent(path: Path) -> None:
    """Compares the data extent the header declares with the file size, to name truncation."""
    size = path.stat().st_size
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, UnicodeDecodeError):
            raise ModelFileError(
                path, "is a damaged safetensors file (its header is not valid JSON).", _DOWNLOAD_AGAIN
            ) from None
        except RecursionError:
            raise UnsafeModelError(
                path,
                "has a safetensors header nested far deeper than any real one; it was refused as malformed or hostile.",
                _DOWNLOAD_AGAIN,
            ) from None
    if not isinstance(header, dict):
        raise ModelFileError(
            path, "is a damaged safetensors file (its header is not a table of tensors).", _DOWNLOAD_AGAIN
        )
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            shape = info["shape"]
            valid = (
                all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62 for v in (start, stop, *shape))
                and start <= stop
            )
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise ModelFileError(
                path,
                f"is a damaged safetensors file (entry '{printable(name)}' has no valid offsets or shape).",
                _DOWNLOAD_AGAIN,
            )
        end = max(end, stop)
    if 8 + header_len + end > size:
        missing = 8 + header_len + end - size
        raise ModelFileError(path, f"is truncated: {missing} bytes of tensor data are missing.", _DOWNLOAD_AGAIN)


def _check_torch_zip(path: Path) -> None:
    """Refuses TorchScript archives and zip bombs before torch opens the archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise ModelFileError(path, "is a truncated or damaged PyTorch archive.", _DOWNLOAD_AGAIN) from None
    names = [m.filename for m in members]
    if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise UnsafeModelError(
            path,
            "is a TorchScript archive; it was refused because loading TorchScript runs code stored in the file.",
            "Use a .safetensors or plain state-dict .pth version of this model.",
        )
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED and member.file_size > MAX_ZIP_RATIO * max(
            member.compress_size, 1
        ):
            raise UnsafeModelError(
                path,
                f"contains a member ('{member.filename}') that inflates {member.file_size} bytes out of "
                f"{member.compress_size}; refused as a zip bomb.",
            )


#: The first pickle of torch's legacy (non-zip) format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _scan_pickles(path: Path, kind: str) -> None:
    """Runs `pickle_scan` over every pickle `torch.load` would read, and checks that the tensor
    data they declare is present, before torch allocates it."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                members = {m.filename: m for m in archive.infolist()}
                pickles = [name for name in members if name.endswith(".pkl")]
                for name in pickles:
                    with archive.open(name) as stream:
                        result = pickle_scan.scan(stream)
                    prefix = name[: -len("data.pkl")] if name.endswith("data.pkl") else name.rsplit("/", 1)[0] + "/"
                    for key, storage in result.storages.items():
                        member = members.get(f"{prefix}data/{key}")
                        if member is None or member.file_size < storage.nbytes:
                            raise pickle_scan.PickleRefused(
                                f"declares {storage.nbytes} bytes of tensor data for storage '{printable(key)}' but "
                                f"holds {member.file_size if member else 0}",
                                unsafe=False,
                            )
        else:
            size = path.stat().st_size
            with path.open("rb") as stream:
                result = pickle_scan.scan(stream)
                if result.value == _LEGACY_MAGIC:  # then: protocol, system info, the object, storage keys
                    for _ in range(4):
                        pickle_scan.scan(stream, result)
            declared = sum(s.nbytes for s in result.storages.values())
            if declared > size:
                raise pickle_scan.PickleRefused(
                    f"declares {declared} bytes of tensor data but the whole file has {size}", unsafe=False
                )
    except pickle_scan.PickleRefused as refusal:
        if refusal.unsafe:
            raise UnsafeModelError(
                path,
                f"{refusal}; it was refused because it is not plain weights.",
                "Use a .safetensors version of this model, or re-save only its state dict from a trusted Python "
                "session.",
            ) from None
        raise ModelFileError(path, f"is a damaged PyTorch file: it {refusal}.", _DOWNLOAD_AGAIN) from None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ModelFileError(
            path, f"is a truncated or damaged PyTorch file ({_short(error)}).", _DOWNLOAD_AGAIN
        ) from None


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _read_torch_pickle(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        found = _GLOBAL_RE.search(message)
        what = f"the Python object '{found.group(1)}'" if found else "Python objects that are not weights"
        raise UnsafeModelError(
            path,
            f"contains {what}; it was refused because unpickling it could run code.",
            "Use a .safetensors version of this model, or re-save only its state dict from a trusted Python session.",
        ) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        struct.error,
        KeyError,
        IndexError,
        AttributeError,
        TypeError,
    ) as error:
        raise ModelFileError(
            path, f"is a truncated or damaged PyTorch file ({_short(error)}).", _DOWNLOAD_AGAIN
        ) from None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:160]


def canonicalize(raw: Any, path: str | Path = "<state dict>") -> StateDict:
    """Unwraps training wrappers and strips prefixes, leaving `{key: tensor}`.

    Wrappers: `params_ema` (preferred over `params`), `params`, `model_state_dict`, `state_dict`,
    `model`, `net`, `netG`, `generator`, or a dict with a single dict inside. Prefixes stripped when
    every key carries them: `module.` (DataParallel), `netG.`, `_orig_mod.` (torch.compile, which
    also inserts `._orig_mod.` after a compiled sub-module's name). Non-tensor entries (epoch
    numbers, metadata) are dropped.
    """
    if isinstance(raw, torch.Tensor) or not isinstance(raw, Mapping):
        raise ModelFileError(
            path,
            f"holds a {type(raw).__name__}, not a state dict of named weights.",
            "It may be a different kind of file; use the model's weights file.",
        )
    state: Mapping[str, Any] = raw
    for _ in range(4):
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None and len(state) == 1:
            only = next(iter(state.values()))
            inner = only if isinstance(only, Mapping) else None
        if inner is None:
            break
        state = inner
    tensors = {str(k).replace("._orig_mod.", "."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    changed = True
    while changed and tensors:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                changed = True
    if not tensors:
        keys = ", ".join(printable(str(k)) for k in list(state.keys())[:10])
        kind = recognise_non_upscaler(map(str, state.keys()))
        problem = f"is {kind}" if kind else "contains no weight tensors"
        raise ModelFileError(
            path,
            f"{problem} (top-level keys: {keys or 'none'}).",
            "It is not an upscaler checkpoint; use the model's weights file.",
        )
    return tensors


#: (key prefixes, how many must occur, what the file is) for checkpoints that are not upscalers.
_NOT_UPSCALERS = (
    (("state", "param_groups"), 2, "an optimizer state, not model weights"),
    (("encoder.", "decoder.", "quant_conv."), 2, "an image VAE (autoencoder), not an upscaler"),
    (("text_model.", "transformer.text_model."), 1, "a text encoder, not an upscaler"),
    (("model.diffusion_model.", "diffusion_model.", "input_blocks."), 1, "a diffusion model (UNet), not an upscaler"),
    (("lora_unet_", "lora_te_"), 1, "a LoRA, not an upscaler"),
)


def recognise_non_upscaler(keys: Iterable[str]) -> str | None:
    """Names well-known checkpoint kinds that are not upscalers (for error messages)."""
    keys = list(keys)
    for prefixes, needed, what in _NOT_UPSCALERS:
        if sum(1 for p in prefixes if any(k == p or k.startswith(p) for k in keys)) >= needed:
            return what
    return None


def top_level_keys(state_dict: Mapping[str, Any], limit: int = 10) -> list[str]:
    """Distinct leading key components (`body.0.weight` -> `body`), in file order, for messages."""
    seen: dict[str, None] = {}
    for key in state_dict:
        seen.setdefault(printable(str(key).split(".")[0]), None)
        if len(seen) >= limit:
            break
    return list(seen)
