"""ComfyUI node pack (V3 API, `comfy_api.latest`). One module per node family; a new family
(video, for instance) adds its module's `NODES` to `NODE_FAMILIES` below.

Imported by ComfyUI only, through the package's `comfy_entrypoint` (never `NODE_CLASS_MAPPINGS`:
ComfyUI would then ignore the V3 nodes).
"""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import export, info, loader, options, upscale, video

NODE_FAMILIES = (loader.NODES, upscale.NODES, options.NODES, info.NODES, export.NODES, video.NODES)


class TilewiseExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [node for family in NODE_FAMILIES for node in family]


async def comfy_entrypoint() -> TilewiseExtension:
    return TilewiseExtension()
