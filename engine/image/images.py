"""Image files <-> tensors, keeping bit depth: 8-bit, 16-bit PNG, float `.npy`.

Tensors are (1, C, H, W) float32 in [0, 1] with C = 1 (gray), 2 (gray+alpha), 3 (RGB), 4 (RGBA).
Pillow reads and writes everything except 16-bit colour PNG, which it cannot represent; pypng
(pure Python) handles PNGs of 16 bits per sample. Files are written to a temporary name and
renamed into place, so an interrupted or failed run never leaves a half-written image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import storage
from ..errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".npy")
WRITE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".npy")


@dataclass
class LoadedImage:
    tensor: torch.Tensor  # (1, C, H, W) float32 in [0, 1]
    bits: int  # 8, 16 or 32 (float)


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    channels: int


#: Bytes per pixel and channel while an image is decoded: the decoder's samples (up to 2 bytes),
#: a float32 array and the float32 tensor made from it.
DECODE_BYTES = 10


def read_header(path: str | Path) -> ImageHeader:
    """An image file's size and channels from its header alone (nothing is decoded); raises
    `ImageError` for a file that is no image or claims more pixels than any decoder should try
    (Pillow's decompression-bomb limit, about 179 MP: it is refused, not raised process-wide)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.suffix.lower() == ".npy":
        shape = _npy_shape(path)
        return ImageHeader(shape[1], shape[0], shape[2] if len(shape) == 3 else 1)
    try:
        with Image.open(path) as image:
            return ImageHeader(image.width, image.height, len(image.getbands()))
    except _PILLOW_ERRORS as error:
        raise _unreadable(path, error) from None


#: What Pillow raises for a file it will not decode (its bomb limit included).
_PILLOW_ERRORS = (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError)


def _unreadable(path: Path, error: BaseException) -> ImageError:
    """The message for an image Pillow refuses: too large to decode safely (its bomb limit), or unreadable."""
    if isinstance(error, Image.DecompressionBombError):
        return ImageError(f"{path}: the image is too large to decode safely ({error}); split or downscale it first")
    return ImageError(f"{path}: cannot read this image ({error}); use PNG, JPEG, WebP, TIFF or BMP")


def check_decodable(path: str | Path, header: ImageHeader | None = None) -> ImageHeader:
    """Refuses, from the header, an image whose decoding alone would not fit the free memory."""
    from ..compute import devices

    header = header or read_header(path)
    need = header.width * header.height * max(header.channels, 1) * DECODE_BYTES
    free = devices.active().free_memory(torch.device("cpu"))  # the host's answer inside a host
    if free is not None and need > free:
        raise ImageError(
            f"{path}: the image is {header.width}x{header.height}; decoding it needs about {need / 2**30:.1f} GiB "
            f"but only {free / 2**30:.1f} GiB is free; split or downscale it first"
        )
    return header


def read_image(path: str | Path, header: ImageHeader | None = None) -> LoadedImage:
    """Reads an image file; raises `ImageError` saying what is wrong with it. The size is checked
    from the header before anything is decoded (`check_decodable`)."""
    path = Path(path)
    check_decodable(path, header)  # `header`: already read by the caller (the CLI checks the result's size first)
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    if path.suffix.lower() == ".png" and _png_bit_depth(path) == 16:
        return _read_png16(path)
    try:
        with Image.open(path) as image:
            image.load()
            return _from_pil(image)
    except _PILLOW_ERRORS as error:
        raise _unreadable(path, error) from None


def check_readable(path: str | Path) -> None:
    """Cheap validation (header only) so a batch can fail before anything is written."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.suffix.lower() == ".npy":
        _npy_shape(path)
        return
    try:
        with Image.open(path) as image:
            image.verify()
    except _PILLOW_ERRORS as error:
        raise _unreadable(path, error) from None


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> (1, C, H, W) float32 in [0, 1] (used by hosts that hand over PIL images)."""
    return _from_pil(image).tensor


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """(1, C, H, W) or (C, H, W) float in [0, 1] -> 8-bit PIL image (L, LA, RGB or RGBA)."""
    array = _to_uint(tensor, 8)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    return Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)


def _from_pil(image: Image.Image) -> LoadedImage:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0
        return LoadedImage(_hwc_to_tensor(array[:, :, None]), 16)
    if mode == "I":
        data = np.asarray(image, dtype=np.int64)
        peak = 65535.0 if data.max(initial=0) > 255 else 255.0
        return LoadedImage(
            _hwc_to_tensor((np.clip(data, 0, peak) / peak).astype(np.float32)[:, :, None]), 16 if peak > 255 else 8
        )
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        return LoadedImage(_hwc_to_tensor(np.clip(array, 0, 1)[:, :, None]), 32)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in mode else "RGB")
    array = np.asarray(image, dtype=np.uint8).astype(np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return LoadedImage(_hwc_to_tensor(array), 8)


def _hwc_to_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].float()


def _png_bit_depth(path: Path) -> int:
    with path.open("rb") as f:
        header = f.read(26)
    return header[24] if len(header) >= 26 and header[:8] == b"\x89PNG\r\n\x1a\n" else 8


def _read_png16(path: Path) -> LoadedImage:
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except (png.Error, OSError, ValueError) as error:
        raise ImageError(f"{path}: cannot read this 16-bit PNG ({error})") from None
    planes = info["planes"]
    array = array.reshape(height, width, planes).astype(np.float32) / 65535.0
    return LoadedImage(_hwc_to_tensor(array), 16)


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The shape a `.npy` file declares, from its header alone, checked to be an image's."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = reader(f)
    except (ValueError, OSError, SyntaxError, TypeError) as error:
        raise ImageError(f"{path}: cannot read this .npy array ({error})") from None
    if (
        len(shape) not in (2, 3)
        or (len(shape) == 3 and not 1 <= shape[2] <= 4)
        or dtype.kind not in "fiu"
        or 0 in shape
    ):
        raise ImageError(f"{path}: a .npy image must be an H x W x C array with 1 to 4 channels, got {shape} {dtype}")
    size = path.stat().st_size
    if math.prod(shape) * dtype.itemsize > size:
        raise ImageError(
            f"{path}: the .npy header declares a {'x'.join(map(str, shape))} array but the file holds only {size} "
            f"bytes (truncated or malformed)"
        )
    return shape


def _read_npy(path: Path) -> LoadedImage:
    _npy_shape(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ImageError(f"{path}: cannot read this .npy array ({error})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4 or array.dtype.kind not in "fiu":
        raise ImageError(
            f"{path}: a .npy image must be an H x W x C array with 1 to 4 channels, got {array.shape} {array.dtype}"
        )
    if array.dtype.kind in "iu":
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    return LoadedImage(_hwc_to_tensor(array.astype(np.float32)), 32)


def _to_uint(tensor: torch.Tensor, bits: int) -> np.ndarray:
    """(1, C, H, W) / (C, H, W) float -> H x W x C unsigned ints, rounded to nearest."""
    if tensor.ndim == 4:
        tensor = tensor[0]
    peak = 65535 if bits == 16 else 255
    array = tensor.detach().float().clamp(0, 1).mul(peak).round().to("cpu").numpy()
    return np.ascontiguousarray(array.transpose(1, 2, 0)).astype(np.uint16 if bits == 16 else np.uint8)


def write_image(path: str | Path, tensor: torch.Tensor, bits: int = 8, quality: int = 95) -> Path:
    """Writes (1, C, H, W) float in [0, 1]; the format follows the extension.

    `.png`: 8-bit, or 16-bit when `bits` is 16 or 32. `.jpg`: 8-bit, alpha dropped (JPEG has none).
    `.webp`, `.tif`: 8-bit. `.npy`: float32 H x W x C, bit-exact.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_EXTENSIONS:
        raise ImageError(f"{path}: cannot write '{path.suffix}' images; use one of {', '.join(WRITE_EXTENSIONS)}")
    channels = tensor.shape[-3] if tensor.ndim >= 3 else 0
    if tensor.ndim not in (3, 4) or (tensor.ndim == 4 and tensor.shape[0] != 1) or not 1 <= channels <= 4:
        raise ImageError(
            f"{path}: cannot write an image of shape {tuple(tensor.shape)}; give (1, C, H, W) with 1 to 4 channels"
        )
    with storage.replacing(path, suffix) as temporary:
        _write(temporary, suffix, tensor, bits, quality)
    return path


def _write(path: Path, suffix: str, tensor: torch.Tensor, bits: int, quality: int) -> None:
    if suffix == ".npy":
        t = tensor[0] if tensor.ndim == 4 else tensor
        np.save(path, np.ascontiguousarray(t.detach().float().cpu().numpy().transpose(1, 2, 0)))
        return
    if suffix == ".png" and bits > 8:
        import png

        array = _to_uint(tensor, 16)
        height, width, planes = array.shape
        writer = png.Writer(width, height, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16)
        with path.open("wb") as f:
            writer.write(f, array.reshape(height, width * planes))
        return
    image = tensor_to_pil(tensor)
    if suffix in (".jpg", ".jpeg"):
        image = image.convert("L" if image.mode in ("L", "LA") else "RGB")
        image.save(path, format="JPEG", quality=quality)
    elif suffix == ".webp":
        image.save(path, format="WEBP", quality=quality)
    elif suffix in (".tif", ".tiff"):
        image.save(path, format="TIFF", compression="tiff_deflate")
    else:
        image.save(path, format="PNG")
