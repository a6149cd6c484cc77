"""Stable Diffusion WebUI (A1111 / Forge) pre-load hook: adds `--tilewise-models-path`.

The host runs `preload(parser)` of every extension before it parses its command line. The option
name follows the host's rule for upscalers (`UpscalerTilewise` -> `cmd_opts.tilewise_models_path`),
so the host passes the folder to the upscaler's constructor. Outside the WebUI this file is unused.
"""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

import os


def _default_models_folder():
    try:
        from modules.paths_internal import models_path
    except Exception:
        try:
            from modules.paths import models_path
        except Exception:
            return None
    return os.path.join(models_path, "Tilewise")


def preload(parser):
    parser.add_argument(
        "--tilewise-models-path",
        type=str,
        default=_default_models_folder(),
        help="Folder with Tilewise upscaler model files (.safetensors, .pth, ...); default: models/Tilewise.",
    )
