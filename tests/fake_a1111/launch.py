"""Fake `launch`: records what an extension's install.py asks pip to do."""

calls: list[tuple[str, str | None]] = []


def run_pip(command, desc=None, live=False):
    calls.append((command, desc))


def is_installed(package):
    import importlib.util

    return importlib.util.find_spec(package) is not None
