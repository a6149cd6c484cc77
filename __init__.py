"""Tilewise: seamless tiled super-resolution for ComfyUI, Stable Diffusion WebUI and the CLI.

The repository root is at once the Python package `tilewise`, a ComfyUI custom-node folder and
an A1111/Forge extension folder. Importing it outside ComfyUI never imports ComfyUI: the
ComfyUI entry point `comfy_entrypoint` exists only when ComfyUI's V3 API is importable.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

__version__ = "0.1.0"


def _comfy_v3_available() -> bool:
    try:
        return (
            importlib.util.find_spec("comfy_api") is not None
            and importlib.util.find_spec("comfy_api.latest") is not None
        )
    except (ImportError, ValueError):
        return False


def _inside_comfyui() -> bool:
    """ComfyUI imports its own `folder_paths` and `comfy` before it loads custom nodes."""
    return "folder_paths" in sys.modules and "comfy" in sys.modules


if _comfy_v3_available() and (Path(__file__).parent / "nodes" / "__init__.py").is_file():
    #: The pack's front-end extension (web/tilewise.js), which ComfyUI serves to its page.
    WEB_DIRECTORY = "./web"

    async def comfy_entrypoint():
        """ComfyUI V3 entry point: the node pack's extension object."""
        from .nodes import comfy_entrypoint as entry

        return await entry()

elif _inside_comfyui():
    logging.getLogger("tilewise").warning(
        "Tilewise: this ComfyUI has no V3 node API (comfy_api.latest, ComfyUI 0.3.48 or newer); "
        "the Tilewise nodes are not loaded. Update ComfyUI to use them."
    )
