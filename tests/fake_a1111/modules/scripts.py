"""Fake `modules.scripts`: extension pre-load and script loading as the host does them.

`scripts/*.py` of each extension is imported by path (module name = file name, not importable by
name) with the extension folder at the front of `sys.path` during the import; an exception in a
script is reported and the host goes on.
"""

import importlib.util
import os
import sys

from modules import errors, script_callbacks

loaded = {}


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    loaded[path] = module
    return module


def preload_extensions(extension_dirs, parser):
    for folder in extension_dirs:
        path = os.path.join(folder, "preload.py")
        if os.path.isfile(path):
            try:
                module = load_module(path)
                if hasattr(module, "preload"):
                    module.preload(parser)
            except Exception:
                errors.report(f"Error running preload() for {path}", exc_info=True)


def load_scripts(extension_dirs):
    script_callbacks.clear_callbacks()
    modules = []
    for folder in extension_dirs:
        scripts_dir = os.path.join(folder, "scripts")
        if not os.path.isdir(scripts_dir):
            continue
        for name in sorted(os.listdir(scripts_dir)):
            path = os.path.join(scripts_dir, name)
            if not name.endswith(".py") or not os.path.isfile(path):
                continue
            saved = sys.path
            sys.path = [folder] + sys.path
            try:
                modules.append(load_module(path))
            except Exception:
                errors.report(f"Error loading script: {name}", exc_info=True)
            finally:
                sys.path = saved
    return modules
