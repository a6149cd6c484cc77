"""Packaging: importable without ComfyUI, `python -m tilewise` works, licence present."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_does_not_pull_in_comfyui():
    code = (
        "import sys, tilewise, tilewise.engine; "
        "print(any(m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths') for m in sys.modules)); "
        "print(hasattr(tilewise, 'comfy_entrypoint'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_module_help_runs():
    result = subprocess.run([sys.executable, "-m", "tilewise", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "upscale" in result.stdout and "info" in result.stdout


def test_internal_imports_are_relative():
    offenders = [
        p
        for p in ROOT.rglob("*.py")
        if not {".venv", "tests", "benchmarks", "tools"} & set(p.relative_to(ROOT).parts)
        and ("from tilewise" in p.read_text() or "import tilewise" in p.read_text())
    ]
    assert offenders == []


def test_licence_is_mit():
    assert "MIT License" in (ROOT / "LICENSE").read_text()


HOSTS = ("cli.py", "nodes", "scripts")


def _host_files():
    root = Path(__file__).resolve().parents[1]
    for name in HOSTS:
        path = root / name
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def test_hosts_import_only_the_engines_public_names():
    """Hosts are adapters: they import `tilewise.engine`'s public names (`__all__`), never an
    engine module's internals, and never another host (the ComfyUI info node once took its
    summary from the CLI)."""
    import ast

    import tilewise.engine as engine

    public = set(engine.__all__)
    found = []
    for path in _host_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module:
                parts = node.module.split(".")
                if parts[0] == "engine":
                    if len(parts) > 1:
                        found.append(f"{path.name}:{node.lineno} imports from engine.{'.'.join(parts[1:])}")
                    found += [
                        f"{path.name}:{node.lineno} imports {a.name}, not public"
                        for a in node.names
                        if a.name not in public
                    ]
                if parts[0] == "cli" and path.name != "cli.py":
                    found.append(f"{path.name}:{node.lineno} imports the CLI")
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and ".engine." in node.value
                and "import" not in node.value
            ):
                found.append(f"{path.name}:{node.lineno} names an engine module: {node.value}")
    assert not found, found


def _modules() -> dict[str, Path]:
    """Dotted name (without `tilewise.`) -> file, for every module of engine/ and archs/."""
    root = Path(__file__).resolve().parents[1]
    modules = {}
    for folder in ("engine", "archs"):
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy imports inside functions included."""
    import ast

    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
            for dependency in submodules or ([target] if target in modules else []):
                if dependency != name:
                    graph[name].add(dependency)
    return graph


def _folder(module: str) -> str:
    """The row of DESIGN.md's engine map a module belongs to: `errors`, `compute`, ..., `archs`."""
    parts = module.split(".")
    return parts[1] if parts[0] == "engine" and len(parts) > 1 else parts[0]


def _allowed_imports() -> dict[str, set[str]]:
    """DESIGN.md's engine map, read from its table: folder -> the folders it may import."""
    import re

    rows = {}
    design = (Path(__file__).resolve().parents[1] / "DESIGN.md").read_text()
    for line in design.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`engine/"):
            continue
        allowed = set() if cells[2] in ("-", "everything above") else {w.strip() for w in cells[2].split(",")}
        for name in re.findall(r"`engine/(\w+)", cells[0]):
            rows[name] = allowed if cells[2] != "everything above" else {"*"}
    return rows


def test_every_engine_import_follows_the_map_in_design_md():
    """Each folder of engine/ imports only the folders its row of DESIGN.md's map allows, so the
    data path (model -> plan -> run -> image -> video) reads one way; the map is the rule."""
    rules = _allowed_imports()
    assert {"errors", "storage", "compute", "plan", "model", "run", "image", "video", "doctor"} <= set(rules)
    modules = _modules()
    unmapped = sorted({_folder(m) for m in modules if m.startswith("engine.") and _folder(m) not in rules})
    assert not unmapped, f"engine folders missing from DESIGN.md's map: {unmapped}"
    broken = []
    for module, imports in _import_graph().items():
        folder = _folder(module)
        if module == "engine" or folder not in rules or "*" in rules[folder]:
            continue
        for target in imports:
            other = _folder(target)
            if other != folder and other != "engine" and other not in rules[folder]:
                broken.append(f"{module} imports {target} ({folder} may import {sorted(rules[folder]) or 'nothing'})")
    assert not broken, broken


def test_the_engine_import_graph_is_acyclic_and_imports_in_dependency_order():
    """No module of engine/ or archs/ imports another that imports it back, not even through a
    lazy import inside a function; and importing them leaves first in a fresh interpreter works."""
    from graphlib import CycleError, TopologicalSorter

    graph = _import_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
    code = "import importlib\nfor name in %r:\n    importlib.import_module('tilewise.' + name)\nprint('ok')" % order
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_every_subpackage_goes_into_the_wheel():
    """pyproject lists packages by name: a subpackage missing there works in an editable install
    and is absent from a built wheel."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"tilewise"}
    for top in ("archs", "engine", "nodes"):
        for init in (root / top).rglob("__init__.py"):
            found.add(".".join(("tilewise", *init.parent.relative_to(root).parts)))
    assert found == listed


def test_every_mutation_of_the_mutation_check_still_finds_its_line():
    """`tools/mutation_check.py` edits exact source lines; a reformat or a rename must not turn
    it into a tool that only says "update this tool" (it did once, after the move to ruff format)."""
    import runpy

    tool = runpy.run_path(str(ROOT / "tools" / "mutation_check.py"), run_name="mutation_check")
    for mutation in tool["MUTATIONS"]:
        source = (ROOT / mutation.file).read_text()
        for old in filter(None, (mutation.old, mutation.old2)):
            assert source.count(old) == 1, f"{mutation.name}: {old!r} is not in {mutation.file} exactly once"
        assert all((ROOT / test).is_file() for test in mutation.tests), mutation.name
