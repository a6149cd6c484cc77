"""Command line: `python -m tilewise upscale ...`, `upscale-video`, `models`, `info`, `export-onnx`, `doctor`.

Every command that takes a model accepts a weights file, an `.onnx` file or a built-in name.

- A user error (bad option, missing input file, unreadable image or model, unavailable device,
  missing optional package) exits with status 2 and one line on stderr, before anything is written.
- Several inputs keep going past a file that fails: one line per failure, a summary at the end,
  status 1 if any failed (`--fail-fast` stops at the first instead). Outputs are written
  atomically, so nothing partial is ever left on disk.
- An input is never written over, and an existing output only with `--overwrite`.
- `--help`, `--version` and argument errors answer without importing torch (the engine's
  choices come from `engine/choices.py`; everything else is imported when work starts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import __version__
from .engine import (
    ALPHA_MODES,
    FILTERS,
    FIRST_FRAME_CONVENTIONS,
    IMAGE_EXTENSIONS,
    PRECISIONS,
    SCENE_CUT_THRESHOLD,
    TEMPORAL_MODES,
    WRITE_EXTENSIONS,
    ImageError,
    ModelFileError,
    TilewiseError,
    named_message,
)

DEFAULT_MODEL = "builtin:paragonsr2-realtime-2x"  # bundled; see models/README.md
EXIT_USAGE = 2
EXIT_FAILURE = 1
#: Optional packages -> the extra that installs them (a missing one is a user error naming it).
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "av": "video", "spandrel_extra_arches": "extra-arches", "ray": "ray"}
#: Without a terminal, a long file reports its tiles about this many times.
PROGRESS_LINES = 10


class UsageError(Exception):
    """A bad command line or input; reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, as for every other bad input
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tilewise", description="Seamless tiled super-resolution.")
    parser.add_argument("--version", action="version", version=f"tilewise {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = commands.add_parser(
        "upscale",
        help="upscale images with a model",
        description="Upscale image files. Orientation, ICC profile, DPI and EXIF are kept; 16-bit and float "
        "images stay so in PNG, TIFF and .npy; animated GIF, WebP and PNG and multi-page TIFF keep every frame. "
        "An input is never overwritten; an existing output only with --overwrite. With several inputs a file "
        "that fails is reported and the others go on (exit status 1 at the end).",
    )
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (or folders of images)")
    up.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file (one input) or folder (several inputs, or a folder given as input)",
    )
    existing = up.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    existing.add_argument(
        "--skip-existing", action="store_true", help="leave output files that exist and upscale only the others"
    )
    up.add_argument(
        "--fail-fast", action="store_true", help="stop at the first file that fails (default: report it and go on)"
    )
    _add_ray_options(
        up,
        "files",
        "run the files on Ray actors: an address, auto (the cluster running here), or nothing (a local "
        "cluster); inputs and outputs must be on storage every node sees",
    )
    up.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model file (weights or .onnx) or built-in name (default: {DEFAULT_MODEL})",
    )
    size = up.add_mutually_exclusive_group()
    size.add_argument(
        "--scale", type=float, metavar="F", help="output size as a factor of the input (default: the model's scale)"
    )
    size.add_argument("--longest", type=int, metavar="N", help="make the longer side N pixels")
    size.add_argument("--megapixels", type=float, metavar="MP", help="make the output about MP megapixels")
    up.add_argument("--width", type=int, metavar="W", help="exact output width (alone: keep the aspect ratio)")
    up.add_argument("--height", type=int, metavar="H", help="exact output height (alone: keep the aspect ratio)")
    up.add_argument(
        "--tile",
        default="auto",
        metavar="N|auto|0",
        help="tile window in pixels (at least 16); auto (default); 0 = no tiling",
    )
    up.add_argument(
        "--tile-pad", type=int, metavar="N", help="context margin per tile (default: the model's receptive radius)"
    )
    up.add_argument(
        "--merge",
        choices=("crop", "blend"),
        default="crop",
        help="tile merge: crop margins (exact, default) or blend them",
    )
    up.add_argument("--batch", type=int, default=4, metavar="N", help="tiles per forward pass (default 4)")
    up.add_argument("--precision", choices=PRECISIONS, default="auto")
    up.add_argument(
        "--compile", action="store_true", help="torch.compile the model (slow first run; pays off on many images)"
    )
    up.add_argument(
        "--device",
        default="auto",
        help="auto (the current accelerator: CUDA, MPS or XPU; else the CPU), cpu, cuda, cuda:N, mps, xpu",
    )
    up.add_argument(
        "--alpha",
        choices=ALPHA_MODES,
        default="resize",
        help="alpha channel: resize it (default), run it through the model, or drop it",
    )
    up.add_argument(
        "--resample", choices=tuple(FILTERS), default="lanczos", help="filter for the final resize to the exact size"
    )
    up.add_argument(
        "--tileable",
        action="store_true",
        help="the image is a repeating texture: read across each edge from the opposite one, so the result "
        "repeats without a seam too",
    )
    up.add_argument(
        "--format",
        choices=[e.lstrip(".") for e in WRITE_EXTENSIONS],
        help="output format when OUT is a folder (default: the input's)",
    )
    up.add_argument(
        "--model-scale", type=int, metavar="N", help="scale hint for models that do not store it (SRCNN, FSRCNN)"
    )
    up.add_argument(
        "--upsampler-alpha",
        type=float,
        metavar="A",
        help="ParagonSR2 base-path alpha (not stored in its files; default 0)",
    )
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    video = commands.add_parser(
        "upscale-video", help="upscale a video file frame by frame (needs PyAV: pip install av)"
    )
    video.add_argument("input", metavar="IN", help="video file (anything FFmpeg reads)")
    video.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="video file to write (.mp4, .mkv, .mov, .webm ...)"
    )
    video.add_argument("--model", default=DEFAULT_MODEL, help=f"model file or built-in name (default: {DEFAULT_MODEL})")
    video.add_argument(
        "--temporal",
        choices=TEMPORAL_MODES,
        default="auto",
        help="temporal mode: auto (default: feature feedback for ParagonSR2, else the stabiliser), off, feedback, "
        "stabilize",
    )
    video.add_argument(
        "--temporal-strength",
        type=float,
        metavar="F",
        help="feedback alpha (default the model's, 0.2) or stabiliser strength (default 0.7)",
    )
    video.add_argument(
        "--first-frame",
        choices=FIRST_FRAME_CONVENTIONS,
        default="none",
        help="feedback on the first frame of a shot: no blend (default) or blend with zeros (upstream TensorRT)",
    )
    video.add_argument(
        "--scene-cut",
        type=float,
        default=SCENE_CUT_THRESHOLD * 255,
        metavar="T",
        help="reset the temporal state when consecutive frames differ by more than T/255 on average (default 30; 0 = "
        "never)",
    )
    video.add_argument(
        "--tile",
        default="auto",
        metavar="N|auto|0",
        help="tile window in pixels (at least 16); auto (default); 0 = no tiling",
    )
    video.add_argument(
        "--tile-pad", type=int, metavar="N", help="context margin per tile (default: the model's receptive radius)"
    )
    video.add_argument("--merge", choices=("crop", "blend"), default="crop")
    video.add_argument("--batch", type=int, default=4, metavar="N", help="tiles per forward pass (default 4)")
    video.add_argument(
        "--compile", action="store_true", help="torch.compile the model (slow start; pays off on long videos)"
    )
    video.add_argument("--precision", choices=PRECISIONS, default="auto")
    video.add_argument(
        "--device",
        default="auto",
        help="auto (the current accelerator: CUDA, MPS or XPU; else the CPU), cpu, cuda, cuda:N, mps, xpu",
    )
    video.add_argument("--codec", help="video codec (default: libx264 when available, else mpeg4)")
    video.add_argument("--crf", type=int, default=18, metavar="N", help="libx264 quality (default 18)")
    video.add_argument("--model-scale", type=int, metavar="N")
    video.add_argument("--upsampler-alpha", type=float, metavar="A")
    video.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    video.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_ray_options(
        video,
        "the video",
        "cut the video at scene cuts or keyframes into one segment per actor (each warmed up so the temporal state "
        "matches one run) and join them: an address, auto, or nothing (a local cluster)",
    )

    onnx = commands.add_parser("export-onnx", help="export a model to ONNX (validated with onnxruntime)")
    onnx.add_argument("model", help="model file or built-in name")
    onnx.add_argument("output", nargs="?", help=argparse.SUPPRESS)  # the older positional form
    onnx.add_argument("-o", "--output", dest="output_option", metavar="OUT", help="the .onnx file to write")
    onnx.add_argument("--opset", type=int, default=17)
    onnx.add_argument(
        "--video",
        action="store_true",
        help="ParagonSR2 video mode: inputs input, prev_feat; outputs output, feature_map",
    )
    onnx.add_argument("--no-validate", action="store_true", help="skip the onnxruntime comparison")
    onnx.add_argument(
        "--size", metavar="HxW", help="fix height and width (for models whose graph depends on the size, e.g. SwinIR)"
    )
    onnx.add_argument("--model-scale", type=int, metavar="N")
    onnx.add_argument("--upsampler-alpha", type=float, metavar="A")

    doctor = commands.add_parser(
        "doctor",
        help="check this machine: versions, devices, and a self-check of the engine (attach its output to bug reports)",
    )
    doctor.add_argument("--device", default="auto", help="device to check: auto (default), cpu, cuda, cuda:N, mps, xpu")
    doctor.add_argument("--json", action="store_true", help="print one JSON object")

    models = commands.add_parser(
        "models", help="list the built-in models and the model files in a folder, with architecture and scale"
    )
    models.add_argument("folder", nargs="?", metavar="FOLDER", help="a folder of model files (subfolders included)")
    models.add_argument("--json", action="store_true", help="print one JSON object per model")

    info = commands.add_parser("info", help="show what a model file is")
    info.add_argument("model", help="model file (weights or .onnx) or built-in name")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--model-scale", type=int, metavar="N")
    info.add_argument("--upsampler-alpha", type=float, metavar="A")
    return parser


def _add_ray_options(parser: argparse.ArgumentParser, what: str, ray_help: str) -> None:
    """--ray, --ray-actors and --ray-gpus-per-actor, the same for files and videos (`_ray_placement`)."""
    cluster = parser.add_argument_group(f'spreading {what} over a Ray cluster (pip install "tilewise[ray]")')
    cluster.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS", help=ray_help)
    cluster.add_argument("--ray-actors", type=int, metavar="N", help="actors (default: one per GPU, else per CPU)")
    cluster.add_argument("--ray-gpus-per-actor", type=float, metavar="F", help="GPUs per actor (default 1 with GPUs)")


def _ray_placement(args) -> dict:
    """The Ray options as `distributed`'s keyword arguments (address, actors, GPUs per actor)."""
    if args.ray_actors is not None and args.ray_actors < 1:
        raise UsageError("--ray-actors must be 1 or more")
    return {
        "address": None if args.ray == "local" else args.ray,
        "actors": args.ray_actors,
        "gpus_per_actor": args.ray_gpus_per_actor,
    }


def _doctor(args) -> int:
    """Exit 0 only when every check passed."""
    from .engine import doctor

    report = doctor.run(args.device)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0 if report.passed else EXIT_FAILURE
    print("Tilewise doctor")
    for name, version in report.versions.items():
        print(f"  {name:<12} {version}")
    print("devices:")
    for entry in report.devices:
        free = "unknown" if entry["free_memory_gib"] is None else f"{entry['free_memory_gib']:.1f} GiB free"
        print(f"  {entry['device']:<8} {entry['name']}; precisions {', '.join(entry['precisions'])}; {free}")
    print(f"self-check on {report.device} with {doctor.MODEL}:")
    for check in report.checks:
        print(f"  [{'ok' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
    print("all checks passed" if report.passed else "some checks FAILED: please attach this output to a bug report")
    return 0 if report.passed else EXIT_FAILURE


COMMANDS = {
    "info": "_info",
    "models": "_models",
    "doctor": "_doctor",
    "export-onnx": "_export_onnx",
    "upscale-video": "_upscale_video",
    "upscale": "_upscale",
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return globals()[COMMANDS[args.command]](args)
    except (UsageError, ModelFileError, ImageError, ValueError) as error:  # DeviceError is a ValueError
        print(f"tilewise: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as error:  # an optional feature's package
        print(f"tilewise: error: {_missing_package(error)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # a path the file system refuses (permissions, a name too long, a full disk)
        where = f"{error.filename}: " if error.filename else ""
        print(f"tilewise: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except TilewiseError as error:  # the input was fine but the run failed (a model error, out of memory)
        print(f"tilewise: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("tilewise: interrupted; no partial output was written", file=sys.stderr)
        return 130
    except Exception as error:  # a failure inside a model or library: one line unless debugging
        if os.environ.get("TILEWISE_DEBUG"):
            raise
        print(
            f"tilewise: error: unexpected {type(error).__name__}: {error} (set TILEWISE_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _missing_package(error: ModuleNotFoundError) -> str:
    """The line for a missing package: which extra installs it."""
    name = (error.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra:
        return f"this needs the Python package '{name}', which is not installed; pip install \"tilewise[{extra}]\""
    return f"the Python package '{name or error}' is not installed; reinstall Tilewise (pip install tilewise)"


def _hints(args):
    from .engine import LoadHints

    return LoadHints(scale=args.model_scale, upsampler_alpha=args.upsampler_alpha)


def _info(args) -> int:
    from .engine import load_model, model_summary

    summary = model_summary(load_model(args.model, hints=_hints(args)))
    if args.json:
        print(json.dumps(summary))
        return 0
    for key, value in summary.items():
        print(f"{key:>18}: {value}")
    return 0


def _models(args) -> int:
    """The built-in models, then every model file in FOLDER, one line each (or JSON lines)."""
    from .engine import builtin_names, load_model, model_summary, scan_folder

    rows: list[dict] = []
    for name in builtin_names():
        summary = model_summary(load_model(name))
        rows.append({"name": name, "architecture": summary["architecture"], "scale": summary["scale"]})
    if args.folder is not None:
        folder = Path(args.folder)
        if not folder.is_dir():
            raise UsageError(f"no such folder: {folder}")
        for entry in scan_folder(folder):
            if entry.model is not None:
                summary = model_summary(entry.model)
                rows.append({"name": entry.name, "architecture": summary["architecture"], "scale": summary["scale"]})
            else:
                rows.append({"name": entry.name, "error": entry.error})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    width = max((len(row["name"]) for row in rows), default=4)
    for row in rows:
        if "error" in row:
            print(f"{row['name']:<{width}}  cannot be used: {row['error']}")
        else:
            print(f"{row['name']:<{width}}  {row['architecture']}, {row['scale']}x")
    return 0


def _export_onnx(args) -> int:
    from .engine import export_onnx, load_model  # export_onnx imports onnx only when used

    output = args.output_option or args.output
    if args.output_option and args.output:
        raise UsageError("give the output file once: export-onnx MODEL -o OUT")
    if not output:
        raise UsageError("name the file to write: export-onnx MODEL -o OUT.onnx")
    if not str(output).lower().endswith(".onnx"):
        raise UsageError("the output file must end in .onnx")
    size = None
    if args.size:
        try:
            height, width = (int(v) for v in args.size.lower().split("x"))
            size = (height, width)
        except ValueError:
            raise UsageError(f"--size must look like 512x768 (height x width), got '{args.size}'") from None
    model = load_model(args.model, hints=_hints(args), cache=None)
    if model.architecture.id == "ONNX":
        raise UsageError(f"{Path(args.model).name} is an ONNX model already; use the file itself (or copy it)")
    report = export_onnx(model, output, opset=args.opset, video=args.video, validate=not args.no_validate, size=size)
    checked = ", ".join(f"{size}: {error:.1e}" for size, error in report.max_error.items()) or "not validated"
    print(
        f"wrote {report.path} (opset {report.opset}{', video' if report.video else ''}; onnxruntime vs PyTorch max "
        f"error {checked})",
        file=sys.stderr,
    )
    return 0


def _tile_settings(args):
    """--tile auto|0|N (0: no tiling, the engine's -1), --tile-pad, --merge, --batch, --compile,
    validated by the engine (`tile_settings`) as in every host."""
    from .engine import TileSettingsError, tile_settings

    tile = str(args.tile).strip().lower()
    if tile in ("0", "-1"):
        tile = -1
    try:
        return tile_settings(tile, pad=args.tile_pad, merge=args.merge, batch=args.batch, compile=args.compile)
    except TileSettingsError as error:
        raise UsageError(f"{_TILE_FLAGS[error.setting]}: {error}") from None


_TILE_FLAGS = {"tile": "--tile", "pad": "--tile-pad", "merge": "--merge", "batch": "--batch"}


def _target(args):
    from .engine import ScaleTarget

    if args.width is not None or args.height is not None:
        if args.scale is not None or args.longest is not None or args.megapixels is not None:
            raise UsageError("give either --width/--height or one of --scale, --longest, --megapixels")
        return ScaleTarget("size", width=args.width, height=args.height)
    if args.scale is not None:
        return ScaleTarget("factor", factor=args.scale)
    if args.longest is not None:
        return ScaleTarget("longest", longest=args.longest)
    if args.megapixels is not None:
        return ScaleTarget("megapixels", megapixels=args.megapixels)
    return ScaleTarget("native")


def _collect_inputs(inputs: Sequence[str]) -> tuple[list[Path], bool]:
    """The image files named or inside the folders named, and whether a folder was named. A named
    file that does not exist is a mistake in the command (exit 2), not a file that failed."""
    paths: list[Path] = []
    folder = False
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            folder = True
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))
        elif not path.is_file():
            raise UsageError(f"{path}: no such image file")
        else:
            paths.append(path)
    if not paths:
        raise UsageError("no input images found")
    return paths, folder


def _output_paths(inputs: list[Path], output: str, fmt: str | None, named_folder: bool) -> list[Path]:
    out = Path(output)
    several = len(inputs) > 1 or named_folder
    if several and out.suffix.lower() in WRITE_EXTENSIONS and not out.is_dir():
        raise UsageError(
            f"with several inputs, -o names a folder; '{output}' looks like an image file name (give a folder, "
            f"e.g. -o {out.with_suffix('')})"
        )
    if not (several or out.is_dir() or output.endswith(("/", "\\"))):
        if out.suffix.lower() not in WRITE_EXTENSIONS:
            raise UsageError(
                f"cannot write '{out.suffix or out.name}' files; name the output with one of "
                f"{', '.join(WRITE_EXTENSIONS)}, or end it with / for a folder"
            )
        return [out]
    results = []
    for path in inputs:
        suffix = f".{fmt}" if fmt else path.suffix.lower()
        if suffix not in WRITE_EXTENSIONS:
            suffix = ".png"
        results.append(out / f"{path.stem}{suffix}")
    if len(set(results)) != len(results):
        raise UsageError("two inputs would write the same output file; give inputs with distinct names")
    return results


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _plan_outputs(inputs: list[Path], outputs: list[Path], args) -> list[tuple[Path, Path]]:
    """(input, output) pairs to run: never an input as an output; existing outputs refused unless
    --overwrite, or left out with --skip-existing."""
    for destination in outputs:
        for source in inputs:
            if _same_file(source, destination):
                raise UsageError(
                    f"{destination} is an input; Tilewise never writes over an input (name another output)"
                )
    for folder in {d.parent for d in outputs}:
        blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise UsageError(f"{blocking} is a file, not a folder; name an output folder")
    existing = [d for d in outputs if d.exists()]
    if existing and not (args.overwrite or args.skip_existing):
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise UsageError(
            f"{existing[0]} exists{more}; add --overwrite to replace, or --skip-existing to keep what is there"
        )
    return [(s, d) for s, d in zip(inputs, outputs) if not (args.skip_existing and d.exists())]


@dataclass
class _Batch:
    """What happened to each file of an `upscale` run."""

    written: int = 0
    failed: int = 0
    skipped: int = 0

    def summary(self) -> str:
        parts = [f"{self.written} written", f"{self.failed} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (output exists)")
        return "tilewise: " + ", ".join(parts)


def _upscale(args) -> int:
    # Images are checked against free memory from their headers before decoding, so Pillow's
    # warning for large images (above 89 MP) is only noise on the command line, our own process.
    from PIL import Image

    from .engine import UpscaleOptions, load_model, resolve_device, upscale_file

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    settings = _tile_settings(args)
    target = _target(args)
    inputs, named_folder = _collect_inputs(args.inputs)
    outputs = _output_paths(inputs, args.output, args.format, named_folder)
    jobs = _plan_outputs(inputs, outputs, args)
    batch = _Batch(skipped=len(inputs) - len(jobs))
    single = len(inputs) == 1 and not named_folder
    if args.fail_fast or single:  # the old behaviour: every input readable before anything is written
        from .engine import check_readable

        for source, _ in jobs:
            check_readable(source)
    device = resolve_device(args.device) if not args.ray else args.device  # on Ray: each actor's own device
    options = UpscaleOptions(
        tiles=settings,
        precision=args.precision,
        device=str(device),
        target=target,
        resample=args.resample,
        alpha=args.alpha,
        tileable=args.tileable,
    )
    model = load_model(args.model, hints=_hints(args))  # a bad model stops here, before any cluster starts
    if args.ray:
        return _upscale_on_ray(args, jobs, options, batch, single)
    for index, (source, destination) in enumerate(jobs, start=1):
        label = f"[{index}/{len(jobs)}] {source.name}"
        try:
            try:
                size = upscale_file(model, source, destination, options, progress=_progress_for(label, args.quiet))
            except OSError as error:  # a folder that cannot be written, a disk that is full, a file that vanished
                raise ImageError(_os_message(error, destination)) from None
        except (ImageError, TilewiseError) as error:
            if single or args.fail_fast:
                raise
            batch.failed += 1
            print(f"tilewise: error: {named_message(source, error)}", file=sys.stderr)
            continue
        batch.written += 1
        if not args.quiet:
            print(f"{source} -> {destination} ({size[1]}x{size[0]})", file=sys.stderr)
    if not single:
        print(batch.summary(), file=sys.stderr)
    return EXIT_FAILURE if batch.failed else 0


def _upscale_on_ray(args, jobs: list[tuple[Path, Path]], options, batch: _Batch, single: bool) -> int:
    """The same (input, output) pairs, spread over Ray actors (`distributed`), with one progress
    display for the whole job and the local batch's reporting."""
    from . import distributed

    placement = _ray_placement(args)
    progress = _JobProgress(len(jobs), args.quiet)

    def report(result: distributed.FileResult, pool) -> None:
        progress.done(result)

    try:
        results = distributed.upscale_files(
            jobs,
            args.model,
            _hints(args),
            options,
            **placement,
            on_result=report,
        )
    except distributed.ClusterError as error:
        raise UsageError(str(error)) from None
    progress.finish()
    batch.failed = sum(1 for result in results if result.error is not None)
    batch.written = len(results) - batch.failed
    if single and batch.failed:
        return EXIT_USAGE
    if not single:
        print(batch.summary(), file=sys.stderr)
    return EXIT_FAILURE if batch.failed else 0


class _JobProgress:
    """Files done out of the job's files: a bar on a terminal, else a line per file."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.count, self.quiet, self.start = total, 0, quiet, time.monotonic()
        self.bar = None if quiet or not sys.stderr.isatty() else _ProgressBar("Ray")

    def done(self, result) -> None:
        self.count += 1
        if result.error is not None:  # as it happens, as in a local run
            if self.bar is not None:
                sys.stderr.write("\n")
            print(f"tilewise: error: {result.error}", file=sys.stderr, flush=True)
        if self.quiet:
            return
        if self.bar is not None:
            self.bar(self.count, self.total)
        elif result.error is None:
            height, width = result.size
            print(
                f"[{self.count}/{self.total}] {result.source} -> {result.destination} ({width}x{height})",
                file=sys.stderr,
                flush=True,
            )

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()


def _os_message(error: OSError, destination: Path) -> str:
    where = Path(error.filename) if error.filename else destination
    reason = error.strerror or str(error)
    if where.parent == destination.parent or where == destination.parent:
        return f"{destination}: cannot write it ({reason}); choose an output folder you can write to"
    return f"{where}: {reason}"


def _progress_for(label: str, quiet: bool):
    """Progress per picture: a bar on a terminal; without one (a log, a pipe), a line now and
    then; nothing with -q."""

    def make(part: str):
        if quiet:
            return None
        text = f"{label} {part}" if part else label
        return _ProgressBar(text) if sys.stderr.isatty() else _ProgressLines(text)

    return make


def _upscale_video(args) -> int:
    from .engine import UpscaleOptions, VideoIOError, VideoOptions, load_model, resolve_device, upscale_video_file

    settings = _tile_settings(args)
    source = Path(args.input)
    if not source.is_file():
        raise UsageError(f"no such video file: {source}")
    if args.temporal_strength is not None and not 0 <= args.temporal_strength < 1:
        raise UsageError(f"--temporal-strength must be in [0, 1), got {args.temporal_strength}")
    if args.scene_cut < 0:
        raise UsageError("--scene-cut must be 0 or more")
    if _same_file(source, Path(args.output)):
        raise UsageError(f"{args.output} is the input; Tilewise never writes over an input (name another output)")
    if Path(args.output).exists() and not args.overwrite:
        raise UsageError(f"{args.output} exists; add --overwrite to replace it")
    device = resolve_device(args.device) if not args.ray else args.device  # on Ray: each actor's own device
    options = VideoOptions(
        upscale=UpscaleOptions(tiles=settings, precision=args.precision, device=str(device)),
        temporal=args.temporal,
        strength=args.temporal_strength,
        first_frame=args.first_frame,
        scene_cut=args.scene_cut / 255 or None,
    )
    model = load_model(args.model, hints=_hints(args))
    if args.ray:
        report = _upscale_video_on_ray(args, source, options)
        if not args.quiet:
            print(f"{source} -> {args.output} ({report.frames} frames, {report.width}x{report.height}, on Ray)",
                  file=sys.stderr)  # fmt: skip
        return 0
    show = not args.quiet and sys.stderr.isatty()
    bar = _FrameProgress(source.name) if show else None
    try:
        report = upscale_video_file(
            model, source, Path(args.output), options, codec=args.codec, crf=args.crf, progress=bar
        )
    except VideoIOError as error:
        raise UsageError(str(error)) from None
    finally:
        if bar:
            bar.finish()
    if not args.quiet:
        print(
            f"{source} -> {args.output} ({report.frames} frames, {report.width}x{report.height}, {report.fps:g} fps, "
            f"temporal {report.mode}, {report.cuts} scene cut(s), audio {'kept' if report.audio else 'none'})",
            file=sys.stderr,
        )
    return 0


def _upscale_video_on_ray(args, source: Path, options):
    from . import distributed
    from .engine import VideoIOError

    placement = _ray_placement(args)

    def report(result, pool) -> None:
        if not args.quiet:
            print(f"segment {Path(result.part).stem}: {result.frames} frames", file=sys.stderr, flush=True)

    try:
        return distributed.upscale_video(
            source,
            Path(args.output),
            args.model,
            _hints(args),
            options,
            **placement,
            codec=args.codec,
            crf=args.crf,
            on_result=report,
        )
    except (VideoIOError, distributed.ClusterError) as error:
        raise UsageError(str(error)) from None


class _FrameProgress:
    """A one-line frame progress bar on stderr with frames per second and time left."""

    def __init__(self, label: str, width: int = 30):
        self.label, self.width, self.start = label, width, time.monotonic()

    def __call__(self, done: int, total: int | None) -> None:
        elapsed = time.monotonic() - self.start
        fps = done / elapsed if elapsed > 0 else 0.0
        if total:
            filled = int(self.width * min(done, total) / total)
            left = f"{(total - done) / fps:.0f}s left" if fps > 0 and total >= done else "?s left"
            text = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} frames"
        else:
            left, text = "", f"{done} frames"
        sys.stderr.write(f"\r{self.label} {text}, {fps:.2f} fps, {elapsed:.0f}s, {left} ")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")


class _ProgressBar:
    """A one-line tile progress bar on stderr with elapsed time and time left."""

    def __init__(self, label: str, width: int = 30):
        self.label, self.width, self.start = label, width, time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.start
        filled = int(self.width * done / max(total, 1))
        left = elapsed / done * (total - done) if done else 0.0
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} tiles, {elapsed:.1f}s, "
            f"{left:.1f}s left "
        )
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n")


class _ProgressLines:
    """Progress for a log or a pipe: a line when a file starts, then one about every tenth of its
    tiles (long files only), each a whole line so nothing waits in a buffer."""

    def __init__(self, label: str):
        self.label, self.start, self.reported = label, time.monotonic(), 0
        print(f"{label}: upscaling", file=sys.stderr, flush=True)

    def __call__(self, done: int, total: int) -> None:
        step = -(-total // PROGRESS_LINES)
        if total >= 2 * PROGRESS_LINES and done < total and done // step > self.reported:
            self.reported = done // step
            elapsed = time.monotonic() - self.start
            print(f"{self.label}: {done}/{total} tiles, {elapsed:.0f}s", file=sys.stderr, flush=True)

    def finish(self) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
