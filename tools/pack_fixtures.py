"""Packs the ParagonSR2 reference test vectors that the tests need into `tests/fixtures/`.

    python tools/pack_fixtures.py SOURCE_DIR

The reference set (46 MB) is produced by the upstream implementation; the tests need a subset
covering realtime, stream, photo, pro, the older v5 family, files without LayerScale gammas and
video feedback. Random fp32 weights compress poorly as they are, so each file is stored with
its tensor data split into byte planes (all first bytes of every 4-byte word, then all second
bytes, ...) and xz-compressed: the planes holding signs and exponents compress well, and the
round trip is exact (`tests/fixtures.py` unpacks and checks each file's SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "tests" / "fixtures" / "paragonsr2"
#: Models the tests use, and for each the io tensors they read (None: all of them).
SUBSET = {
    "paragonsr2_realtime_x2": None,  # video feedback: every tensor
    "paragonsr2_realtime_x2_nogamma": None,
    "paragonsr2_stream_x2": None,
    "paragonsr2_photo_x2": ("input", "output_alpha0.0", "output_alpha0.4"),
    "paragonsr2_pro_x2": ("input", "output_alpha0.0", "output_alpha0.4"),
    "paragonsr2v5_nano_x2": None,
}
MAGIC = b"TWFX1\n"


def pack_bytes(raw: bytes) -> bytes:
    """safetensors bytes -> MAGIC, data start (u64), the header as is, the data as byte planes, xz."""
    (header_len,) = struct.unpack("<Q", raw[:8])
    start = 8 + header_len
    data = raw[start:]
    words = len(data) // 4 * 4
    planes = b"".join(data[i:words:4] for i in range(4)) + data[words:]
    return MAGIC + struct.pack("<Q", start) + lzma.compress(raw[:start] + planes, preset=9 | lzma.PRESET_EXTREME)


def unpack_bytes(packed: bytes) -> bytes:
    if not packed.startswith(MAGIC):
        raise ValueError("not a packed fixture")
    (start,) = struct.unpack("<Q", packed[len(MAGIC):len(MAGIC) + 8])
    body = lzma.decompress(packed[len(MAGIC) + 8:])
    head, planes = body[:start], body[start:]
    words = len(planes) // 4 * 4
    quarter = words // 4
    data = bytearray(words)
    for i in range(4):
        data[i::4] = planes[i * quarter:(i + 1) * quarter]
    return head + bytes(data) + planes[words:]


def subset_io(path: Path, keep: tuple[str, ...]) -> bytes:
    from safetensors.torch import load_file, save

    tensors = load_file(str(path))
    return save({k: tensors[k].contiguous() for k in keep})


def main(source: Path) -> int:
    TARGET.mkdir(parents=True, exist_ok=True)
    manifest = [m for m in json.loads((source / "manifest.json").read_text()) if Path(m["file"]).stem in SUBSET]
    manifest_v5 = [m for m in json.loads((source / "manifest_v5.json").read_text()) if Path(m["file"]).stem in SUBSET]
    digests = {}
    for stem, keep in SUBSET.items():
        io_name = f"{stem}.io.safetensors"
        files = {
            f"{stem}.safetensors": (source / f"{stem}.safetensors").read_bytes(),
            io_name: (source / io_name).read_bytes() if keep is None else subset_io(source / io_name, keep),
        }
        for name, data in files.items():
            digests[name] = hashlib.sha256(data).hexdigest()
            (TARGET / f"{name}.xz").write_bytes(pack_bytes(data))
            assert unpack_bytes((TARGET / f"{name}.xz").read_bytes()) == data
    for entry in manifest:
        keep = SUBSET[Path(entry["file"]).stem]
        if keep is not None:
            entry["io_tensors"] = list(keep)
    (TARGET / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (TARGET / "manifest_v5.json").write_text(json.dumps(manifest_v5, indent=1) + "\n")
    (TARGET / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(digests.items())))
    total = sum(p.stat().st_size for p in TARGET.iterdir())
    print(f"{len(digests)} files, {total / 2**20:.2f} MiB in {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
