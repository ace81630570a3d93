"""POI sourcing: one entry point, ``load_pois``, over every source, one normalisation.

Sources (``aether.pois.readers``) return raw frames; here they become the pois table of the
contract: representative points in EPSG:4326, clipped to the place, de-duplicated (same
name and category within ``DEDUP_M`` metres), with the method's text, sorted by ``poi_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from aether.errors import PoiError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import geopandas as gpd

    from aether.places.place import Place

DEDUP_M = 5.0
SOURCE_KINDS = ("osm", "overture[:RELEASE]", "pbf:PATH", "file:PATH")
#: Optional columns a source may add to the pois table (kept when present).
OPTIONAL_COLUMNS = ("confidence",)


class PoiOptions(BaseModel):
    """Options of the POI sources: the column mapping of ``file:`` POIs (``--name-column``,
    ...; ``poi_options`` in run files). Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name_column: str | None = None
    category_column: str | None = None
    top_category_column: str | None = None


def poi_options(options: dict[str, Any]) -> PoiOptions:
    """``options`` checked; PoiError naming a bad key and the valid ones."""
    try:
        return PoiOptions(**options)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        what = "unknown POI option" if err["type"] == "extra_forbidden" else err["msg"]
        raise PoiError(f"{what} {key!r}",
                       f"valid options: {', '.join(PoiOptions.model_fields)}") from None


@dataclass(frozen=True)
class PoiSpec:
    """Where a request's POIs come from, and how a POI file's columns are read: checked once
    where the request is made, carried typed from there.

    ``source`` is ``osm``, ``overture[:RELEASE]``, ``pbf:PATH``, ``file:PATH``, a bare path
    (read as ``file:``), or None: not given (``osm``, or the sample city's own extract).
    """

    source: str | None = None
    options: PoiOptions = field(default_factory=PoiOptions)

    @classmethod
    def of(cls, source: str | None = None, **options: Any) -> PoiSpec:
        """A spec from what a user typed; PoiError naming a bad column option."""
        if source is not None and source.split(":", 1)[0] not in _KINDS:
            source = f"file:{source}"  # a bare path is a POI file
        return cls(source, poi_options({k: v for k, v in options.items() if v is not None}))

    def load(self, place: Place | None, default: str = "osm") -> gpd.GeoDataFrame:
        """The pois table this spec names (``default`` when it names no source)."""
        return load_pois(self.source or default, place,
                         **self.options.model_dump(exclude_none=True))

    @property
    def local(self) -> bool:
        """POIs from a file of the user's (no network needed for them)."""
        return self.source is not None and self.source.startswith(("file:", "pbf:"))


#: The POI source kinds (``KIND`` or ``KIND:...``); anything else is a path.
_KINDS = ("osm", "overture", "pbf", "file")


def load_pois(source: str, place: Place | None = None, **options: Any) -> gpd.GeoDataFrame:
    """The pois table from ``source`` (``"osm"``, ``"overture[:RELEASE]"``, ``"pbf:PATH"`` or
    ``"file:PATH"``); ``options`` are ``PoiOptions``."""
    opts = poi_options(options)
    kind, _, path = source.partition(":")
    if kind == "pbf" and path:
        from aether.pois.readers import pbf

        raw, label = pbf.read(path), f"pbf:{_basename(path)}"
    elif kind == "file" and path:
        from aether.pois.readers import vector

        raw = vector.read(path, **opts.model_dump())
        label = f"file:{_basename(path)}"
    elif kind == "overture":
        from aether.pois.readers import overture

        raw = overture.read(place, release=path or None)
        label = f"overture:{path}" if path else "overture"
    elif source == "osm":
        if place is None:
            raise PoiError("the osm POI source needs a place", "pass --city, --bbox or --boundary")
        from aether.pois.readers import overpass

        raw, label = overpass.read(place), "osm"
    else:
        raise PoiError(f"unknown POI source {source!r}", f"use one of {', '.join(SOURCE_KINDS)}")
    return normalise(raw, place, label)


def _basename(path: str) -> str:
    from pathlib import Path

    return Path(path).name


def normalise(raw: gpd.GeoDataFrame, place: Place | None, label: str) -> gpd.GeoDataFrame:
    """Raw source rows → the pois contract (points, clip, de-duplicate, text, sort)."""
    import geopandas as gpd
    import pandas as pd

    from aether.pois.taxonomy import poi_text

    keep = _has_geometry(raw.geometry.values)
    if not keep.all():
        log.warning("%s: %d of %d row(s) have no usable geometry (missing, empty or NaN "
                    "coordinates); dropped", label, int((~keep).sum()), len(keep))
    df = raw[keep].copy()
    df["geometry"] = _points(gpd.GeoSeries(df.geometry.values, crs="EPSG:4326")).values
    df = gpd.GeoDataFrame(df, geometry="geometry", crs="EPSG:4326")
    if place is not None:
        df = df[df.geometry.covered_by(place.boundary).values]
    where = f" in {place.name}" if place is not None else ""
    if len(df) == 0:
        raise PoiError(f"no POIs found{where} ({label})",
                       "check the place and the POI source, or pass --pois FILE")
    df["name"] = df["name"].where(df["name"].notna(), None)
    df = df.sort_values("poi_id", kind="stable")
    dup = df["poi_id"].duplicated()
    if dup.any():
        log.warning("%s: %d row(s) repeat the poi_id of an earlier row (%s...); kept the first "
                    "of each, since poi_id keys every table", label, int(dup.sum()),
                    ", ".join(map(str, df.loc[dup, "poi_id"].unique()[:3])))
        df = df[~dup.to_numpy()]
    df = _dedup(df, place)
    df["text"] = [poi_text(c, t, n) for c, t, n in
                  zip(df["category"], df["top_category"], df["name"], strict=True)]
    df["source"] = label
    from aether.io.tables import POI_COLUMNS  # with pandas: not for a run's client

    extra = [c for c in OPTIONAL_COLUMNS if c in df.columns]
    out = df[[*POI_COLUMNS, *extra]].reset_index(drop=True)
    for col in ("poi_id", "name", "category", "top_category", "text", "source"):
        out[col] = out[col].astype(pd.StringDtype())
    table = gpd.GeoDataFrame(out, geometry="geometry", crs="EPSG:4326")
    if "snapshot" in raw.attrs:  # the date the reader says its data is as of (readers.base)
        table.attrs["snapshot"] = raw.attrs["snapshot"]
    return table


def _has_geometry(arr: Any) -> Any:
    """Which geometries are usable: present, not empty, every coordinate finite (an Overture
    point of NaN coordinates is read as an empty point)."""
    import numpy as np
    import shapely

    arr = np.asarray(arr, dtype=object)
    ok = ~(shapely.is_missing(arr) | shapely.is_empty(arr))
    if ok.any():
        coords, where = shapely.get_coordinates(arr[ok], return_index=True)
        bad = np.unique(where[~np.isfinite(coords).all(axis=1)])
        ok[np.flatnonzero(ok)[bad]] = False
    return ok


def _points(geoms: gpd.GeoSeries) -> gpd.GeoSeries:
    """Representative points; closed rings count as areas, geometries are made valid first."""
    import shapely

    arr = geoms.values
    rings = (shapely.get_type_id(arr) == 1) & shapely.is_closed(arr) & (
        shapely.get_num_coordinates(arr) >= 4)
    if rings.any():
        arr = arr.copy()
        arr[rings] = shapely.polygons(
            [shapely.linearrings(shapely.get_coordinates(g)) for g in arr[rings]])
    arr = shapely.make_valid(arr)
    return geoms.__class__(shapely.point_on_surface(arr), crs=geoms.crs)


def _dedup(df: Any, place: Place | None) -> Any:
    """Drop rows with the same name and category as an earlier row within DEDUP_M metres."""
    import numpy as np
    import shapely

    from aether.core.aef import utm_epsg

    named = df["name"].notna().to_numpy()
    if named.sum() < 2:
        return df
    if place is not None:
        crs = place.crs
    else:
        c = shapely.MultiPoint(df.geometry.values).centroid
        crs = f"EPSG:{utm_epsg(c.x, c.y)}"
    xy = df.geometry.to_crs(crs).values
    tree = shapely.STRtree(xy)
    left, right = tree.query(xy, predicate="dwithin", distance=DEDUP_M)
    names = df["name"].to_numpy(dtype=object)
    cats = df["category"].to_numpy(dtype=object)
    pair = (left < right) & named[left] & named[right]
    left, right = left[pair], right[pair]
    same = (names[left] == names[right]) & (cats[left] == cats[right])
    drop = np.zeros(len(df), dtype=bool)
    drop[right[same]] = True
    return df[~drop]
