"""Fake `modules.cache`: named dict-like caches (the host keeps them on disk)."""

caches: dict[str, dict] = {}


def cache(subsection: str) -> dict:
    return caches.setdefault(subsection, {})
