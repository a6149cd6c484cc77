"""Stable Diffusion WebUI (A1111 / Forge) installer: adds the Python packages the host lacks.

The host runs this file in a subprocess at every launch (unless `--skip-install`), with its own
folder on PYTHONPATH so that `launch.run_pip` is available. Only packages that cannot be imported
are installed, always with `--no-deps`: torch, torchvision, Pillow and every package the host
already has (it pins its own versions and reinstalls them when they change) are never touched.
Nothing here raises: a failure is printed and the WebUI starts anyway (the extension then says
what is missing when it lists its models).
"""

# pyright: reportMissingImports=false
# (the host's own modules exist only inside the host process)

from __future__ import annotations

import importlib.util
import subprocess
import sys

#: (module imported by Tilewise, pip requirement installed when that module is missing)
REQUIREMENTS = (
    ("numpy", "numpy"),
    ("safetensors", "safetensors>=0.4"),
    ("einops", "einops"),
    ("spandrel", "spandrel>=0.4.1,<0.5"),
    ("png", "pypng>=0.20220715"),
    ("psutil", "psutil>=5.8"),
    ("tifffile", "tifffile>=2023.7"),
)
#: Never installed or upgraded by this file, whatever happens.
HOST_OWNED = ("torch", "torchvision", "pillow", "xformers")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(find_spec=_importable) -> list[str]:
    """Pip requirements for the modules that cannot be imported."""
    return [requirement for module, requirement in REQUIREMENTS if not find_spec(module)]


def _host_run_pip():
    try:
        import launch

        return launch.run_pip
    except Exception:
        return None


def _plain_run_pip(command: str, desc: str | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *command.split(" ")], check=True)


def install(find_spec=_importable, run_pip=None) -> list[str]:
    """Installs what is missing; returns the requirements it tried to install. Never raises."""
    try:
        wanted = [r for r in missing(find_spec) if not r.lower().startswith(HOST_OWNED)]
    except Exception as error:
        print(f"Tilewise: could not check its requirements: {error}")
        return []
    if not wanted:
        return []
    host_pip = run_pip or _host_run_pip()
    for requirement in wanted:
        try:
            if host_pip is not None:  # the host quotes nothing: quote the version range for its shell
                host_pip(f'install --no-deps "{requirement}"', f"{requirement} for Tilewise")
            else:
                _plain_run_pip(f"install --no-deps {requirement}")
        except Exception as error:
            print(
                f"Tilewise: could not install {requirement}: {error}. Install it into the WebUI's Python environment "
                f"by hand."
            )
    return wanted


if __name__ == "__main__":
    install()
