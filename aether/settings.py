"""Typed settings: where data lives and the defaults of a run; env vars ``AETHER_*``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from aether.errors import InputError

DEFAULT_DATA_DIR = "aether-data"
#: The public AlphaEarth COG index (Source Cooperative's free HTTPS mirror of
#: ``gs://alphaearth_foundations``, which is requester-pays): ``--source cog``'s default tiles.
DEFAULT_TILES = "https://data.source.coop/tge-labs/aef/v1/annual/aef_index.parquet"
DEFAULT_YEAR = 2024
DEFAULT_RADII: tuple[float, ...] = (100.0, 200.0)
MAX_RADIUS_M = 5_000.0
_SLUG_OK = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")


def data_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: the option, else ``AETHER_DATA_DIR``, else ``./aether-data``."""
    return Path(value or os.environ.get("AETHER_DATA_DIR") or DEFAULT_DATA_DIR)


def tiles(value: str | os.PathLike[str] | None = None) -> str:
    """The COG tiles: the option, else ``AETHER_TILES``, else the public index (DEFAULT_TILES)."""
    return str(value or os.environ.get("AETHER_TILES") or DEFAULT_TILES)


def cache_dir(value: str | os.PathLike[str] | None = None) -> Path:
    """Where downloaded indexes are kept: ``AETHER_CACHE_DIR``, else ``$XDG_CACHE_HOME/aether``."""
    if value or os.environ.get("AETHER_CACHE_DIR"):
        return Path(value or os.environ["AETHER_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "aether"


def check_radii(radii: list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """Radii in metres, de-duplicated and sorted: positive for circles, negative for square
    pixel windows (``aether.core.windows``: -(p + 0.5) × 10 m for a (2p + 1)² px square), at
    most MAX_RADIUS_M either way."""
    for r in radii:
        if not (abs(r) > 0) or abs(r) > MAX_RADIUS_M:
            raise InputError(
                f"radius {r:g} m is out of range",
                f"use a radius between 1 and {MAX_RADIUS_M:g} m, e.g. --radius 100",
            )
        if r < 0 and (-r / 10.0 - 0.5) % 1:
            raise InputError(f"radius {r:g} m is not a square pixel window",
                             "use --window square:P (e.g. square:4,9), or a positive radius")
    return tuple(sorted({float(r) for r in radii}))


def check_year(year: int) -> int:
    """A plausible AlphaEarth year (the dataset starts in 2017)."""
    from aether.core.aef import FIRST_YEAR

    if year < FIRST_YEAR or year > 2100:
        raise InputError(f"year {year} is out of range", f"AlphaEarth starts in {FIRST_YEAR}")
    return year


def check_slug(slug: str) -> str:
    """A slug is a single safe path component: it can never escape the data directory."""
    if not _SLUG_OK.match(slug):
        raise InputError(f"{slug!r} is not a safe place slug", "use letters, digits, '-' and '_'")
    return slug


def city_dir(root: Path, slug: str, year: int) -> Path:
    """``<data>/<slug>/<year>``: where one city-year's tables live."""
    return root / check_slug(slug) / str(year)
