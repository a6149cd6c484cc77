"""Tilewise as a Stable Diffusion WebUI upscaler (AUTOMATIC1111 1.10 and Forge).

How the host uses this file:
- at start-up it imports every `scripts/*.py` of every enabled extension *by path* (the module is
  named after the file, e.g. `tilewise_upscaler.py`, and is not importable by name), with the
  extension folder put on `sys.path`;
- then `modules.modelloader.load_upscalers()` instantiates every *direct* subclass of
  `modules.upscaler.Upscaler` as `cls(cmd_opts.<name>_models_path)` (here
  `cmd_opts.tilewise_models_path`, the `--tilewise-models-path` option added by `preload.py`) and
  offers the `scalers` of every instance in the Extras tab, hires fix, img2img and the API;
- to upscale, the host calls `Upscaler.upscale(img, scale, data_path)`, which calls
  `do_upscale(img, data_path)` up to three times while the image is smaller than the target and
  then resizes with Lanczos to the target (rounded down to a multiple of 8).

So `do_upscale` runs the model once at its native scale; the host does the rest. For the same
model, image and options it returns exactly the pixels `python -m tilewise upscale` writes.
No numerical work happens here: everything goes through the Tilewise engine (not the host's
tiling helpers, which feed models BGR and blend seams linearly).

Nothing in this file may raise out of the constructor: an exception there stops the host's
start-up. A model that cannot be read is still listed; using it logs a clear error and returns
the input unchanged, as the host's own upscalers do.
"""

# pyright: reportMissingImports=false, reportMissingModuleSource=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

from modules import shared
from modules.upscaler import Upscaler, UpscalerData

try:
    from modules import script_callbacks
except ImportError:  # not expected in a real host; keep the upscaler usable without settings
    script_callbacks = None

try:  # Forge only: frees device memory held by its own models before an upscale
    from modules_forge.utils import prepare_free_memory as _forge_prepare_free_memory
except Exception:
    _forge_prepare_free_memory = None

log = logging.getLogger("tilewise")

#: The extension folder, which is also the `tilewise` package (whatever the folder is called).
EXTENSION_DIR = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "tilewise"

#: Settings added to the host's "Upscaling" section; see `on_ui_settings`.
OPT_TILE = "tilewise_tile"
OPT_TILE_PAD = "tilewise_tile_pad"
OPT_PRECISION = "tilewise_precision"
OPT_TILEABLE = "tilewise_tileable"
DEFAULT_TILE = 0  # automatic
DEFAULT_TILE_PAD = -1  # the model's receptive radius
DEFAULT_PRECISION = "auto"

#: Every Tilewise entry in the host's dropdowns starts with this (names are looked up first match).
NAME_PREFIX = "Tilewise "
#: Scale shown for a model whose file cannot be read and whose name holds no scale.
FALLBACK_SCALE = 4
#: Host cache section remembering model scales between start-ups (keyed by file, mtime, size).
SCALE_CACHE_SECTION = "tilewise-model-scales"


def import_package(root: Path = EXTENSION_DIR):
    """The Tilewise package held in `root`, imported whether or not it is pip-installed.

    The extension folder may have any name (`tilewise`, `sd-webui-tilewise`, ...), so it is loaded
    from its `__init__.py` under the name `tilewise`; every import inside the package is relative,
    so any name works. If another copy is already imported as `tilewise`, this folder's copy is
    loaded under a private name instead, so the extension always runs its own code.
    """
    root = Path(root).resolve()
    loaded = sys.modules.get(PACKAGE_NAME)
    if loaded is not None and _is_loaded_from(loaded, root):
        return loaded
    name = PACKAGE_NAME if loaded is None else "tilewise_extension_" + re.sub(r"\W", "_", root.name)
    if name in sys.modules and _is_loaded_from(sys.modules[name], root):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the Tilewise package from {root}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _is_loaded_from(module, root: Path) -> bool:
    try:
        return any(Path(p).resolve() == root for p in getattr(module, "__path__", []))
    except OSError:
        return False


# The package and its engine module, or None when they could not be imported (see _IMPORT_ERROR).
_package: Any = None
tw: Any = None
_scale_from_file_name: Any = None
try:
    _package = import_package()
    tw = importlib.import_module(f"{_package.__name__}.engine")
    _scale_from_file_name = tw.scale_from_file_name
    _IMPORT_ERROR: BaseException | None = None
except Exception as error:  # e.g. spandrel missing: report it once the host builds the upscaler list
    _package = tw = _scale_from_file_name = None
    _IMPORT_ERROR = error


class UpscalerTilewise(Upscaler):
    """Every model file in the Tilewise models folder (weights or `.onnx`), plus the built-in models.

    `scalers` holds one `UpscalerData` per model, named "Tilewise <file name without extension>"
    (subfolders kept as `sub/name`) or "Tilewise built-in <name>", with the model's real scale.
    """

    def __init__(self, dirname: str | None = None):
        self.name = "Tilewise"  # before Upscaler.__init__: gives model_path = <models>/Tilewise
        self.user_path = dirname
        self.scalers = []
        self._lock = threading.Lock()
        self._last: tuple[tuple | None, object] | None = None  # (file key, descriptor) of the last model used
        try:
            super().__init__(create_dirs=True)
        except Exception:
            _report("Tilewise: the host's upscaler set-up failed; Tilewise models may be missing.", exc_info=True)
        try:
            self.scalers = self._list_scalers(dirname)
        except Exception:
            _report("Tilewise: could not list the Tilewise models.", exc_info=True)

    # ----------------------------------------------------------------------------- listing
    def models_folder(self, dirname: str | None = None) -> Path:
        """`--tilewise-models-path` when given, else `<host models folder>/Tilewise`."""
        if dirname:
            return Path(dirname)
        if self.model_path:
            return Path(self.model_path)
        return Path(getattr(shared, "models_path", "models")) / self.name

    def _list_scalers(self, dirname: str | None) -> list:
        if _IMPORT_ERROR is not None:
            _report(
                f"Tilewise: cannot import its engine ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); no Tilewise "
                f"models are listed. "
                "Restart the WebUI so that the extension's install.py can install what is missing."
            )
            return []
        folder = self.models_folder(dirname)
        files = model_files(folder)
        probe = _environment_problem() is None
        scales = _ScaleCache()
        scalers = []
        for path, name in display_names(folder, files).items():
            scale = scales.scale(str(path), path.name, probe)
            scalers.append(UpscalerData(name, str(path), self, scale))
        for builtin in tw.builtin_names():
            scale = scales.scale(builtin, builtin, probe)
            scalers.append(UpscalerData(f"{NAME_PREFIX}built-in {builtin.split(':', 1)[1]}", builtin, self, scale))
        scales.save()
        return scalers

    # ----------------------------------------------------------------------------- upscaling
    def load_model(self, path: str):
        """The spandrel descriptor for `path` (a file or `builtin:` name); cached between calls."""
        key = _file_key(path)
        with self._lock:
            if self._last is not None and key is not None and self._last[0] == key:
                return self._last[1]
        descriptor = tw.load_model(path)  # the engine also caches by (file, mtime, size)
        with self._lock:
            self._last = (key, descriptor)
        return descriptor

    def do_upscale(self, img, selected_model):
        """Runs the model once at its native scale: PIL in, PIL out (L, LA, RGB or RGBA as given)."""
        label = _model_label(selected_model)
        if _IMPORT_ERROR is not None:
            _report(f"Tilewise: cannot upscale with {label}: the engine failed to import ({_IMPORT_ERROR}).")
            return img
        if not selected_model:
            _report("Tilewise: no model was selected; the image is left as it is.")
            return img
        if _forge_prepare_free_memory is not None:
            try:
                _forge_prepare_free_memory()
            except Exception:
                log.debug("Forge's prepare_free_memory failed", exc_info=True)
        try:
            descriptor = self.load_model(selected_model)
        except tw.TilewiseError as error:
            _report(f"Tilewise: {_naming(error, label)} The image is left as it is.")
            return img
        except Exception:
            _report(f"Tilewise: cannot load model {label}; the image is left as it is.", exc_info=True)
            return img
        progress = _ConsoleProgress(f"Tilewise {label}")
        try:
            result = tw.upscale(
                descriptor, tw.pil_to_tensor(img), upscale_options(), progress=progress, cancel=interrupted
            )
        except tw.CancelledError:
            return img  # as the host's own upscalers do when interrupted
        except tw.TilewiseError as error:
            _report(f"Tilewise: upscaling with {label} failed: {error} The image is left as it is.")
            return img
        finally:
            progress.close()
        return tw.tensor_to_pil(result)


# --------------------------------------------------------------------------------- options
def _option(key: str, default):
    """A setting's value; the default when the host has not registered it (e.g. API-only runs)."""
    try:
        value = getattr(shared.opts, key)
    except Exception:
        return default
    return default if value is None else value


def upscale_options():
    """The engine options for the host's current settings, exactly as the CLI would build them.

    Tile size 0 = automatic (CLI `--tile auto`), -1 = whole image (CLI `--tile 0`), else the
    window length (at least the engine's `MIN_USER_TILE`, else an error); tile padding -1 = the
    model's receptive radius (no `--tile-pad`),
    else `--tile-pad N`; precision is `--precision`, with `auto` meaning fp32 when the host runs
    with `--no-half`; tileable textures is `--tileable`. The target is the model's native scale
    (the host's loop does the rest).
    """
    try:
        tile = int(_option(OPT_TILE, DEFAULT_TILE))
    except (TypeError, ValueError):
        tile = DEFAULT_TILE
    try:
        pad = int(_option(OPT_TILE_PAD, DEFAULT_TILE_PAD))
    except (TypeError, ValueError):
        pad = DEFAULT_TILE_PAD
    try:  # validated by the engine, as in every host: a tile of 10 is refused here as in the CLI and ComfyUI
        tiles = tw.tile_settings(max(tile, -1), pad=max(pad, -1))
    except tw.TileSettingsError as error:
        where = "tile padding" if error.setting == "pad" else "tile size"
        raise tw.TileSettingsError(error.setting, f"{error} (Settings > Upscaling > Tilewise {where})") from None
    precision = str(_option(OPT_PRECISION, DEFAULT_PRECISION)).lower()
    if precision not in tw.PRECISIONS:
        precision = DEFAULT_PRECISION
    if precision == "auto" and getattr(getattr(shared, "cmd_opts", None), "no_half", False):
        precision = "fp32"
    return tw.UpscaleOptions(
        tiles=tiles,
        precision=precision,
        device=_device(),
        target=tw.ScaleTarget("native"),
        tileable=_option(OPT_TILEABLE, False) is True,
        devices=web_ui_devices(),
    )


def _device() -> str:
    """The device the host gives upscalers (`--use-cpu esrgan` makes it the CPU)."""
    device = None
    try:
        from modules import devices

        device = getattr(devices, "device_esrgan", None) or getattr(devices, "device", None)
    except Exception:
        pass
    device = device or getattr(shared, "device", None)
    return str(device) if device is not None else "auto"


@functools.lru_cache(maxsize=1)
def web_ui_devices():
    """The engine's device policy answered by the host (one instance: it keeps no state and reads
    the host's settings at each call): its upscaler device for `auto`, fp32
    under `--no-half` / `--precision full`, Forge's free-memory figure where Forge has one, and
    the host's `devices.torch_gc()` to hand cached memory back. The rest is plain PyTorch."""

    class WebUIDevices(tw.DevicePolicy):
        name = "A1111/Forge"

        def default_device(self):
            device = _device()
            return super().default_device() if device == "auto" else super().resolve(device)

        def free_memory(self, device):
            forge = _forge_memory_management()
            if forge is not None and not self.is_cpu(device):
                try:
                    return int(forge.get_free_memory(device))
                except Exception:
                    pass
            return super().free_memory(device)

        def fp16(self, device):
            return not _full_precision() and super().fp16(device)

        def bf16(self, device):
            return not _full_precision() and super().bf16(device)

        def empty_cache(self, device):
            try:
                from modules import devices

                devices.torch_gc()
            except Exception:
                super().empty_cache(device)

    return WebUIDevices()


def _full_precision() -> bool:
    options = getattr(shared, "cmd_opts", None)
    return bool(getattr(options, "no_half", False)) or getattr(options, "precision", "autocast") == "full"


def _forge_memory_management():
    """Forge's memory manager (`backend.memory_management`), None on A1111."""
    try:
        return importlib.import_module("backend.memory_management")
    except Exception:
        return None


def interrupted() -> bool:
    """The host's Interrupt (and Skip, where it exists) buttons; checked by the engine between tiles."""
    state = getattr(shared, "state", None)
    return bool(getattr(state, "interrupted", False) or getattr(state, "skipped", False))


def on_ui_settings() -> None:
    """Adds the Tilewise settings to the host's Settings > Upscaling section."""
    try:
        import gradio as gr
    except ImportError:  # only in test doubles of the host
        gr = None
    section = ("upscaling", "Upscaling")
    choices = list(tw.PRECISIONS) if tw is not None else ["auto", "fp32", "fp16", "bf16"]
    options = [
        (
            OPT_TILE,
            DEFAULT_TILE,
            "Tilewise tile size",
            getattr(gr, "Slider", None),
            {"minimum": -1, "maximum": 2048, "step": 1},
            "0 = automatic, -1 = whole image at once; tiles are seamless, smaller ones only use less memory",
        ),
        (
            OPT_TILE_PAD,
            DEFAULT_TILE_PAD,
            "Tilewise tile padding",
            getattr(gr, "Slider", None),
            {"minimum": -1, "maximum": 256, "step": 1},
            "context read around each tile; -1 = the model's receptive radius (exact)",
        ),
        (
            OPT_PRECISION,
            DEFAULT_PRECISION,
            "Tilewise precision",
            getattr(gr, "Radio", None),
            {"choices": choices},
            "auto = fp16/bf16 on CUDA when the model supports it (fp32 with --no-half)",
        ),
        (
            OPT_TILEABLE,
            False,
            "Tilewise tileable textures",
            getattr(gr, "Checkbox", None),
            {},
            "continue each image across its edges from the opposite side, so an upscaled repeating texture "
            "repeats without a seam (the host's own resize to a scale the model does not reach does not wrap)",
        ),
    ]
    for key, default, label, component, args, info in options:
        option = shared.OptionInfo(default, label, component, args, section=section)
        if hasattr(option, "info"):
            option = option.info(info)
        shared.opts.add_option(key, option)


if script_callbacks is not None:
    script_callbacks.on_ui_settings(on_ui_settings)


# --------------------------------------------------------------------------------- model files
def model_files(folder: Path) -> list[Path]:
    """Model files under `folder` (recursively, hidden entries skipped), in a stable order."""
    extensions = tuple(tw.MODEL_EXTENSIONS)
    found = []
    for base, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and name.lower().endswith(extensions):
                found.append(Path(base) / name)
    return found


def display_names(folder: Path, files: list[Path]) -> dict[Path, str]:
    """ "Tilewise <path below the folder, without extension>"; the extension is kept when two files share a stem."""
    stems = {path: path.relative_to(folder).with_suffix("").as_posix() for path in files}
    counts: dict[str, int] = {}
    for stem in stems.values():
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    return {
        path: NAME_PREFIX + (stem if counts[stem.lower()] == 1 else path.relative_to(folder).as_posix())
        for path, stem in stems.items()
    }


def _file_key(source: str | None) -> tuple | None:
    if not source:
        return None
    if tw.is_builtin(source):
        return (source,)
    try:
        stat = os.stat(source)
    except OSError:
        return None
    return (os.path.realpath(source), stat.st_mtime_ns, stat.st_size)


def _naming(error: Exception, label: str) -> str:
    """The engine's message, which starts with the file name for file errors; else prefixed with it."""
    text = str(error).strip()
    return text if text.startswith(label) else f"{label}: {text}"


def _model_label(source: str | None) -> str:
    if not source:
        return "(none)"
    return source if str(source).startswith("builtin:") else os.path.basename(source)


def _environment_problem() -> str | None:
    """Why no model file can be read at all (e.g. an incompatible spandrel), or None."""
    try:
        tw.registry()
        return None
    except Exception as error:
        try:
            import spandrel

            version = getattr(spandrel, "__version__", "?")
        except Exception:
            version = "not installed"
        problem = f"{type(error).__name__}: {error}"
        _report(
            f"Tilewise: cannot read model files with the installed spandrel ({version}): {problem}. "
            "Model files are listed with the scale in their names; built-in models still work."
        )
        return problem


def _onnxruntime_version() -> str:
    """The installed onnxruntime's version (any of its builds), without importing it; "" when absent."""
    import importlib.metadata

    for distribution in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:
            return ""
    return ""


class _ScaleCache:
    """Each model's scale, read by loading it once (on the CPU) and remembered between start-ups.

    Remembered in the host's cache (`modules.cache`) keyed by file, mtime and size, so only new
    or changed files are loaded at start-up. A file that cannot be read gets the scale in its name
    (or 4) and a warning; it stays listed so that using it explains the problem.
    """

    def __init__(self):
        self.store = None
        self.changed = False
        try:
            from modules.cache import cache

            self.store = cache(SCALE_CACHE_SECTION)
        except Exception:
            self.store = None
        try:
            import spandrel

            spandrel_version = getattr(spandrel, "__version__", "")
        except Exception:
            spandrel_version = ""
        # the readers' versions: a file refused under one (an .onnx without onnxruntime) is read again under another
        self.version = f"{getattr(_package, '__version__', '')}/{spandrel_version}/{_onnxruntime_version()}"

    def scale(self, source: str, file_name: str, probe: bool) -> int:
        guess = _scale_from_file_name(file_name) or FALLBACK_SCALE
        key = _file_key(source)
        if key is None:
            return guess
        cached = self._get(source)
        if cached and cached.get("key") == list(key) and cached.get("version") == self.version:
            if cached.get("error"):
                self._warn(file_name, cached["error"], guess)
                return guess
            return int(cached["scale"])
        if not probe:
            return guess
        try:
            scale = int(tw.load_model(source, cache=None).scale)
        except tw.ModelFileError as error:  # the file's fault: remember it until the file changes
            self._put(source, {"key": list(key), "version": self.version, "error": str(error)})
            self._warn(file_name, str(error), guess)
            return guess
        except Exception as error:
            self._warn(file_name, f"{type(error).__name__}: {error}", guess)
            return guess
        self._put(source, {"key": list(key), "version": self.version, "scale": scale})
        return scale

    @staticmethod
    def _warn(file_name: str, problem: str, guess: int) -> None:
        log.warning(
            "Tilewise: %s (listed as %dx; using it leaves images unchanged)",
            _naming(Exception(problem), file_name),
            guess,
        )

    def _get(self, source: str):
        try:
            return self.store.get(source) if self.store is not None else None
        except Exception:
            return None

    def _put(self, source: str, value: dict) -> None:
        try:
            if self.store is not None:
                self.store[source] = value
                self.changed = True
        except Exception:
            pass

    def save(self) -> None:
        """Older hosts keep the cache in memory until `dump_cache()`; newer ones write at once."""
        if not self.changed:
            return
        try:
            from modules.cache import dump_cache

            dump_cache()
        except Exception:
            pass


# --------------------------------------------------------------------------------- host glue
def _report(message: str, *, exc_info: bool = False) -> None:
    """An error in the host's console (and its error list), like the host's own upscalers'."""
    try:
        from modules import errors

        errors.report(message, exc_info=exc_info)
    except Exception:
        log.error(message, exc_info=exc_info)


class _ConsoleProgress:
    """A tile progress bar in the console, like the host's own upscalers (tqdm, when enabled)."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        try:
            if self.bar is None:
                if not bool(_option("enable_upscale_progressbar", True)):
                    self.label = None
                if self.label is None:
                    return
                import tqdm

                self.bar = tqdm.tqdm(total=total, desc=self.label, unit="tile")
            self.bar.total = total
            self.bar.update(done - self.bar.n)
        except Exception:
            self.label = None  # no tqdm, or a console problem: no bar, never a failure

    def close(self) -> None:
        if self.bar is not None:
            try:
                self.bar.close()
            except Exception:
                pass
