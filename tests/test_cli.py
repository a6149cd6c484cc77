"""The command line: upscale and info, and one-line errors with status 2 that write nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tilewise.cli import main
from tilewise.engine import UpscaleOptions, load_model, upscale
from tilewise.engine.image.images import read_image


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tilewise", *args], capture_output=True, text=True, timeout=300)


def test_upscale_with_default_builtin_model(photo_png, tmp_path):
    out = tmp_path / "out.png"
    result = _run("upscale", str(photo_png), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (160, 120)
    # the CLI writes exactly what the engine computes
    engine = upscale(
        load_model("builtin:paragonsr2-realtime-2x"), read_image(photo_png).tensor, UpscaleOptions(device="cpu")
    )
    want = engine[0].mul(255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(out)), want)


def test_exact_size_and_npy(photo_png, tmp_path):
    out = tmp_path / "out.npy"
    assert (
        main(["upscale", str(photo_png), "-o", str(out), "--width", "101", "--height", "77", "--tile", "32", "-q"]) == 0
    )
    assert np.load(out).shape == (77, 101, 3)


def test_many_inputs_to_a_folder(photo_png, tmp_path):
    second = tmp_path / "second.jpg"
    Image.open(photo_png).save(second)
    assert main(["upscale", str(photo_png), str(second), "-o", str(tmp_path / "results"), "--scale", "1.5", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["chelsea.png", "second.jpg"]
    assert Image.open(tmp_path / "results" / "second.jpg").size == (120, 90)


def test_tileable_texture(tmp_path):
    """`--tileable` gives the engine's tileable result, whose opposite edges join: a real texture
    (scikit-image's gravel) upscaled and laid side by side has no seam where the copies meet."""
    from skimage import data

    source = tmp_path / "gravel.png"
    Image.fromarray(data.gravel()[:48, :64]).save(source)
    out, plain = tmp_path / "tiled.png", tmp_path / "plain.png"
    assert main(["upscale", str(source), "-o", str(out), "--tileable", "--device", "cpu", "-q"]) == 0
    assert main(["upscale", str(source), "-o", str(plain), "--device", "cpu", "-q"]) == 0
    texture = read_image(source).tensor
    model = load_model("builtin:paragonsr2-realtime-2x")
    engine = upscale(model, texture, UpscaleOptions(device="cpu", tileable=True))
    assert np.array_equal(np.asarray(Image.open(out)), engine[0, 0].mul(255).round().byte().numpy())
    # where two copies meet, the result continues as it does inside: the centre of the input laid 3 x 3
    mosaic = upscale(model, texture.repeat(1, 1, 3, 3), UpscaleOptions(device="cpu"))[0, 0]
    centre = mosaic[96:192, 128:256].mul(255).round().byte().numpy().astype(int)
    assert np.abs(np.asarray(Image.open(out)).astype(int) - centre).max() <= 1
    assert np.abs(np.asarray(Image.open(plain)).astype(int) - centre).max() > 8


def test_16bit_input_gives_16bit_png(tmp_path):
    import png

    array = (np.random.default_rng(1).integers(0, 65536, (12, 10, 3))).astype(np.uint16)
    source = tmp_path / "deep.png"
    with source.open("wb") as f:
        png.Writer(10, 12, greyscale=False, bitdepth=16).write(f, array.reshape(12, -1))
    assert main(["upscale", str(source), "-o", str(tmp_path / "up.png"), "-q"]) == 0
    assert read_image(tmp_path / "up.png").bits == 16


def test_info_json_has_every_key():
    result = _run("info", "builtin:magic-kernel-sharp-4x", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    for key in (
        "architecture",
        "purpose",
        "scale",
        "input_channels",
        "output_channels",
        "params",
        "supports_half",
        "supports_bfloat16",
        "tiling",
        "size_requirements",
    ):
        assert key in info
    assert info["architecture"] == "MagicKernelSharp2021" and info["scale"] == 4 and info["params"] == 72


@pytest.mark.parametrize(
    "args,message",
    [
        (["upscale", "{missing}", "-o", "{out}"], "no such image file"),
        (["upscale", "{photo}", "-o", "{out}", "--model", "{missing}"], "not found"),
        (["upscale", "{photo}", "-o", "{out}", "--tile", "banana"], "--tile: tile size must be"),
        (["upscale", "{photo}", "-o", "{out}", "--precision", "fp8"], "invalid choice"),
        (["upscale", "{photo}", "-o", "{out}", "--scale", "-2"], "must be a positive number"),
        (["upscale", "{photo}", "-o", "{out}", "--model", "builtin:nope"], "not a built-in model"),
        (["upscale", "{photo}", "{missing}", "-o", "{outdir}"], "no such image file"),
        (["info", "{notmodel}"], "is an image, not model weights"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(photo_png, tmp_path, args, message):
    notmodel = tmp_path / "photo.pth"
    notmodel.write_bytes(photo_png.read_bytes())
    names = {
        "missing": str(tmp_path / "missing.png"),
        "out": str(tmp_path / "out" / "x.png"),
        "outdir": str(tmp_path / "outdir"),
        "photo": str(photo_png),
        "notmodel": str(notmodel),
    }
    result = _run(*[a.format(**names) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tilewise: error:") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "outdir").exists()
