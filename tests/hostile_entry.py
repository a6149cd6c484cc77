"""Runs hostile model files through one entry point, in a process the test limits (memory, time).

    python hostile_entry.py ENTRY FOLDER IMAGE OUT_DIR

ENTRY is `info` or `upscale` (the CLI, in-process, one call per file), `images` (the CLI
upscaling each file of FOLDER as an image with the built-in 4x model), `scan` (the engine's
`scan_folder`) or `a1111` (the WebUI extension's model listing at start-up, on the stand-in
host, then its `do_upscale` with each). Prints one JSON line per file: {"file", "code",
"message"} (code: the CLI's exit status; for `scan`, 0 when the file has a refusal message;
for `a1111`, 0 when the file is listed and upscaling with it returns the image unchanged), then
"done". A crash, a hang or a
memory bomb shows as a missing "done" (the test runs this under a time and memory limit).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(entry: str, folder: Path, image: Path, out_dir: Path) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if entry in ("info", "upscale", "images"):
        from tilewise import cli

        for path in files:
            stderr = io.StringIO()
            target = out_dir / f"{path.stem}.png"
            argv = {
                "info": ["info", str(path)],
                "upscale": ["upscale", str(image), "--model", str(path), "-o", str(target), "-q"],
                "images": ["upscale", str(path), "--model", "builtin:magic-kernel-sharp-4x", "-o", str(target), "-q"],
            }[entry]
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(argv)
            report(path, code, stderr.getvalue(), written=target.exists())
    elif entry == "scan":
        from tilewise.engine.model.catalog import scan_folder

        for item in scan_folder(folder):
            report(item.path, 0 if item.error else -1, item.error or "")
    elif entry == "a1111":
        import logging

        import pytest

        sys.path.insert(0, str(HERE))
        from test_a1111 import Host, _forget_host

        log = io.StringIO()
        logging.getLogger().addHandler(logging.StreamHandler(log))
        with pytest.MonkeyPatch.context() as monkeypatch:
            host = Host(out_dir / "webui", monkeypatch)
            for path in files:
                host.add(path)
            listed = {Path(d.data_path).name: d for d in host.start()}
            from PIL import Image

            image = Image.new("RGB", (16, 12), (90, 90, 90))
            unchanged = {
                name: entry.scaler.do_upscale(image, entry.data_path) is image for name, entry in listed.items()
            }
            _forget_host()
        lines = log.getvalue().splitlines()
        for path in files:
            said = [line for line in lines if path.name in line]
            report(path, 0 if unchanged.get(path.name) else -1, "\n".join(said))
    print("done", flush=True)


def report(path: Path, code: int, message: str, written: bool = False) -> None:
    print(json.dumps({"file": path.name, "code": code, "message": message, "written": written}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
