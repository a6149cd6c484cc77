"""The ParagonSR2 reference test vectors the tests use, bundled in `tests/fixtures/paragonsr2/`.

They are a subset (about 11 MB) of the upstream implementation's vectors, covering realtime,
stream, photo, pro, the older v5 family, files without LayerScale gammas and video feedback.
Each file is stored with its tensor data split into byte planes (all first bytes of the 4-byte
words, then all second bytes, ...) and xz-compressed, which shrinks random fp32 weights by
about a sixth where plain xz gains almost nothing; the round trip is exact and every unpacked
file is checked against `SHA256SUMS`. `tools/pack_fixtures.py` writes them.

`$PARAGONSR2_FIXTURES` names a folder with the full set instead (more scales and variants).
"""

from __future__ import annotations

import atexit
import hashlib
import lzma
import os
import shutil
import struct
import tempfile
from pathlib import Path

BUNDLED = Path(__file__).resolve().parent / "fixtures" / "paragonsr2"
MAGIC = b"TWFX1\n"


def pack_bytes(raw: bytes) -> bytes:
    """safetensors bytes -> MAGIC, the data start (u64), then xz of the header as is followed by
    the tensor data as four byte planes (a tail of fewer than 4 bytes as is)."""
    (header_len,) = struct.unpack("<Q", raw[:8])
    start = 8 + header_len
    data = raw[start:]
    words = len(data) // 4 * 4
    planes = b"".join(data[i:words:4] for i in range(4)) + data[words:]
    return MAGIC + struct.pack("<Q", start) + lzma.compress(raw[:start] + planes, preset=9 | lzma.PRESET_EXTREME)


def unpack_bytes(packed: bytes) -> bytes:
    if not packed.startswith(MAGIC):
        raise ValueError("not a packed test vector file")
    (start,) = struct.unpack("<Q", packed[len(MAGIC) : len(MAGIC) + 8])
    body = lzma.decompress(packed[len(MAGIC) + 8 :])
    head, planes = body[:start], body[start:]
    words = len(planes) // 4 * 4
    quarter = words // 4
    data = bytearray(words)
    for i in range(4):
        data[i::4] = planes[i * quarter : (i + 1) * quarter]
    return head + bytes(data) + planes[words:]


def folder() -> Path:
    """`$PARAGONSR2_FIXTURES` when set, else the bundled subset unpacked into a temporary folder
    (removed when the process exits)."""
    explicit = os.environ.get("PARAGONSR2_FIXTURES")
    if explicit:
        return Path(explicit)
    target = Path(tempfile.mkdtemp(prefix="tilewise-vectors-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    sums = dict(line.split()[::-1] for line in (BUNDLED / "SHA256SUMS").read_text().splitlines() if line.strip())
    for packed in sorted(BUNDLED.glob("*.xz")):
        name = packed.name[: -len(".xz")]
        data = unpack_bytes(packed.read_bytes())
        if hashlib.sha256(data).hexdigest() != sums.get(name):
            raise RuntimeError(
                f"{packed}: unpacks to data that does not match SHA256SUMS; the bundled test vectors are damaged"
            )
        (target / name).write_bytes(data)
    for manifest in ("manifest.json", "manifest_v5.json"):
        shutil.copy(BUNDLED / manifest, target / manifest)
    return target
