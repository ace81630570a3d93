"""Places: a name (or id, bbox, boundary) resolved to a polygon, its UTM crs and a slug."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from aether.aef import utm_epsg
from aether.config import check_slug
from aether.errors import InputError


@dataclass(frozen=True)
class Place:
    """A resolved place. ``boundary`` is a shapely (Multi)Polygon in EPSG:4326."""

    name: str
    slug: str
    boundary: Any
    crs: str  # "EPSG:326xx" / "EPSG:327xx": the UTM zone of the centroid

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in degrees."""
        return tuple(float(v) for v in self.boundary.bounds)  # type: ignore[return-value]

    @property
    def area_km2(self) -> float:
        import geopandas as gpd

        g = gpd.GeoSeries([self.boundary], crs="EPSG:4326").to_crs(self.crs)
        return float(g.area.iloc[0]) / 1e6


def slugify(name: str) -> str:
    """A path-safe slug: ASCII letters, digits and '-'; never '..' or a separator."""
    if any(c in name for c in "/\\\x00") or name.strip() in {".", ".."}:
        raise InputError(f"place name {name!r} looks like a path",
                         "give a city name, not a path (files go to --pois / --boundary)")
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")[:80]
    return check_slug(slug or "place")


def place_from_polygon(name: str, boundary: Any, slug: str | None = None) -> Place:
    """Wrap a polygon as a Place, with the UTM crs of its centroid."""
    c = boundary.centroid
    return Place(name=name, slug=slug or slugify(name), boundary=boundary,
                 crs=f"EPSG:{utm_epsg(c.x, c.y)}")
