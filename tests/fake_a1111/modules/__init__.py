"""Fake WebUI `modules` package (see ../README.md)."""
