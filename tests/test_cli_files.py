"""The command line with the files photographers have: phone photos, colour profiles, 16-bit and
float TIFF, animated GIFs, folders with a broken file, outputs that already exist.

Every file is made here with Pillow or tifffile, and every run goes through `python -m tilewise`
in a subprocess (stderr is then a pipe, as in a log), compared with the engine's own result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageCms, ImageOps
from skimage import data
from tilewise.engine import UpscaleOptions, load_model, upscale

MODEL = "builtin:magic-kernel-sharp-2x"  # tiny and exact: the tests are about files, not models
ORIENTATION, MAKE = 0x0112, 0x010F


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tilewise", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def engine(image: np.ndarray) -> torch.Tensor:
    """The engine's 2x of an H x W x C uint8 or float image in [0, 1] (as a float array)."""
    array = image.astype(np.float32) / (255 if image.dtype == np.uint8 else 65535 if image.dtype == np.uint16 else 1)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
    return upscale(load_model(MODEL), tensor, UpscaleOptions(device="cpu"))


def as_uint(result: torch.Tensor, bits: int = 8) -> np.ndarray:
    peak = 65535 if bits == 16 else 255
    array = result[0].clamp(0, 1).mul(peak).round().permute(1, 2, 0).numpy()
    return array.astype(np.uint16 if bits == 16 else np.uint8)


def photo(height: int = 48, width: int = 64) -> np.ndarray:
    return data.astronaut()[100 : 100 + height, 180 : 180 + width].copy()


#: One profile for the module (a new one carries a new creation time).
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def phone_jpeg(path: Path, orientation: int = 6) -> np.ndarray:
    """A landscape-stored JPEG that a phone marked as turned (orientation 6: the picture is
    portrait), with a camera make, an sRGB profile and 300 dpi; returns the stored pixels."""
    exif = Image.Exif()
    exif[ORIENTATION], exif[MAKE] = orientation, "TilewisePhone"
    stored = photo()
    Image.fromarray(stored).save(path, quality=100, exif=exif.tobytes(), icc_profile=SRGB, dpi=(300, 300))
    return np.asarray(Image.open(path).convert("RGB"))


def test_a_portrait_phone_photo_comes_out_upright_with_its_metadata(tmp_path):
    source = tmp_path / "IMG_0001.jpg"
    stored = phone_jpeg(source)
    out = tmp_path / "up.png"
    result = run("upscale", str(source), "-o", str(out), "--model", MODEL)
    assert result.returncode == 0, result.stderr
    written = Image.open(out)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(source)).convert("RGB"))
    assert upright.shape[:2] == stored.shape[1::-1], "orientation 6 turns the stored picture a quarter"
    assert written.size == (upright.shape[1] * 2, upright.shape[0] * 2)
    np.testing.assert_array_equal(np.asarray(written.convert("RGB")), as_uint(engine(upright)))
    exif = written.getexif()
    assert exif[ORIENTATION] == 1 and exif[MAKE] == "TilewisePhone", "EXIF kept, orientation reset"
    assert written.info["icc_profile"] == SRGB
    assert written.info["dpi"] == pytest.approx((300, 300), abs=0.01)


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".tif", ".png"])
def test_colour_profile_and_dpi_go_to_every_format_that_holds_them(tmp_path, suffix):
    source = tmp_path / "photo.jpg"
    phone_jpeg(source, orientation=1)
    out = tmp_path / f"up{suffix}"
    result = run("upscale", str(source), "-o", str(out), "--model", MODEL)
    assert result.returncode == 0, result.stderr
    if suffix == ".tif":
        with tifffile.TiffFile(out) as tif:
            tags = tif.pages[0].tags
            assert bytes(tags["InterColorProfile"].value) == SRGB
            x = tags["XResolution"].value
            assert x[0] / x[1] == pytest.approx(300)
        return
    written = Image.open(out)
    assert written.info["icc_profile"] == SRGB
    assert written.getexif()[MAKE] == "TilewisePhone"
    if suffix != ".webp":  # WebP has no DPI field
        assert written.info["dpi"] == pytest.approx((300, 300), abs=0.01)


def test_16_bit_tiff_stays_16_bit_and_float_tiff_stays_float(tmp_path):
    rng = np.random.default_rng(0)
    deep = (rng.random((24, 30, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", deep, photometric="rgb")
    floats = rng.random((24, 30, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", floats, photometric="rgb")
    result = run(
        "upscale",
        str(tmp_path / "deep.tif"),
        str(tmp_path / "float.tif"),
        "-o",
        str(tmp_path / "out"),
        "--model",
        MODEL,
    )
    assert result.returncode == 0, result.stderr
    assert "2 written, 0 failed" in result.stderr
    deep_out = tifffile.imread(tmp_path / "out" / "deep.tif")
    assert deep_out.dtype == np.uint16 and deep_out.shape == (48, 60, 3)
    np.testing.assert_array_equal(deep_out, as_uint(engine(deep), 16))
    float_out = tifffile.imread(tmp_path / "out" / "float.tif")
    assert float_out.dtype == np.float32
    np.testing.assert_array_equal(float_out, engine(floats)[0].permute(1, 2, 0).numpy())


def test_an_input_is_never_overwritten_and_an_existing_output_only_when_asked(tmp_path):
    source = tmp_path / "a.png"
    Image.fromarray(photo()).save(source)
    before = source.read_bytes()
    result = run("upscale", str(source), "-o", str(source), "--model", MODEL, "--overwrite")
    assert result.returncode == 2 and "never writes over an input" in result.stderr
    assert source.read_bytes() == before
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    result = run("upscale", str(source), "-o", str(out), "--model", MODEL)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--overwrite" in lines[0] and "--skip-existing" in lines[0]
    assert out.read_bytes() == b"precious"
    assert run("upscale", str(source), "-o", str(out), "--model", MODEL, "--overwrite").returncode == 0
    assert Image.open(out).size == (128, 96)
    assert "--skip-existing" in run("upscale", "--help").stdout


def test_skip_existing_finishes_only_what_is_missing(tmp_path):
    for name in ("a", "b", "c"):
        Image.fromarray(photo()).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"done before")
    result = run("upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), str(tmp_path / "c.png"), "-o", str(out),
                 "--model", MODEL, "--skip-existing")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 written, 0 failed, 1 skipped" in result.stderr
    assert (out / "b.png").read_bytes() == b"done before"
    assert Image.open(out / "a.png").size == Image.open(out / "c.png").size == (128, 96)


def broken_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "shoot"
    folder.mkdir()
    for name in ("a", "c"):
        Image.fromarray(photo()).save(folder / f"{name}.png")
    whole = (folder / "a.png").read_bytes()
    (folder / "b.png").write_bytes(whole[: len(whole) // 2])  # truncated mid-way, as a copy cut short
    return folder


def test_a_folder_keeps_going_past_a_broken_file(tmp_path):
    folder = broken_folder(tmp_path)
    out = tmp_path / "out"
    result = run("upscale", str(folder), "-o", str(out), "--model", MODEL)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("tilewise: error:")]
    assert len(errors) == 1 and "b.png" in errors[0] and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "tilewise: 2 written, 1 failed"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"], "nothing partial, no temporary files"


def test_fail_fast_stops_before_writing_anything(tmp_path):
    folder = broken_folder(tmp_path)
    out = tmp_path / "out"
    result = run("upscale", str(folder), "-o", str(out), "--model", MODEL, "--fail-fast")
    assert result.returncode == 2 and "b.png" in result.stderr
    assert not out.exists() or not list(out.iterdir())


def animated_gif(path: Path) -> None:
    frames = [photo(32, 40), photo(32, 40)[::-1].copy(), photo(32, 40)[:, ::-1].copy()]
    images = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=[100, 200, 300], loop=0)


def _frames(path: Path):
    image = Image.open(path)
    for index in range(image.n_frames):
        image.seek(index)
        yield image.copy()


def test_an_animated_gif_keeps_every_frame_its_timing_and_loop(tmp_path):
    source = tmp_path / "loop.gif"
    animated_gif(source)
    out = tmp_path / "loop.png"
    result = run("upscale", str(source), "-o", str(out), "--model", MODEL)
    assert result.returncode == 0, result.stderr
    written = Image.open(out)
    assert written.n_frames == 3 and written.info["loop"] == 0
    durations = []
    for index, frame in enumerate(_frames(out)):
        durations.append(frame.info["duration"])
        source_frame = list(_frames(source))[index].convert("RGB")
        want = as_uint(engine(np.asarray(source_frame)))
        np.testing.assert_array_equal(np.asarray(frame.convert("RGB")), want)
    assert durations == [100, 200, 300]
    gif = tmp_path / "loop_2x.gif"
    assert run("upscale", str(source), "-o", str(gif), "--model", MODEL).returncode == 0
    assert Image.open(gif).n_frames == 3 and Image.open(gif).size == (80, 64)


def test_frames_are_never_dropped_silently(tmp_path):
    source = tmp_path / "loop.gif"
    animated_gif(source)
    result = run("upscale", str(source), "-o", str(tmp_path / "still.jpg"), "--model", MODEL)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert "3 frames" in lines[0] and ".gif" in lines[0] and ".webp" in lines[0]
    assert not (tmp_path / "still.jpg").exists()


def test_several_inputs_need_a_folder_as_output(tmp_path):
    for name in ("a", "b"):
        Image.fromarray(photo()).save(tmp_path / f"{name}.png")
    result = run("upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "one.png"))
    assert result.returncode == 2 and "-o names a folder" in result.stderr
    assert not (tmp_path / "one.png").exists()


@pytest.mark.parametrize(
    "module, extra, command",
    [
        ("onnx", "onnx", ["export-onnx", MODEL, "-o", "{tmp}/m.onnx"]),
        ("ray", "ray", ["upscale", "{tmp}/a.png", "-o", "{tmp}/out/", "--model", MODEL, "--ray"]),
    ],
)
def test_a_missing_optional_package_names_the_extra_to_install(tmp_path, module, extra, command):
    """The package hidden from the import system: one line with the pip command, status 2."""
    Image.fromarray(photo()).save(tmp_path / "a.png")
    argv = [part.format(tmp=tmp_path) for part in command]
    script = f"import sys; sys.modules[{module!r}] = None; from tilewise.cli import main; sys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert f'pip install "tilewise[{extra}]"' in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()


def test_export_onnx_takes_its_output_with_o_like_every_command(tmp_path):
    result = run("export-onnx", MODEL, "-o", str(tmp_path / "m.onnx"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 0


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["upscale", "--help"], ["upscale"], ["nonsense"]])
def test_help_version_and_argument_errors_never_import_torch(args):
    script = (
        "import sys; from tilewise.cli import main\n"
        f"try:\n    code = main({args!r})\nexcept SystemExit as done:\n    code = done.code\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", "import json\n" + script], capture_output=True, text=True, timeout=60
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["torch"] is False, "heavy imports wait until work starts"
    assert report["code"] in (0, 2)


def test_models_lists_the_builtins_and_a_folder(tmp_path):
    from model_zoo import ZOO

    ZOO["Compact"].save(tmp_path / "compact_x2.safetensors", seed=0, scale=2)
    (tmp_path / "broken.pth").write_text("<!DOCTYPE html><html></html>")
    result = run("models", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows[MODEL]["architecture"] == "MagicKernelSharp2021" and rows[MODEL]["scale"] == 2
    assert rows["compact_x2.safetensors"]["scale"] == 2
    assert "web page" in rows["broken.pth"]["error"] or "HTML" in rows["broken.pth"]["error"]
    text = run("models").stdout
    assert "builtin:paragonsr2-realtime-2x" in text and "2x" in text


def test_without_a_terminal_progress_comes_a_line_at_a_time(tmp_path):
    source = tmp_path / "big.png"
    Image.fromarray(data.astronaut()[:256, :256]).save(source)
    result = run("upscale", str(source), "-o", str(tmp_path / "big_2x.png"), "--model", MODEL, "--tile", "32")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "[1/1] big.png: upscaling"
    tiles = [line for line in lines if "tiles," in line]
    assert 3 <= len(tiles) <= 10 and all("\r" not in line for line in lines)
    assert lines[-1].startswith(f"{source} -> ")


def test_a_tile_too_small_for_the_model_is_warned_about_with_the_auto_cost(tmp_path):
    from model_zoo import ZOO

    model = tmp_path / "compact.safetensors"
    ZOO["Compact"].save(model, seed=0, scale=2)
    source = tmp_path / "a.png"
    Image.fromarray(photo(96, 96)).save(source)
    result = run("upscale", str(source), "-o", str(tmp_path / "b.png"), "--model", str(model), "--tile", "16", "-q")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "the image's pixels" in line]
    assert len(warnings) == 1 and "automatic tiling computes" in warnings[0], result.stderr


@pytest.mark.parametrize("case", ["read-only folder", "folder that is a file", "name too long"])
def test_an_output_that_cannot_be_written_is_one_clear_line(tmp_path, case):
    import os

    source = tmp_path / "a.png"
    Image.fromarray(photo()).save(source)
    if case == "read-only folder":
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("running as root, which writes into read-only folders; the other case covers the refusal")
        target = tmp_path / "locked"
        target.mkdir()
        target.chmod(0o555)
        reason = "cannot write it (Permission denied)"
    elif case == "folder that is a file":
        target = tmp_path / "notes.txt"
        target.write_text("a file, not a folder")
        reason = "notes.txt is a file, not a folder"
    else:  # refused by the file system whoever runs it
        target = tmp_path / "out"
        target.mkdir()
        reason = "File name too long"
    name = "a.png" if case != "name too long" else "x" * 300 + ".png"
    result = run("upscale", str(source), "-o", str(target / name), "--model", MODEL, "-q")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert reason in lines[0] and "Traceback" not in result.stderr
    assert target.is_file() or list(target.iterdir()) == []
