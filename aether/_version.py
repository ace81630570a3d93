"""The installed aether's version, read from its package metadata (pyproject.toml is the one
place it is written)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def installed_version() -> str:
    """The aether installed in this process's environment (what a Dask worker reports)."""
    try:
        return version("aether")
    except PackageNotFoundError:
        return "0+unknown"


#: This process's aether (``0+unknown`` for a source tree on sys.path without an install).
VERSION = installed_version()
