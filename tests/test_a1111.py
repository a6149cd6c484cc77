"""The Stable Diffusion WebUI (A1111 / Forge) extension, against a stand-in of the host interface.

`tests/fake_a1111/` implements what the host contract says an upscaler extension meets: direct
`Upscaler` subclasses found and built as `cls(models_path_or_None)`, `do_upscale(PIL, data_path)`,
the up-to-three-passes loop with the multiple-of-8 Lanczos finish, the interrupt flag, settings
and the extension pre-load / script loading. `test_real_host` runs the same extension inside a
real checkout when `TILEWISE_A1111_PATH` or `TILEWISE_FORGE_PATH` names one.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from model_zoo import ZOO
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FAKE_HOST = Path(__file__).resolve().parent / "fake_a1111"
SCRIPT = ROOT / "scripts" / "tilewise_upscaler.py"
HARNESS = Path(__file__).resolve().parent / "a1111_host_harness.py"
HOST_MODULES = ("modules", "launch", "modules_forge")
CLASS_NAME = "UpscalerTilewise"


def _forget_host() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in HOST_MODULES:
            del sys.modules[name]


def _photo(width: int = 56, height: int = 40, mode: str = "RGB") -> Image.Image:
    from skimage import data

    image = Image.fromarray(data.astronaut()[120 : 120 + height, 200 : 200 + width])
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").resize((width, height))
        image = image.convert("RGBA")
        image.putalpha(alpha)
    elif mode != "RGB":
        image = image.convert(mode)
    return image


@pytest.fixture(scope="module")
def zoo_models(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("zoo")
    return SimpleNamespace(
        compact2=ZOO["Compact"].save(folder / "compact_x2.safetensors", seed=0, scale=2),
        compact3=ZOO["Compact"].save(folder / "compact_x3.pth", seed=1, scale=3),
    )


class Host:
    """One start-up of the fake WebUI with the Tilewise extension enabled."""

    def __init__(self, tmp_path: Path, monkeypatch):
        _forget_host()
        monkeypatch.syspath_prepend(str(FAKE_HOST))
        from modules import cache, errors, modelloader, paths_internal, script_callbacks, scripts, shared

        self.models = tmp_path / "models"
        for module in (paths_internal, shared):
            monkeypatch.setattr(module, "models_path", str(self.models))
        errors.reported.clear()
        cache.caches.clear()
        self.shared, self.errors, self.modelloader, self.scripts, self.callbacks = (
            shared,
            errors,
            modelloader,
            scripts,
            script_callbacks,
        )
        self.folder = self.models / "Tilewise"

    def add(self, source: Path, name: str | None = None, folder: Path | None = None) -> Path:
        target = (folder or self.folder) / (name or source.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        return target

    def start(self, argv: tuple[str, ...] = ()) -> list:
        parser = argparse.ArgumentParser()
        self.scripts.preload_extensions([str(ROOT)], parser)
        self.shared.cmd_opts = parser.parse_args(list(argv))
        self.shared.cmd_opts.no_half = False
        (self.module,) = self.scripts.load_scripts([str(ROOT)])
        self.callbacks.ui_settings_callback()
        self.modelloader.load_upscalers()
        return self.ours()

    def ours(self) -> list:
        return [d for d in self.shared.sd_upscalers if type(d.scaler).__name__ == CLASS_NAME]

    def entry(self, data_path) -> object:
        return next(d for d in self.ours() if d.data_path == str(data_path))

    def set(self, **settings) -> None:
        for key, value in settings.items():
            setattr(self.shared.opts, key, value)


@pytest.fixture
def host(tmp_path, monkeypatch):
    yield Host(tmp_path, monkeypatch)
    _forget_host()


def _exact(tile: int = 32, pad: int = 8, precision: str = "fp32") -> dict:
    return {"tilewise_tile": tile, "tilewise_tile_pad": pad, "tilewise_precision": precision}


def _cli(image: Path, out: Path, model, *args: str) -> np.ndarray:
    result = subprocess.run(
        [sys.executable, "-m", "tilewise", "upscale", str(image), "-o", str(out), "--model", str(model), "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return np.asarray(Image.open(out))


# ---------------------------------------------------------------------------------- discovery
def test_one_direct_upscaler_subclass_is_discovered(host, zoo_models):
    host.add(zoo_models.compact2)
    ours = host.start()
    from modules.upscaler import Upscaler

    defined = [
        v for v in vars(host.module).values() if isinstance(v, type) and issubclass(v, Upscaler) and v is not Upscaler
    ]
    assert [c.__name__ for c in defined] == [CLASS_NAME]
    assert defined[0] in Upscaler.__subclasses__() and defined[0].__bases__ == (Upscaler,)
    assert [d.name for d in host.shared.sd_upscalers[:3]] == ["None", "Lanczos", "Nearest"]
    assert ours and all(d.name.startswith("Tilewise ") for d in ours)
    assert host.folder.is_dir()  # the default models folder exists for users to fill


def test_scalers_list_files_and_builtins_with_their_real_scales(host, zoo_models):
    host.add(zoo_models.compact2, "misleading_4x.safetensors")  # the weights say 2x, the name 4x
    host.add(zoo_models.compact3, "sub/three.pth")
    ours = host.start()
    from tilewise.engine import builtin_names

    by_path = {d.data_path: d for d in ours}
    assert by_path[str(host.folder / "misleading_4x.safetensors")].scale == 2
    assert by_path[str(host.folder / "sub" / "three.pth")].name == "Tilewise sub/three"
    assert by_path[str(host.folder / "sub" / "three.pth")].scale == 3
    for name in builtin_names():
        assert name in by_path
    assert by_path["builtin:magic-kernel-sharp-3x"].scale == 3
    assert len({d.name for d in ours}) == len(ours)


def test_models_path_option_from_preload(host, zoo_models, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    host.add(zoo_models.compact2, folder=elsewhere)
    ours = host.start(("--tilewise-models-path", str(elsewhere)))
    assert host.shared.cmd_opts.tilewise_models_path == str(elsewhere)
    assert str(elsewhere / zoo_models.compact2.name) in {d.data_path for d in ours}
    host.start()  # default: <models>/Tilewise
    assert host.shared.cmd_opts.tilewise_models_path == str(host.folder)


def test_scales_are_remembered_between_start_ups(host, zoo_models, monkeypatch):
    path = host.add(zoo_models.compact2)
    host.start()
    from tilewise import engine

    calls = []
    monkeypatch.setattr(engine, "load_model", lambda *a, **k: calls.append(a) or pytest.fail("reloaded"))
    assert host.start() and host.entry(path).scale == 2 and calls == []


# ---------------------------------------------------------------------------------- pixels
_CLEAN_INTERPRETER_RUN = """
import argparse, json, sys
fake_host, root, models, model, image, out, settings = sys.argv[1:]
try:
    import tilewise
    raise SystemExit("tilewise must not be importable here")
except ImportError:
    pass
sys.path.insert(0, fake_host)
from modules import modelloader, paths_internal, script_callbacks, scripts, shared
shared.models_path = paths_internal.models_path = models
parser = argparse.ArgumentParser()
scripts.preload_extensions([root], parser)
shared.cmd_opts = parser.parse_args([])
shared.cmd_opts.no_half = False
scripts.load_scripts([root])
script_callbacks.ui_settings_callback()
modelloader.load_upscalers()
for key, value in json.loads(settings).items():
    setattr(shared.opts, key, value)
from PIL import Image
entry = next(d for d in shared.sd_upscalers if d.data_path == model)
entry.scaler.upscale(Image.open(image), 2, entry.data_path).save(out)
print(sys.modules["tilewise"].__path__[0])
"""


def test_do_upscale_gives_the_cli_pixels(host, zoo_models, tmp_path):
    """In process, and in a clean interpreter where the package is not installed and its folder is
    not called `tilewise` (the usual extensions/ set-up), the extension writes the CLI's pixels."""
    model = host.add(zoo_models.compact2)
    image = _photo()
    image.save(tmp_path / "in.png")
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tilewise",
            "upscale",
            str(tmp_path / "in.png"),
            "-o",
            str(tmp_path / "cli.png"),
            "--model",
            str(model),
            "-q",
            "--tile",
            "32",
            "--tile-pad",
            "8",
            "--precision",
            "fp32",
            "--device",
            "cpu",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    site = [p for p in sys.path if p.endswith("site-packages")]  # -S: no .pth files, so no editable install
    clean = subprocess.Popen(
        [
            sys.executable,
            "-S",
            "-c",
            _CLEAN_INTERPRETER_RUN,
            str(FAKE_HOST),
            str(ROOT),
            str(host.models),
            str(model),
            str(tmp_path / "in.png"),
            str(tmp_path / "clean.png"),
            json.dumps(_exact()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(site)),
    )
    try:
        host.start()
        host.set(**_exact())
        entry = host.entry(model)
        got = entry.scaler.do_upscale(image, entry.data_path)
        whole_path = entry.scaler.upscale(image, 2, entry.data_path)  # 56x40 x2 is a multiple of 8: no Lanczos finish
    finally:
        _, cli_err = cli.communicate(timeout=300)
        clean_out, clean_err = clean.communicate(timeout=300)
    assert cli.returncode == 0, cli_err
    assert clean.returncode == 0, clean_err
    want = np.asarray(Image.open(tmp_path / "cli.png"))
    assert got.mode == "RGB" and np.array_equal(np.asarray(got), want)
    assert np.array_equal(np.asarray(whole_path), want)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "clean.png")), want)
    assert Path(clean_out.strip().splitlines()[-1]) == ROOT


def test_default_settings_give_the_cli_default_pixels(host, tmp_path):
    host.start()
    image = _photo(60, 44)
    image.save(tmp_path / "in.png")
    from tilewise.cli import main

    assert (
        main(
            [
                "upscale",
                str(tmp_path / "in.png"),
                "-o",
                str(tmp_path / "cli.png"),
                "--model",
                "builtin:magic-kernel-sharp-2x",
                "-q",
            ]
        )
        == 0
    )
    entry = host.entry("builtin:magic-kernel-sharp-2x")
    assert np.array_equal(
        np.asarray(entry.scaler.do_upscale(image, entry.data_path)), np.asarray(Image.open(tmp_path / "cli.png"))
    )


def test_every_pass_the_host_asks_for_is_one_native_run_equal_to_the_engine(host, zoo_models, monkeypatch):
    """How many passes and what final resize is the host's business; what Tilewise owns is each
    `do_upscale`: the model once, at its native scale, with exactly the engine's pixels."""
    from tilewise.engine import load_model, upscale
    from tilewise.engine.image.images import pil_to_tensor, tensor_to_pil

    model = host.add(zoo_models.compact2)
    host.start()
    entry = host.entry(model)
    pairs = []
    original = entry.scaler.do_upscale
    monkeypatch.setattr(
        entry.scaler, "do_upscale", lambda img, path: pairs.append((img, original(img, path))) or pairs[-1][1]
    )
    entry.scaler.upscale(_photo(56, 40), 4, entry.data_path)
    entry.scaler.upscale(_photo(51, 39), 2, entry.data_path)
    assert pairs
    descriptor = load_model(model, cache=None)
    for given, returned in pairs:
        assert returned.size == (given.width * 2, given.height * 2)
        want = tensor_to_pil(upscale(descriptor, pil_to_tensor(given), host.module.upscale_options()))
        assert np.array_equal(np.asarray(returned), np.asarray(want))


def test_rgba_and_gray_images(host, zoo_models):
    model = host.add(zoo_models.compact2)
    host.start()
    entry = host.entry(model)
    rgba = _photo(mode="RGBA")
    out = entry.scaler.do_upscale(rgba, entry.data_path)
    assert out.mode == "RGBA" and out.size == (112, 80)
    rgb = entry.scaler.do_upscale(rgba.convert("RGB"), entry.data_path)
    assert np.array_equal(np.asarray(out)[..., :3], np.asarray(rgb))  # alpha is handled apart from the colour
    assert np.asarray(out)[..., 3].std() > 10
    gray = entry.scaler.do_upscale(_photo(mode="L"), entry.data_path)
    assert gray.mode == "L" and gray.size == (112, 80)
    assert entry.scaler.do_upscale(_photo(mode="P"), entry.data_path).size == (112, 80)


# ---------------------------------------------------------------------------------- settings
def test_settings_live_in_the_upscaling_section_and_reach_the_engine(host, monkeypatch):
    host.start()
    labels = host.shared.opts.data_labels
    for key in ("tilewise_tile", "tilewise_tile_pad", "tilewise_precision"):
        assert labels[key].section[0] == "upscaling"
    from tilewise import engine

    seen = []
    real = engine.upscale
    monkeypatch.setattr(engine, "upscale", lambda d, t, options, **k: seen.append(options) or real(d, t, options, **k))
    entry = host.entry("builtin:magic-kernel-sharp-2x")

    small = _photo(16, 16)
    entry.scaler.do_upscale(small, entry.data_path)
    assert (seen[-1].tiles.tile, seen[-1].tiles.pad, seen[-1].precision) == (0, None, "auto")
    host.set(tilewise_tile=16, tilewise_tile_pad=5, tilewise_precision="bf16")
    entry.scaler.do_upscale(small, entry.data_path)
    assert (seen[-1].tiles.tile, seen[-1].tiles.pad, seen[-1].precision, seen[-1].device) == (16, 5, "bf16", "cpu")
    host.set(tilewise_tile=-1, tilewise_tile_pad=-1, tilewise_precision="auto")
    host.shared.cmd_opts.no_half = True
    entry.scaler.do_upscale(small, entry.data_path)
    assert (seen[-1].tiles.tile, seen[-1].tiles.pad, seen[-1].precision) == (-1, None, "fp32")
    assert seen[-1].tileable is False and labels["tilewise_tileable"].section[0] == "upscaling"
    host.set(tilewise_tileable=True)
    tiled = entry.scaler.do_upscale(small, entry.data_path)
    assert seen[-1].tileable is True
    # the CLI's --tileable pixels
    from tilewise.engine.image.images import pil_to_tensor, tensor_to_pil

    model = engine.load_model(entry.data_path)
    want = real(model, pil_to_tensor(small), engine.UpscaleOptions(device="cpu", tileable=True, precision="fp32"))
    assert np.array_equal(np.asarray(tiled), np.asarray(tensor_to_pil(want)))


def test_the_host_decides_devices_precision_and_cache_emptying(host, zoo_models, monkeypatch):
    """`modules.devices` and the command line answer the engine's device questions."""
    import torch
    from modules import devices as host_devices

    model = host.add(zoo_models.compact2)
    host.start()
    emptied = []
    monkeypatch.setattr(host_devices, "torch_gc", lambda: emptied.append(1))
    policy = host.module.upscale_options().devices
    assert policy.default_device() == host_devices.device_esrgan
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert policy.fp16(cuda) and policy.bf16(cuda)
    host.shared.cmd_opts.no_half = True
    assert not policy.fp16(cuda) and not policy.bf16(cuda)
    policy.empty_cache(cuda)
    assert emptied == [1]
    # an out-of-memory error in a run reaches the host's cache emptying, and the run recovers
    entry = host.entry(model)
    descriptor = entry.scaler.load_model(entry.data_path)
    calls = []

    def runs_out_once(module, args):
        if not calls:
            calls.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    host.set(tilewise_tile=-1, tilewise_tile_pad=8, tilewise_precision="fp32")
    want = entry.scaler.do_upscale(_photo(64, 64), entry.data_path)
    hook = descriptor.model.register_forward_pre_hook(runs_out_once)
    try:
        got = entry.scaler.do_upscale(_photo(64, 64), entry.data_path)
    finally:
        hook.remove()
    assert calls and len(emptied) == 2
    assert np.array_equal(np.asarray(got), np.asarray(want))


def test_settings_change_the_tiles_run(host, zoo_models):
    model = host.add(zoo_models.compact2)
    host.start()
    entry = host.entry(model)
    descriptor = entry.scaler.load_model(entry.data_path)
    forwards = []
    hook = descriptor.model.register_forward_hook(lambda module, args, out: forwards.append(args[0].shape[0]))
    try:
        host.set(tilewise_tile=-1)
        whole = entry.scaler.do_upscale(_photo(64, 64), entry.data_path)
        assert sum(forwards) == 1
        forwards.clear()
        host.set(tilewise_tile=16, tilewise_tile_pad=4)
        tiled = entry.scaler.do_upscale(_photo(64, 64), entry.data_path)
        assert sum(forwards) > 4
    finally:
        hook.remove()
    assert np.array_equal(np.asarray(whole), np.asarray(tiled))  # seamless: the tile size changes memory, not pixels


def test_settings_are_read_even_when_the_ui_did_not_register_them(host):
    host.start()
    for key in ("tilewise_tile", "tilewise_tile_pad", "tilewise_precision", "tilewise_tileable"):
        del host.shared.opts.data_labels[key], host.shared.opts.data[key]
    options = host.module.upscale_options()  # API-only runs never build the settings page
    assert (options.tiles.tile, options.tiles.pad, options.precision, options.tileable) == (0, None, "auto", False)


def test_console_progress_bar_follows_the_hosts_option(host, monkeypatch):
    import types

    bars = []

    class Bar:
        def __init__(self, total, desc, unit):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, step):
            self.n += step

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=Bar))
    host.start()
    host.set(tilewise_tile=16, tilewise_tile_pad=2)
    entry = host.entry("builtin:magic-kernel-sharp-2x")
    entry.scaler.do_upscale(_photo(40, 40), entry.data_path)
    (bar,) = bars
    assert bar.closed and bar.n == bar.total > 1
    host.set(enable_upscale_progressbar=False)
    entry.scaler.do_upscale(_photo(40, 40), entry.data_path)
    assert len(bars) == 1


# ---------------------------------------------------------------------------------- interrupts
@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
def test_interrupt_stops_between_tiles_and_returns_the_input(host, zoo_models, flag):
    model = host.add(zoo_models.compact2)
    host.start()
    host.set(tilewise_tile=16, tilewise_tile_pad=4)
    entry = host.entry(model)
    descriptor = entry.scaler.load_model(entry.data_path)
    forwards = []

    def press_the_button(module, args, out):
        forwards.append(1)
        setattr(host.shared.state, flag, True)

    hook = descriptor.model.register_forward_hook(press_the_button)
    image = _photo(64, 64)
    try:
        result = entry.scaler.do_upscale(image, entry.data_path)
        assert result is image and forwards == [1]  # 16 tiles in 4 batches: stopped after the first
        assert entry.scaler.do_upscale(image, entry.data_path) is image  # while the flag is up: no model run at all
        assert forwards == [1]
    finally:
        hook.remove()
        setattr(host.shared.state, flag, False)


# ---------------------------------------------------------------------------------- failures
def test_broken_model_is_listed_and_leaves_the_image_unchanged(host, caplog):
    host.folder.mkdir(parents=True)
    (host.folder / "broken_x2.pth").write_text(
        "<!DOCTYPE html><html><head><title>Sign in</title></head><body></body></html>"
    )
    (host.folder / "empty.safetensors").write_bytes(b"")
    with caplog.at_level("WARNING", logger="tilewise"):
        host.start()
    broken = host.entry(host.folder / "broken_x2.pth")
    assert (
        broken.scale == 2 and host.entry(host.folder / "empty.safetensors").scale == 4
    )  # guessed from the name, else 4
    assert "broken_x2.pth" in caplog.text and "HTML" in caplog.text
    image = _photo()
    assert broken.scaler.do_upscale(image, broken.data_path) is image
    (message,) = host.errors.reported
    assert "broken_x2.pth" in message and "HTML" in message and "Traceback" not in message


def test_a_tile_of_10_is_refused_with_the_engine_message_and_the_image_kept(host, zoo_models):
    """Once silently clamped to 8 here while the CLI and ComfyUI differed; now the engine decides."""
    model = host.add(zoo_models.compact2)
    host.start()
    host.set(tilewise_tile=10)
    entry = host.entry(model)
    image = _photo()
    assert entry.scaler.do_upscale(image, entry.data_path) is image
    (message,) = host.errors.reported
    assert (
        "tile size must be 0 (automatic), -1 (whole image) or at least 16 pixels, got 10" in message
        and "Tilewise tile size" in message
    )


def test_a_model_deleted_after_start_up_is_reported(host, zoo_models):
    model = host.add(zoo_models.compact2)
    host.start()
    entry = host.entry(model)
    model.unlink()
    image = _photo()
    assert entry.scaler.do_upscale(image, entry.data_path) is image
    assert any(model.name in m and "not found" in m for m in host.errors.reported)


def test_an_unusable_spandrel_is_reported_once_and_builtins_still_work(host, zoo_models, monkeypatch):
    """E.g. a host's spandrel too old for the engine: start-up says so once, built-ins keep working."""
    model = host.add(zoo_models.compact2, "compact_x2.safetensors")
    from tilewise import engine
    from tilewise.engine.model import loading

    def broken_registry():
        raise TypeError("ArchRegistry.add() got an unexpected keyword argument 'ignore_duplicates'")

    monkeypatch.setattr(engine, "registry", broken_registry)
    monkeypatch.setattr(loading, "registry", broken_registry)
    host.start()
    (message,) = host.errors.reported
    assert "spandrel" in message and "ignore_duplicates" in message
    assert host.entry(model).scale == 2  # from the file name
    image = _photo()
    entry = host.entry("builtin:magic-kernel-sharp-2x")
    assert entry.scaler.do_upscale(image, entry.data_path).size == (112, 80)
    assert host.entry(model).scaler.do_upscale(image, str(model)) is image


def test_construction_never_raises(host, tmp_path, monkeypatch):
    host.start()
    cls = type(host.ours()[0].scaler)
    assert cls(None).scalers and cls(str(tmp_path / "missing")).scalers
    (tmp_path / "a_file").write_text("x")
    assert cls(str(tmp_path / "a_file")).scalers  # builtins still listed
    from tilewise import engine

    monkeypatch.setattr(engine, "builtin_names", lambda: 1 / 0)
    assert cls(None).scalers == []
    assert any("could not list" in m for m in host.errors.reported)


def test_models_are_cached_between_calls(host, zoo_models, monkeypatch):
    model = host.add(zoo_models.compact2)
    host.start()
    from tilewise import engine

    loads = []
    real = engine.load_model
    monkeypatch.setattr(engine, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    entry = host.entry(model)
    first = entry.scaler.do_upscale(_photo(), entry.data_path)
    second = entry.scaler.do_upscale(_photo(), entry.data_path)
    assert len(loads) == 1 and np.array_equal(np.asarray(first), np.asarray(second))
    os.utime(model, ns=(model.stat().st_atime_ns, model.stat().st_mtime_ns + 10**9))
    entry.scaler.do_upscale(_photo(), entry.data_path)
    assert len(loads) == 2  # a changed file is read again


def test_forge_memory_hook_is_called_when_present(host, monkeypatch):
    import types

    calls = []
    forge = types.ModuleType("modules_forge")
    utils = types.ModuleType("modules_forge.utils")
    utils.prepare_free_memory = lambda *a, **k: calls.append(1)
    forge.utils = utils
    monkeypatch.setitem(sys.modules, "modules_forge", forge)
    monkeypatch.setitem(sys.modules, "modules_forge.utils", utils)
    host.start()
    entry = host.entry("builtin:magic-kernel-sharp-2x")
    entry.scaler.do_upscale(_photo(), entry.data_path)
    assert calls == [1]


def test_host_only_imports_are_guarded():
    """`modules_forge` / `backend` exist only in Forge: importing them must sit in a try block."""
    for path in (SCRIPT, ROOT / "preload.py", ROOT / "install.py"):
        tree = ast.parse(path.read_text())
        guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] in ("modules_forge", "backend", "launch") for n in names):
                assert id(node) in guarded, f"{path.name}:{node.lineno} imports {names} outside a try block"


# ---------------------------------------------------------------------------------- packaging
def test_package_alias_when_another_tilewise_is_already_imported(host, monkeypatch):
    import types

    host.start()
    other = types.ModuleType("tilewise")
    other.__path__ = ["/somewhere/else/tilewise"]
    saved = {name: module for name, module in sys.modules.items() if name == "tilewise" or name.startswith("tilewise.")}
    monkeypatch.setitem(sys.modules, "tilewise", other)
    try:
        package = host.module.import_package(ROOT)
        assert package.__name__ != "tilewise" and Path(package.__path__[0]) == ROOT
        assert hasattr(importlib.import_module(package.__name__ + ".engine"), "upscale")
    finally:
        for name in [n for n in sys.modules if n.startswith("tilewise_extension_")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_install_only_adds_missing_packages_without_touching_the_host():
    installer = runpy.run_path(str(ROOT / "install.py"), run_name="tilewise_install_test")
    calls = []
    assert installer["install"](run_pip=lambda command, desc=None: calls.append(command)) == [] and calls == []

    absent = {"png", "spandrel"}
    tried = installer["install"](
        find_spec=lambda module: module not in absent, run_pip=lambda command, desc=None: calls.append(command)
    )
    assert sorted(tried) == ["pypng>=0.20220715", "spandrel>=0.4.1,<0.5"]
    assert all(c.startswith("install --no-deps ") for c in calls) and len(calls) == 2
    assert not any(word in c.lower() for c in calls for word in ("torch", "pillow"))

    def failing(command, desc=None):
        raise RuntimeError("no network")

    assert installer["install"](find_spec=lambda module: False, run_pip=failing)  # reported, never raised


def test_install_script_uses_the_hosts_pip(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_HOST))
    _forget_host()
    try:
        import launch

        launch.calls.clear()
        installer = runpy.run_path(str(ROOT / "install.py"), run_name="tilewise_install_test")
        installer["install"](find_spec=lambda module: module != "png")
        assert launch.calls == [('install --no-deps "pypng>=0.20220715"', "pypng>=0.20220715 for Tilewise")]
    finally:
        _forget_host()


# ---------------------------------------------------------------------------------- real host
def _real_checkout() -> Path | None:
    for variable in ("TILEWISE_A1111_PATH", "TILEWISE_FORGE_PATH"):
        if os.environ.get(variable):
            return Path(os.environ[variable])
    return None


@pytest.mark.skipif(
    _real_checkout() is None,
    reason="set TILEWISE_A1111_PATH or TILEWISE_FORGE_PATH to an A1111 / Forge checkout to run the extension in the "
    "real host",
)
def test_real_host(tmp_path, zoo_models):
    checkout = _real_checkout()
    assert (checkout / "modules" / "upscaler.py").is_file(), f"{checkout} is not an A1111 / Forge checkout"
    extensions = tmp_path / "extensions"
    extensions.mkdir()
    (extensions / "sd-webui-tilewise").symlink_to(ROOT, target_is_directory=True)
    models = tmp_path / "models"
    model = models / "Tilewise" / "compact.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(zoo_models.compact2.read_bytes())
    image = tmp_path / "in.png"
    _photo(56, 40).save(image)
    out = tmp_path / "host.png"
    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            str(checkout),
            str(extensions),
            str(models),
            str(image),
            "2",
            str(model),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout.strip().splitlines()[-1])
    ours = {d["data_path"]: d for d in listed if d["class"] == CLASS_NAME}
    assert ours[str(model)]["scale"] == 2 and ours["builtin:magic-kernel-sharp-4x"]["scale"] == 4
    assert [d["name"] for d in listed[:3]] == ["None", "Lanczos", "Nearest"]
    want = _cli(image, tmp_path / "cli.png", model, "--device", "cpu")
    assert np.array_equal(np.asarray(Image.open(out)), want)
