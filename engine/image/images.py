"""Image files <-> tensors, keeping what a photographer expects to keep.

Tensors are (1, C, H, W) float32 in [0, 1] with C = 1 (gray), 2 (gray+alpha), 3 (RGB), 4 (RGBA).
- Bit depth: 8-bit, 16-bit PNG and TIFF, float TIFF and `.npy`. Pillow reads and writes
  everything except 16-bit colour PNG (pypng, pure Python) and TIFF beyond 8 bits (Pillow reads
  a 16-bit RGB TIFF as 8-bit and cannot open a float one), for which `tifffile` reads and writes.
- Orientation: the EXIF orientation is applied on read, as every viewer does, so the model sees
  the picture upright; the written EXIF then says 1 (upright).
- Metadata (`ImageMetadata`): the ICC profile, DPI and EXIF go to every output format that holds
  them (PNG, JPEG, WebP: all three; TIFF: ICC and DPI). A wide-gamut photo keeps its colours.
- Frames: GIF, animated WebP and PNG, and multi-page TIFF are read frame by frame
  (`read_frames`); `write_frames` writes every frame, with durations and loop, to a format that
  holds frames (PNG as APNG, GIF, WebP, TIFF) and refuses one that does not.
Files are written to a temporary name and renamed into place, so an interrupted or failed run
never leaves a half-written image.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError

from .. import storage
from ..choices import FRAME_EXTENSIONS, WRITE_EXTENSIONS
from ..errors import ImageError

TIFF_EXTENSIONS = (".tif", ".tiff")
EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageMetadata:
    """What an output keeps of its input besides the pixels (None: the input had none)."""

    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    exif: bytes | None = None  # with the orientation reset to 1: the pixels are upright already


@dataclass
class LoadedImage:
    tensor: torch.Tensor  # (1, C, H, W) float32 in [0, 1], upright
    bits: int  # 8, 16 or 32 (float)
    metadata: ImageMetadata = field(default_factory=ImageMetadata)


@dataclass
class LoadedFrames:
    """A multi-frame image: `frames` yields one `LoadedImage` at a time (decoded as it goes)."""

    frames: Iterator[LoadedImage]
    count: int
    durations: list[int]  # milliseconds per frame (0 where the file gives none)
    loop: int | None  # 0 = forever, N = N times, None = the file says nothing
    bits: int
    metadata: ImageMetadata


@dataclass(frozen=True)
class ImageHeader:
    width: int  # upright, after the EXIF orientation
    height: int
    channels: int
    frames: int = 1


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
    if path.suffix.lower() in TIFF_EXTENSIONS:
        return _tiff_header(path)
    try:
        with Image.open(path) as image:
            width, height = image.width, image.height
            if _orientation(image) in (5, 6, 7, 8):  # turned by a quarter
                width, height = height, width
            return ImageHeader(width, height, len(image.getbands()), getattr(image, "n_frames", 1))
    except _PILLOW_ERRORS as error:
        raise _unreadable(path, error) from None


#: What Pillow raises for a file it will not decode (its bomb limit included).
_PILLOW_ERRORS = (
    Image.DecompressionBombError,
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
)


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
    if path.suffix.lower() in TIFF_EXTENSIONS:
        return next(_read_tiff(path).frames)
    try:
        with Image.open(path) as image:
            if path.suffix.lower() == ".png" and _png_bit_depth(path) == 16:  # Pillow would make it 8-bit
                metadata, orientation = _pil_metadata(image), _orientation(image)
                loaded = _read_png16(path)
                return LoadedImage(_oriented(loaded.tensor, orientation), 16, metadata)
            image.load()
            metadata = _pil_metadata(image)
            loaded = _from_pil(image)
            return LoadedImage(_oriented(loaded.tensor, _orientation(image)), loaded.bits, metadata)
    except _PILLOW_ERRORS as error:
        raise _unreadable(path, error) from None


def read_frames(path: str | Path, header: ImageHeader | None = None) -> LoadedFrames:
    """Every frame of a multi-frame image (GIF, animated WebP or PNG, multi-page TIFF), decoded one
    at a time as `frames` is iterated, with the durations and loop count of the file."""
    path = Path(path)
    check_decodable(path, header)
    if path.suffix.lower() in TIFF_EXTENSIONS:
        return _read_tiff(path)
    try:
        image = Image.open(path)
        count = getattr(image, "n_frames", 1)
        metadata, orientation = _pil_metadata(image), _orientation(image)
        durations = []
        for frame in ImageSequence.Iterator(image):
            durations.append(int(frame.info.get("duration", 0) or 0))
        loop = image.info.get("loop")
        image.seek(0)
    except _PILLOW_ERRORS as error:
        raise _unreadable(path, error) from None

    def frames() -> Iterator[LoadedImage]:
        with image:
            for index in range(count):
                try:
                    image.seek(index)
                    see_through = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
                    frame = image.convert("RGBA" if see_through else "RGB")  # every frame whole, one mode
                    loaded = _from_pil(frame)
                except _PILLOW_ERRORS as error:
                    raise _unreadable(path, error) from None
                yield LoadedImage(_oriented(loaded.tensor, orientation), loaded.bits, metadata)

    return LoadedFrames(frames(), count, durations, None if loop is None else int(loop), 8, metadata)


def _oriented(tensor: torch.Tensor, orientation: int) -> torch.Tensor:
    """(1, C, H, W) stored pixels -> upright, for an EXIF/TIFF orientation 1-8."""
    flips = {
        2: lambda t: t.flip(-1),
        3: lambda t: t.flip(-1, -2),
        4: lambda t: t.flip(-2),
        5: lambda t: t.transpose(-1, -2),
        6: lambda t: t.transpose(-1, -2).flip(-1),
        7: lambda t: t.transpose(-1, -2).flip(-1, -2),
        8: lambda t: t.transpose(-1, -2).flip(-2),
    }
    return flips[orientation](tensor).contiguous() if orientation in flips else tensor


def _pil_metadata(image: Image.Image) -> ImageMetadata:
    icc = image.info.get("icc_profile") or None
    dpi = image.info.get("dpi")
    raw = _raw_exif(image)
    exif_bytes = _upright_exif(raw) if raw else None
    dpi_pair = (float(dpi[0]), float(dpi[1])) if isinstance(dpi, tuple) and len(dpi) == 2 and all(dpi) else None
    return ImageMetadata(icc if isinstance(icc, bytes) else None, dpi_pair, exif_bytes)


def _orientation_entry(exif: bytes) -> tuple[str, int | None] | None:
    """(byte order, offset of the orientation value or None) in a raw EXIF block, read from its
    first directory alone; None when it is not a valid EXIF block. Reading the raw block, not
    Pillow's `getexif()`, never decodes the image (a PNG's `getexif()` may)."""
    start = 6 if exif.startswith(b"Exif\x00\x00") else 0
    order = exif[start : start + 2]
    if order not in (b"II", b"MM"):
        return None
    endian = "<" if order == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(endian + "I", exif, start + 4)
        (count,) = struct.unpack_from(endian + "H", exif, start + ifd)
        for index in range(count):
            entry = start + ifd + 2 + 12 * index
            tag, kind = struct.unpack_from(endian + "HH", exif, entry)
            if tag == EXIF_ORIENTATION and kind == 3:  # SHORT, stored in the entry itself
                return endian, entry + 8
    except struct.error:
        return None
    return endian, None


def _raw_exif(image: Image.Image) -> bytes | None:
    raw = image.info.get("exif")
    return raw if isinstance(raw, bytes) and raw else None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) from the file's raw EXIF block, without decoding the image."""
    raw = _raw_exif(image)
    found = _orientation_entry(raw) if raw else None
    if raw is None or found is None or found[1] is None:
        return 1
    (value,) = struct.unpack_from(found[0] + "H", raw, found[1])
    return value if 1 <= value <= 8 else 1


def _upright_exif(exif: bytes) -> bytes | None:
    """The EXIF block as stored, byte for byte (maker notes, GPS and all), with its orientation
    set to 1; None when it is not a valid EXIF block."""
    found = _orientation_entry(exif)
    if found is None:
        return None
    data = bytearray(exif)
    if found[1] is not None:
        struct.pack_into(found[0] + "H", data, found[1], 1)
    return bytes(data)


def _tiff_header(path: Path) -> ImageHeader:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert isinstance(page, tifffile.TiffPage)
            shape = page.shape
            height, width = int(page.imagelength), int(page.imagewidth)
            channels = int(page.samplesperpixel)
            orientation = _tiff_orientation(page.tags)
            count = len(tif.pages)
    except Exception as error:  # noqa: BLE001 - tifffile raises many kinds for a broken file
        raise ImageError(f"{path}: cannot read this TIFF ({error})") from None
    if len(shape) not in (2, 3) or not 1 <= channels <= 4:
        raise ImageError(f"{path}: a TIFF image must have 1 to 4 samples per pixel, got shape {shape}")
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageHeader(width, height, channels, count)


def _read_tiff(path: Path) -> LoadedFrames:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        pages = list(tif.pages)
        first = pages[0]
        assert isinstance(first, tifffile.TiffPage)
        tags = first.tags
        icc = tags["InterColorProfile"].value if "InterColorProfile" in tags else None
        dpi = _tiff_dpi(tags)
        orientation = _tiff_orientation(tags)
        dtype = np.dtype(first.dtype)
    except Exception as error:  # noqa: BLE001 - tifffile raises many kinds for a broken file
        raise ImageError(f"{path}: cannot read this TIFF ({error})") from None
    bits = 32 if dtype.kind == "f" else (16 if dtype.itemsize >= 2 else 8)
    metadata = ImageMetadata(bytes(icc) if icc is not None else None, dpi, None)

    def frames() -> Iterator[LoadedImage]:
        with tif:
            for page in pages:
                try:
                    array = page.asarray()
                except Exception as error:  # noqa: BLE001
                    raise ImageError(f"{path}: cannot read this TIFF ({error})") from None
                yield LoadedImage(_oriented(_hwc_to_tensor(_unit_float(array, path)), orientation), bits, metadata)

    return LoadedFrames(frames(), len(pages), [0] * len(pages), None, bits, metadata)


def _tiff_orientation(tags) -> int:
    tag = tags.get(274)  # Orientation
    value = int(tag.value) if tag is not None else 1
    return value if 1 <= value <= 8 else 1


def _tiff_dpi(tags) -> tuple[float, float] | None:
    try:
        x, y = tags["XResolution"].value, tags["YResolution"].value
        unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        per_inch = {2: 1.0, 3: 2.54}.get(unit)
        if per_inch is None:
            return None
        return (x[0] / x[1] * per_inch, y[0] / y[1] * per_inch)
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None


def _unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    """An H x W [x C] sample array -> H x W x C float32 in [0, 1] (floats as stored)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4 or array.dtype.kind not in "fiub":
        raise ImageError(f"{path}: cannot use an image of shape {array.shape} and type {array.dtype}")
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind == "b":
        return array.astype(np.float32)
    return array.astype(np.float32) / float(np.iinfo(array.dtype).max)


def check_readable(path: str | Path) -> None:
    """Cheap validation (header only) so a batch can fail before anything is written."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.suffix.lower() == ".npy":
        _npy_shape(path)
        return
    if path.suffix.lower() in TIFF_EXTENSIONS:
        _tiff_header(path)
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


def write_image(
    path: str | Path,
    tensor: torch.Tensor,
    bits: int = 8,
    quality: int = 95,
    metadata: ImageMetadata | None = None,
) -> Path:
    """Writes (1, C, H, W) float in [0, 1]; the format follows the extension.

    `.png`: 8-bit, or 16-bit when `bits` is 16 or 32. `.tif`: 8-bit, 16-bit, or float32 when
    `bits` is 32. `.jpg`: 8-bit, alpha dropped (JPEG has none). `.webp`, `.gif`: 8-bit.
    `.npy`: float32 H x W x C, bit-exact. `metadata` goes where the format holds it.
    """
    path = Path(path)
    suffix = _checked_suffix(path)
    _check_shape(path, tensor)
    with storage.replacing(path, suffix) as temporary:
        _write(temporary, suffix, tensor, bits, quality, metadata or ImageMetadata())
    return path


def write_frames(
    path: str | Path,
    tensors: Sequence[torch.Tensor],
    durations: Sequence[int],
    loop: int | None,
    bits: int = 8,
    quality: int = 95,
    metadata: ImageMetadata | None = None,
) -> Path:
    """Writes several frames into one file of a format that holds frames (`FRAME_EXTENSIONS`: PNG as
    APNG, GIF, WebP, TIFF pages), with each frame's duration (ms) and the loop count."""
    path = Path(path)
    suffix = _checked_suffix(path)
    if suffix not in FRAME_EXTENSIONS:
        raise ImageError(
            f"{path}: a {suffix.lstrip('.').upper()} file holds one picture, but the input has {len(tensors)} "
            f"frames; name the output .png (animated PNG), .gif, .webp or .tif to keep them all"
        )
    for tensor in tensors:
        _check_shape(path, tensor)
    meta = metadata or ImageMetadata()
    with storage.replacing(path, suffix) as temporary:
        if suffix in TIFF_EXTENSIONS:
            _write_tiff(temporary, list(tensors), bits, meta)
        else:
            images = [tensor_to_pil(t) for t in tensors]
            options: dict = {"save_all": True, "append_images": images[1:], "duration": list(durations)}
            if loop is not None:
                options["loop"] = loop
            if suffix == ".gif":
                options["disposal"] = 2  # each frame replaces the last, as the decoded frames are whole
            _save_pil(images[0], temporary, suffix, quality, meta, **options)
    return path


def _checked_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in WRITE_EXTENSIONS:
        raise ImageError(f"{path}: cannot write '{path.suffix}' images; use one of {', '.join(WRITE_EXTENSIONS)}")
    return suffix


def _check_shape(path: Path, tensor: torch.Tensor) -> None:
    channels = tensor.shape[-3] if tensor.ndim >= 3 else 0
    if tensor.ndim not in (3, 4) or (tensor.ndim == 4 and tensor.shape[0] != 1) or not 1 <= channels <= 4:
        raise ImageError(
            f"{path}: cannot write an image of shape {tuple(tensor.shape)}; give (1, C, H, W) with 1 to 4 channels"
        )


def _write(path: Path, suffix: str, tensor: torch.Tensor, bits: int, quality: int, metadata: ImageMetadata) -> None:
    if suffix == ".npy":
        t = tensor[0] if tensor.ndim == 4 else tensor
        np.save(path, np.ascontiguousarray(t.detach().float().cpu().numpy().transpose(1, 2, 0)))
        return
    if suffix in TIFF_EXTENSIONS:
        _write_tiff(path, [tensor], bits, metadata)
        return
    if suffix == ".png" and bits > 8:
        _write_png16(path, tensor, metadata)
        return
    _save_pil(tensor_to_pil(tensor), path, suffix, quality, metadata)


def _save_pil(image: Image.Image, path: Path, suffix: str, quality: int, metadata: ImageMetadata, **options) -> None:
    extra: dict = {}
    if metadata.icc_profile and suffix != ".gif":
        extra["icc_profile"] = metadata.icc_profile
    if metadata.exif and suffix != ".gif":
        extra["exif"] = metadata.exif
    if metadata.dpi and suffix in (".png", ".jpg", ".jpeg"):
        extra["dpi"] = metadata.dpi
    if suffix in (".jpg", ".jpeg"):
        image = image.convert("L" if image.mode in ("L", "LA") else "RGB")
        image.save(path, format="JPEG", quality=quality, **extra, **options)
    elif suffix == ".webp":
        image.save(path, format="WEBP", **{"quality": quality, **extra, **options})
    elif suffix == ".gif":
        image.save(path, format="GIF", **options)
    else:
        image.save(path, format="PNG", **extra, **options)


def _write_png16(path: Path, tensor: torch.Tensor, metadata: ImageMetadata) -> None:
    """16 bits per sample with pypng, then the metadata chunks Pillow would write (iCCP, pHYs,
    eXIf) inserted before the image data."""
    import png

    array = _to_uint(tensor, 16)
    height, width, planes = array.shape
    writer = png.Writer(width, height, greyscale=planes <= 2, alpha=planes in (2, 4), bitdepth=16)
    buffer = io.BytesIO()
    writer.write(buffer, array.reshape(height, width * planes))
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    extra: list[tuple[bytes, bytes]] = []
    if metadata.icc_profile:
        extra.append((b"iCCP", b"ICC profile\x00\x00" + zlib.compress(metadata.icc_profile)))
    if metadata.dpi:
        per_metre = [max(1, round(d / 0.0254)) for d in metadata.dpi]
        extra.append((b"pHYs", struct.pack(">IIB", per_metre[0], per_metre[1], 1)))
    if metadata.exif:
        exif = metadata.exif[6:] if metadata.exif.startswith(b"Exif\x00\x00") else metadata.exif
        extra.append((b"eXIf", exif))
    with path.open("wb") as f:
        png.write_chunks(f, chunks[:1] + extra + chunks[1:])


def _write_tiff(path: Path, tensors: list[torch.Tensor], bits: int, metadata: ImageMetadata) -> None:
    """8-bit, 16-bit or float32 (`bits` 32) samples, deflate-compressed, one page per tensor, with
    the ICC profile and DPI (EXIF is not written into TIFF)."""
    import tifffile

    extratags = []
    if metadata.icc_profile:
        extratags.append((34675, 7, len(metadata.icc_profile), metadata.icc_profile, True))
    with tifffile.TiffWriter(path) as tif:
        for tensor in tensors:
            t = tensor[0] if tensor.ndim == 4 else tensor
            if bits == 32:
                array = np.ascontiguousarray(t.detach().float().cpu().numpy().transpose(1, 2, 0))
            else:
                array = _to_uint(tensor, 16 if bits == 16 else 8)
            planes = array.shape[2]
            if planes == 1:
                array = array[:, :, 0]
            tif.write(
                array,
                photometric="minisblack" if planes <= 2 else "rgb",
                extrasamples=("unassalpha",) if planes in (2, 4) else None,
                compression="zlib",
                resolution=metadata.dpi,
                resolutionunit="INCH" if metadata.dpi else None,
                extratags=extratags,
            )
