"""Fault injection: random out-of-memory errors, cancels at random points, a failing tile,
interrupted CLI runs, and two threads sharing one cached model."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading

import pytest
import torch
from conftest import photo
from model_zoo import ZOO
from test_runner import ConvNet, FailsOnCalls, describe
from tilewise.engine import CancelledError, TileSettings, UpscaleOptions, load_model, run_tiled, upscale


@pytest.mark.parametrize("seed", range(6))
def test_random_out_of_memory_gives_the_clean_result(seed):
    rng = random.Random(seed)
    image = photo("coffee", 50, 80, 90, 110)
    settings = TileSettings(tile=rng.choice([64, 72, 96]), pad=3, batch=rng.choice([1, 2, 3]))
    clean = describe(ConvNet())
    want = run_tiled(clean, image, settings=settings)
    failing = set(rng.sample(range(1, len(clean.model.calls) + 1), min(2, len(clean.model.calls))))
    flaky = describe(FailsOnCalls(failing))
    got = run_tiled(flaky, image, settings=settings)
    assert flaky.model.fired == sorted(failing), "every injected fault fired"
    assert (got - want).abs().max().item() <= 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_cancel_at_random_points_leaves_the_cached_model_usable(tmp_path, seed):
    path = ZOO["Compact"].save(tmp_path / "m.safetensors", seed=0, scale=2)
    model = load_model(path)
    image = photo("chelsea", 0, 0, 96, 96)
    options = UpscaleOptions(device="cpu", tiles=TileSettings(tile=32, batch=1))
    want = upscale(model, image, options)
    stop_after = random.Random(seed).randint(0, 8)
    seen = []
    with pytest.raises(CancelledError):
        upscale(model, image, options, progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= stop_after)
    assert len(seen) == stop_after
    again = load_model(path)
    assert again is model
    assert torch.equal(upscale(again, image, options), want)


def test_two_threads_share_one_cached_model(tmp_path):
    path = ZOO["SPAN"].save(tmp_path / "span.safetensors", seed=1, scale=2)
    images = [photo("chelsea", 0, 0, 64, 80), photo("coffee", 100, 100, 64, 80)]
    options = UpscaleOptions(device="cpu", tiles=TileSettings(tile=32, batch=2))
    model = load_model(path)
    want = [upscale(model, image, options) for image in images]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    errors = []

    def work(index: int) -> None:
        try:
            shared = load_model(path)
            for _ in range(3):
                results[index].append(upscale(shared, images[index], options))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for index in (0, 1):
        for got in results[index]:
            assert torch.equal(got, want[index])


def test_a_failing_tile_writes_nothing(tmp_path, photo_png, monkeypatch, capsys):
    """The model fails on its third tile inside the engine's runner (not a patched entry point):
    the CLI reports it and writes no file, whole or partial."""
    from tilewise import cli, engine

    failing = describe(FailsOnCalls({3}, error=ValueError))
    monkeypatch.setattr(engine, "load_model", lambda *args, **kwargs: failing)
    out = tmp_path / "out.png"
    assert cli.main(["upscale", str(photo_png), "-o", str(out), "-q", "--tile", "32", "--tile-pad", "3"]) == 1
    assert failing.model.fired == [3], "the failure happened in a tile run"
    assert "failed on the tile at" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [photo_png.name]


def test_interrupted_cli_leaves_no_partial_output(tmp_path):
    from PIL import Image

    source = tmp_path / "big.png"
    Image.new("RGB", (1200, 900), (120, 60, 30)).save(source)
    out = tmp_path / "out"
    sources = []
    for index in range(3):
        sources.append(tmp_path / f"big{index}.png")
        sources[-1].write_bytes(source.read_bytes())
    arguments = [
        "upscale",
        *map(str, sources),
        "-o",
        str(out),
        "--tile",
        "48",
        "--model",
        "builtin:magic-kernel-sharp-4x",
    ]
    # `python -m tilewise`, with Ctrl+C's default meaning even when this test runs in a background
    # job, whose children inherit an ignored SIGINT (then no interrupt arrives and the run finishes)
    launcher = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['tilewise', *sys.argv[1:]]; runpy.run_module('tilewise', run_name='__main__')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", launcher, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    while "->" not in line:  # progress lines come first; "big0.png -> ..." once the first file is written
        assert line, "the CLI ended before writing its first file"
        line = process.stderr.readline()
    # the second image is now being upscaled
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "no partial output" in stderr
    leftovers = list(out.iterdir())
    assert [p.name for p in leftovers] == ["big0.png"]  # the finished one, whole; no temporary file
    assert all(Image.open(p).size == (4800, 3600) for p in leftovers)  # finished files are whole
