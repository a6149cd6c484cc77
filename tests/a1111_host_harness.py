"""Runs the Tilewise extension inside a real A1111 / Forge checkout's upscaler machinery, headless.

Helper for `tests/test_a1111.py` (no tests here), run in a subprocess:

    python tests/a1111_host_harness.py CHECKOUT EXTENSIONS_DIR MODELS_DIR IMAGE SCALE DATA_PATH OUT.png

The host's own `modules/upscaler.py`, `modules/modelloader.py`, `modules/script_loading.py`,
`modules/errors.py` and `modules/util.py` are imported from CHECKOUT; what would pull in the rest
of the WebUI (gradio, the SD model, the command-line parser) is replaced by the small stubs the
project's host notes list. Then, as the WebUI does at start-up: every extension's `preload.py`
adds its options, `scripts/*.py` are imported by path with the extension folder on `sys.path`,
the settings callbacks run, and `modelloader.load_upscalers()` builds `shared.sd_upscalers`.
Finally the entry whose `data_path` is DATA_PATH upscales IMAGE by SCALE through the host's
`Upscaler.upscale`, and the result is written to OUT.png. One JSON line on stdout lists the
upscalers the host found.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import types


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:  # `import modules.shared; modules.shared.opts` needs the attribute on the package too
        setattr(sys.modules[parent], child, module)
    return module


class _OptionInfo:
    def __init__(
        self, default=None, label="", component=None, component_args=None, onchange=None, section=None, **kwargs
    ):
        self.default, self.label, self.section = default, label, section

    def info(self, text):
        return self


class _Options:
    def __init__(self, values):
        object.__setattr__(self, "data", dict(values))
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value


def _walk_files(path, allowed_extensions=None):
    for root, _, files in os.walk(path, followlinks=True):
        for name in sorted(files):
            if allowed_extensions is None or os.path.splitext(name)[1] in allowed_extensions:
                yield os.path.join(root, name)


def install_stubs(checkout: str, models_dir: str) -> None:
    import modules  # noqa: F401 - the checkout's own package (a namespace package in A1111 and Forge); stubs go inside it
    import torch

    cpu = torch.device("cpu")
    paths = dict(
        script_path=checkout,
        data_path=checkout,
        models_path=models_dir,
        cwd=checkout,
        extensions_dir=os.path.join(checkout, "extensions"),
        extensions_builtin_dir=os.path.join(checkout, "extensions-builtin"),
    )
    _module("modules.paths_internal", **paths)
    _module("modules.paths", **paths)
    state = types.SimpleNamespace(interrupted=False, skipped=False)
    cmd_opts = argparse.Namespace(
        no_half=True, upcast_sampling=False, unix_filenames_sanitization=False, filenames_max_length=128
    )
    opts = _Options(
        {
            "ESRGAN_tile": 192,
            "ESRGAN_tile_overlap": 8,
            "enable_upscale_progressbar": False,
            "upscaler_for_img2img": None,
        }
    )
    _module(
        "modules.shared",
        opts=opts,
        OptionInfo=_OptionInfo,
        state=state,
        cmd_opts=cmd_opts,
        device=cpu,
        models_path=models_dir,
        script_path=checkout,
        data_path=checkout,
        walk_files=_walk_files,
        progress_print_out=sys.stdout,
        sd_upscalers=[],
        hide_dirs={},
    )
    _module(
        "modules.devices",
        device=cpu,
        device_esrgan=cpu,
        cpu=cpu,
        torch_gc=lambda: None,
        without_autocast=contextlib.nullcontext,
        dtype=torch.float32,
    )
    callbacks = []
    _module(
        "modules.script_callbacks",
        on_ui_settings=callbacks.append,
        ui_settings_callbacks=callbacks,
        clear_callbacks=callbacks.clear,
    )
    caches: dict = {}
    _module("modules.cache", cache=lambda section: caches.setdefault(section, {}), dump_cache=lambda: None)
    for name in ("modules.sd_samplers", "modules.stealth_infotext"):
        _module(name)
    forge = os.path.isdir(os.path.join(checkout, "modules_forge"))
    if forge:
        _module("modules_forge")
        _module("modules_forge.utils", prepare_free_memory=lambda *a, **k: None)


def main(argv: list[str]) -> int:
    checkout, extensions_dir, models_dir, image_path, scale, data_path, out = argv
    sys.path.insert(0, checkout)
    install_stubs(checkout, models_dir)
    from modules import modelloader, script_callbacks, script_loading, shared

    parser = argparse.ArgumentParser()
    script_loading.preload_extensions(extensions_dir, parser)
    vars(shared.cmd_opts).update(vars(parser.parse_args([])))

    for extension in sorted(os.listdir(extensions_dir)):  # as modules.scripts.load_scripts does
        base = os.path.join(extensions_dir, extension)
        scripts_dir = os.path.join(base, "scripts")
        if not os.path.isdir(scripts_dir):
            continue
        for name in sorted(os.listdir(scripts_dir)):
            if name.endswith(".py"):
                saved = sys.path
                sys.path = [base] + sys.path
                try:
                    script_loading.load_module(os.path.join(scripts_dir, name))
                finally:
                    sys.path = saved
    for callback in list(script_callbacks.ui_settings_callbacks):
        callback()

    modelloader.load_upscalers()
    print(
        json.dumps(
            [
                {"name": d.name, "data_path": d.data_path, "scale": d.scale, "class": type(d.scaler).__name__}
                for d in shared.sd_upscalers
            ]
        )
    )

    from PIL import Image

    chosen = next(d for d in shared.sd_upscalers if d.data_path == data_path)
    with Image.open(image_path) as image:
        image.load()
        result = chosen.scaler.upscale(image, float(scale), chosen.data_path)
    result.save(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
