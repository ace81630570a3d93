"""The installed aether's version, read from its package metadata (pyproject.toml is the one
place it is written)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("aether")
except PackageNotFoundError:  # a source tree on sys.path without an install
    VERSION = "0+unknown"
