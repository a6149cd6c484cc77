"""Packaging: importable without ComfyUI, `python -m tilewise` works, licence present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_not_pull_in_comfyui():
    code = "import sys, tilewise, tilewise.engine; print(any(m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths') for m in sys.modules)); print(hasattr(tilewise, 'comfy_entrypoint'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_module_help_runs():
    result = subprocess.run([sys.executable, "-m", "tilewise", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "upscale" in result.stdout and "info" in result.stdout


def test_internal_imports_are_relative():
    offenders = [p for p in ROOT.rglob("*.py") if not {".venv", "tests", "benchmarks", "tools"} & set(p.relative_to(ROOT).parts) and ("from tilewise" in p.read_text() or "import tilewise" in p.read_text())]
    assert offenders == []


def test_licence_is_mit():
    assert "MIT License" in (ROOT / "LICENSE").read_text()
