"""Packs the ParagonSR2 reference test vectors that the tests need into `tests/fixtures/`.

    python tools/pack_fixtures.py SOURCE_DIR

The reference set (46 MB) is produced by the upstream implementation; the tests need a subset
covering realtime, stream, photo, pro, the older v5 family, files without LayerScale gammas and
video feedback. Random fp32 weights compress poorly as they are, so each file is stored with
its tensor data split into byte planes (all first bytes of every 4-byte word, then all second
bytes, ...) and xz-compressed: the planes holding signs and exponents compress well, and the
round trip is exact (`tests/reference_vectors.py` unpacks and checks each file's SHA-256).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference_vectors import pack_bytes, unpack_bytes  # noqa: E402

TARGET = ROOT / "tests" / "fixtures" / "paragonsr2"
#: Models the tests use, and for each the io tensors they read (None: all of them).
SUBSET = {
    "paragonsr2_realtime_x2": None,  # video feedback: every tensor
    "paragonsr2_realtime_x2_nogamma": None,
    "paragonsr2_stream_x2": None,
    "paragonsr2_photo_x2": (
        "input",
        "input_frame2",
        "output_alpha0.0",
        "output_alpha0.4",
        "video_output1",
        "video_output2",
    ),
    "paragonsr2_pro_x2": ("input", "input_frame2", "output_alpha0.0", "output_alpha0.4"),
    "paragonsr2v5_nano_x2": None,
}


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
