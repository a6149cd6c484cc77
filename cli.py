"""Command line: `python -m tilewise upscale ...`, `upscale-video ...` and `info ...`.

Every command that takes a model accepts a weights file, an `.onnx` file or a built-in name.

Bad input (missing file, unreadable image, unsupported model, bad option) exits with status 2
and one line on stderr; every input is checked before the first output is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

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
    LoadHints,
    ModelFileError,
    ScaleTarget,
    TileSettings,
    TileSettingsError,
    TilewiseError,
    UpscaleOptions,
    VideoOptions,
    check_decodable,
    check_fits,
    check_readable,
    load_model,
    model_summary,
    read_image,
    resolve_device,
    tile_settings,
    upscale,
    write_image,
)

DEFAULT_MODEL = "builtin:paragonsr2-realtime-2x"  # bundled; see models/README.md
EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A bad command line or input; reported as one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, as for every other bad input
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tilewise", description="Seamless tiled super-resolution.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = commands.add_parser("upscale", help="upscale images with a model")
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files (or folders of images)")
    up.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (one input) or folder")
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
    video.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    onnx = commands.add_parser("export-onnx", help="export a model to ONNX (validated with onnxruntime)")
    onnx.add_argument("model", help="model file or built-in name")
    onnx.add_argument("output", help="the .onnx file to write")
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

    info = commands.add_parser("info", help="show what a model file is")
    info.add_argument("model", help="model file (weights or .onnx) or built-in name")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--model-scale", type=int, metavar="N")
    info.add_argument("--upsampler-alpha", type=float, metavar="A")
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "info":
            return _info(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "export-onnx":
            return _export_onnx(args)
        if args.command == "upscale-video":
            return _upscale_video(args)
        return _upscale(args)
    except (UsageError, ModelFileError, ImageError, ValueError) as error:
        print(f"tilewise: error: {error}", file=sys.stderr)
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


def _hints(args) -> LoadHints:
    return LoadHints(scale=args.model_scale, upsampler_alpha=args.upsampler_alpha)


def _info(args) -> int:
    summary = model_summary(load_model(args.model, hints=_hints(args)))
    if args.json:
        print(json.dumps(summary))
        return 0
    for key, value in summary.items():
        print(f"{key:>18}: {value}")
    return 0


def _export_onnx(args) -> int:
    from .engine import export_onnx  # imported when first used

    if not str(args.output).lower().endswith(".onnx"):
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
    report = export_onnx(
        model, args.output, opset=args.opset, video=args.video, validate=not args.no_validate, size=size
    )
    checked = ", ".join(f"{size}: {error:.1e}" for size, error in report.max_error.items()) or "not validated"
    print(
        f"wrote {report.path} (opset {report.opset}{', video' if report.video else ''}; onnxruntime vs PyTorch max "
        f"error {checked})",
        file=sys.stderr,
    )
    return 0


def _tile_settings(args) -> TileSettings:
    """--tile auto|0|N (0: no tiling, the engine's -1), --tile-pad, --merge, --batch, --compile,
    validated by the engine (`tile_settings`) as in every host."""
    tile = str(args.tile).strip().lower()
    if tile in ("0", "-1"):
        tile = -1
    try:
        return tile_settings(tile, pad=args.tile_pad, merge=args.merge, batch=args.batch, compile=args.compile)
    except TileSettingsError as error:
        raise UsageError(f"{_TILE_FLAGS[error.setting]}: {error}") from None


_TILE_FLAGS = {"tile": "--tile", "pad": "--tile-pad", "merge": "--merge", "batch": "--batch"}


def _target(args) -> ScaleTarget:
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


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))
        else:
            paths.append(path)
    if not paths:
        raise UsageError("no input images found")
    return paths


def _output_paths(inputs: list[Path], output: str, fmt: str | None) -> list[Path]:
    out = Path(output)
    folder = len(inputs) > 1 or out.is_dir() or output.endswith(("/", "\\"))
    if not folder:
        if out.suffix.lower() not in WRITE_EXTENSIONS:
            raise UsageError(
                f"cannot write '{out.suffix or out.name}' files; name the output with one of "
                f"{', '.join(WRITE_EXTENSIONS)}"
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


def _upscale(args) -> int:
    # Images are checked against free memory from their headers before decoding, so Pillow's
    # warning for large images (above 89 MP) is only noise on the command line, our own process.
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    settings = _tile_settings(args)
    target = _target(args)
    inputs = _collect_inputs(args.inputs)
    outputs = _output_paths(inputs, args.output, args.format)
    for path in inputs:
        check_readable(path)
    device = resolve_device(args.device)
    options = UpscaleOptions(
        tiles=settings,
        precision=args.precision,
        device=str(device),
        target=target,
        resample=args.resample,
        alpha=args.alpha,
    )
    model = load_model(args.model, hints=_hints(args))
    show = not args.quiet and sys.stderr.isatty()
    for index, (source, destination) in enumerate(zip(inputs, outputs), start=1):
        header = check_decodable(source)  # from the header: nothing large is decoded before the checks
        try:
            check_fits(model, header.height, header.width, header.channels, options)
        except ImageError as error:
            raise ImageError(f"{source}: {error}") from None
        loaded = read_image(source, header)
        bar = _ProgressBar(f"[{index}/{len(inputs)}] {source.name}") if show else None
        result = upscale(model, loaded.tensor, options, progress=bar)
        if bar:
            bar.finish()
        write_image(destination, result, bits=loaded.bits)
        if not args.quiet:
            print(f"{source} -> {destination} ({result.shape[-1]}x{result.shape[-2]})", file=sys.stderr)
    return 0


def _upscale_video(args) -> int:
    from .engine import VideoIOError, upscale_video_file  # PyAV itself is imported only when used

    settings = _tile_settings(args)
    source = Path(args.input)
    if not source.is_file():
        raise UsageError(f"no such video file: {source}")
    if args.temporal_strength is not None and not 0 <= args.temporal_strength < 1:
        raise UsageError(f"--temporal-strength must be in [0, 1), got {args.temporal_strength}")
    if args.scene_cut < 0:
        raise UsageError("--scene-cut must be 0 or more")
    device = resolve_device(args.device)
    options = VideoOptions(
        upscale=UpscaleOptions(tiles=settings, precision=args.precision, device=str(device)),
        temporal=args.temporal,
        strength=args.temporal_strength,
        first_frame=args.first_frame,
        scene_cut=args.scene_cut / 255 or None,
    )
    model = load_model(args.model, hints=_hints(args))
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


if __name__ == "__main__":
    sys.exit(main())
