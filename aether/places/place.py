"""Places: a name (or id, bbox, boundary) resolved to a polygon, its UTM crs and a slug."""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aether.core.aef import utm_epsg
from aether.errors import InputError, PlaceError
from aether.settings import MAX_AREA_KM2 as MAX_AREA_KM2  # larger places ask for --yes
from aether.settings import check_slug


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
        """Area on the WGS84 ellipsoid, right from a block to the whole world (one UTM zone's
        projection gave the world 0 km²). Edges are straight in lon/lat (a bbox's are
        parallels), so the boundary is densified and measured in the equal-area cylindrical
        projection EPSG:6933, which keeps a lon/lat box a box; geodesic edges (``pyproj.Geod``)
        would make the world box degenerate."""
        import shapely
        from pyproj import Transformer

        dense = shapely.segmentize(self.boundary, 0.05)
        to_ea = Transformer.from_crs("EPSG:4326", "EPSG:6933", always_xy=True)
        return float(shapely.transform(dense, lambda xy: np.column_stack(
            to_ea.transform(xy[:, 0], xy[:, 1])) if len(xy) else xy).area) / 1e6


#: The longest slug (one path component of the data directory).
SLUG_MAX = 80


def slugify(name: str) -> str:
    """A path-safe slug: ASCII letters, digits and '-'; never '..' or a separator.

    Injective over the names that reach it: a printable name short enough keeps its plain
    slug (``Helsinki`` → ``helsinki``, as data directories already hold); a name the plain
    slug would lose information from (control or format characters, no ASCII letter or digit
    at all, longer than ``SLUG_MAX``) gets a short hash of its exact text appended, so
    ``a\x01b`` and ``a b``, or two long names sharing 80 characters, never share a folder.
    """
    if any(c in name for c in "/\\\x00") or name.strip() in {".", ".."}:
        raise InputError(f"place name {name!r} looks like a path",
                         "give a city name, not a path (files go to --pois / --boundary)")
    ascii_ = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")
    lossy = (not slug or len(slug) > SLUG_MAX
             or any(unicodedata.category(c)[0] == "C" for c in name))
    if lossy:
        tag = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        slug = f"{slug[:SLUG_MAX - len(tag) - 1].rstrip('-') or 'place'}-{tag}"
    return check_slug(slug)


def place_from_polygon(name: str, boundary: Any, slug: str | None = None, *,
                       checked: bool = True, yes: bool = False) -> Place:
    """Wrap a polygon as a Place, with the UTM crs of its centroid.

    ``checked`` (the default, what a place derived from data such as the hull of a POI file
    gets) refuses a polygon that crosses the antimeridian (see ``crosses_antimeridian``) and
    one larger than the ``max_area_km2`` setting unless ``yes`` (``--yes``). ``resolve_place``
    passes False: its
    places are explicit (a bbox, a boundary, OSM's polygon) and it checks the area itself,
    with ``--yes``.
    """
    place_slug = slug or slugify(name)
    if checked:
        _check_derived(name, boundary, yes)
    c = boundary.centroid
    return Place(name=name, slug=place_slug, boundary=boundary,
                 crs=f"EPSG:{utm_epsg(c.x, c.y)}")


def crosses_antimeridian(geom: Any) -> bool:
    """Whether a lon/lat geometry is really a small one across 180°: its longitudes span more
    than half the globe, but fit in less once those west of 0° are counted from 180° on
    (points at 179.9° and -179.9° are 0.2° apart, not 359.8°). Its lon/lat hull and bbox
    would then wrap the globe the wrong way round."""
    import shapely

    lon = shapely.get_coordinates(geom)[:, 0]
    if len(lon) == 0 or float(np.ptp(lon)) <= 180.0:
        return False
    shifted = np.where(lon < 0, lon + 360.0, lon)
    return float(np.ptp(shifted)) < float(np.ptp(lon))


def _check_derived(name: str, boundary: Any, yes: bool) -> None:
    """A place made from data: not across the antimeridian, not above the area limit unless
    ``yes``."""
    from aether.settings import current

    if crosses_antimeridian(boundary):
        w, _, e, _ = boundary.bounds
        raise PlaceError(f"{name} crosses the antimeridian (longitudes from {w:g}° to {e:g}°): "
                         "as one lon/lat polygon it would wrap the whole globe",
                         "split the POIs at 180° and run each side as its own place")
    limit = current().max_area_km2
    area = Place(name, "-", boundary, "").area_km2
    if not area <= limit and not yes:
        raise PlaceError(f"{name} covers {area:,.0f} km², above the limit of {limit:,.0f} km² "
                         "(a place taken from its POIs' extent)",
                         "check the POIs' coordinates, or pass --yes (`yes: true` in a run "
                         "file) to go ahead")


AMBIGUITY_MARGIN = 0.05  # polygon results this close in Nominatim importance are ambiguous
_OSM_ID = re.compile(r"^[NWR]\d+$")


def resolve_place(
    city: str | None = None,
    *,
    osm_id: str | None = None,
    bbox: str | tuple[float, float, float, float] | None = None,
    boundary: str | Path | None = None,
    which_result: int | None = None,
    max_area_km2: float | None = None,
    yes: bool = False,
) -> Place:
    """A name, OSM id, bbox or boundary file → Place; PlaceError for every way it can fail.

    ``city`` alone geocodes through Nominatim (osmnx) preferring polygons; with ``osm_id``,
    ``bbox`` or ``boundary`` it only names the place (and its slug).
    """
    given = [n for n, v in (("--osm-id", osm_id), ("--bbox", bbox), ("--boundary", boundary))
             if v is not None]
    if len(given) > 1:
        raise PlaceError(f"{' and '.join(given)} both given", "give only one of them")
    if bbox is not None:
        west, south, east, north = parse_bbox(bbox)
        from shapely.geometry import box

        label = city or f"bbox {west:g},{south:g},{east:g},{north:g}"
        place = place_from_polygon(label, box(west, south, east, north), checked=False)
    elif boundary is not None:
        place = _from_boundary_file(Path(boundary), city)
    elif osm_id is not None:
        place = _from_osm_id(osm_id, city)
    elif city:
        place = _from_name(city, which_result)
    else:
        raise PlaceError("no place given", "use --city NAME, --osm-id R123, --bbox W,S,E,N "
                                           "or --boundary FILE")
    area = place.area_km2
    if max_area_km2 is None:
        from aether.settings import current

        max_area_km2 = current().max_area_km2
    if area > max_area_km2 and not yes:
        raise PlaceError(f"{place.name} covers {area:,.0f} km², above the limit of "
                         f"{max_area_km2:,.0f} km²",
                         "pass --yes to go ahead, or a smaller --bbox / --osm-id")
    return place


def parse_bbox(bbox: str | tuple[float, ...] | list[float]) -> tuple[float, float, float, float]:
    """``"W,S,E,N"`` (or a 4-tuple) in degrees, checked: W < E, S < N, within lon/lat ranges."""
    parts = bbox.split(",") if isinstance(bbox, str) else list(bbox)
    try:
        values = [float(v) for v in parts]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise PlaceError(f"bbox {bbox!r} is not four numbers W,S,E,N",
                         "e.g. --bbox 24.93,60.16,24.96,60.18")
    west, south, east, north = values
    if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90
            and -90 <= north <= 90):
        raise PlaceError(f"bbox {bbox!r} is outside lon [-180, 180] / lat [-90, 90]",
                         "give W,S,E,N in degrees (longitude first)")
    if west >= east:
        raise PlaceError(f"bbox {bbox!r} has W >= E",
                         "order is W,S,E,N (boxes across the antimeridian are not supported)")
    if south >= north:
        raise PlaceError(f"bbox {bbox!r} has S >= N", "order is W,S,E,N")
    return west, south, east, north


def _from_boundary_file(path: Path, name: str | None) -> Place:
    """The union of the polygons in a vector file."""
    if not path.is_file() or path.stat().st_size == 0:
        raise PlaceError(f"boundary file {path} is missing or empty", "pass a GeoJSON/GPKG file")
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as e:  # GDAL's many errors: all mean "not a readable vector file"
        raise PlaceError(f"cannot read boundary file {path}: {str(e).splitlines()[0][:160]}",
                         "pass a GeoJSON, GPKG or Shapefile with a polygon") from e
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs("EPSG:4326")
    polys = gdf[gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if len(polys) == 0:
        raise PlaceError(f"boundary file {path} holds no polygon", "pass a (Multi)Polygon")
    return place_from_polygon(name or path.stem, polys.geometry.make_valid().union_all(),
                              checked=False)


def _from_osm_id(osm_id: str, name: str | None) -> Place:
    """An exact OSM element through Nominatim's lookup endpoint."""
    oid = osm_id.strip().upper()
    if not _OSM_ID.match(oid):
        raise PlaceError(f"OSM id {osm_id!r} is not like R123, W456 or N789",
                         "prefix the number with R (relation), W (way) or N (node)")
    with _nominatim() as ox:
        try:
            gdf = ox.geocode_to_gdf(oid, by_osmid=True)
        except ox._errors.InsufficientResponseError as e:
            raise PlaceError(f"OSM id {oid} is unknown to Nominatim",
                             "check the id on openstreetmap.org") from e
    row = gdf.iloc[0]
    label = name or str(row.get("name") or row.get("display_name") or oid)
    return _polygon_place(label, row, oid, f"{oid} is a {row.geometry.geom_type}")


def _from_name(city: str, which_result: int | None) -> Place:
    """A place name through ``osmnx.geocode_to_gdf``, preferring polygon results."""
    if which_result is not None and which_result < 1:
        raise PlaceError(f"--which-result {which_result} must be 1 or more", "results count from 1")
    with _nominatim() as ox:
        results = _search(ox, city)
        if not results:
            raise PlaceError(f"no place called {city!r} found",
                             "check the spelling, add the country (\"Paris, France\"), "
                             "or use --osm-id / --bbox")
        if which_result is not None:
            if which_result > len(results):
                raise PlaceError(f"{city!r} has only {len(results)} result(s), "
                                 f"not {which_result}", _listing(results))
        else:
            polygons = [r for r in results if _is_polygon(r)]
            if not polygons:
                top = results[0]
                raise PlaceError(
                    f"{city!r} resolves only to a point ({_describe(top)})",
                    f"pass --osm-id of its boundary, or --bbox around "
                    f"{float(top['lon']):.4f},{float(top['lat']):.4f}")
            rivals = [r for r in polygons
                      if r["importance"] >= polygons[0]["importance"] - AMBIGUITY_MARGIN]
            if len(rivals) > 1:
                raise PlaceError(f"{city!r} is ambiguous: {_listing(rivals)}",
                                 "pick one with --which-result N or --osm-id")
        gdf = ox.geocode_to_gdf(city, which_result=which_result)
    row = gdf.iloc[0]
    return _polygon_place(city, row, city, f"result {which_result} for {city!r} is a "
                                           f"{row.geometry.geom_type}")


@contextlib.contextmanager
def _nominatim() -> Iterator[Any]:
    from aether.places.osm_http import osmnx_session

    with osmnx_session(PlaceError, "Nominatim") as ox:
        yield ox


def _search(ox: Any, query: str) -> list[dict[str, Any]]:
    """All Nominatim results for a name, most important first (the same request, hence the
    same cache entry, as ``geocode_to_gdf(query)``)."""
    from aether._compat import nominatim_search

    results = nominatim_search(query, limit=50)
    return sorted(results, key=lambda r: r.get("importance", 0), reverse=True)


def _is_polygon(result: dict[str, Any]) -> bool:
    return result.get("geojson", {}).get("type") in ("Polygon", "MultiPolygon")


def _describe(result: dict[str, Any]) -> str:
    kind = {"relation": "R", "way": "W", "node": "N"}.get(result.get("osm_type", ""), "?")
    name = str(result.get("display_name", ""))[:60]
    return f"{name} [{kind}{result.get('osm_id')}, {result.get('class')}={result.get('type')}]"


def _listing(results: list[dict[str, Any]]) -> str:
    shown = "; ".join(f"{i}) {_describe(r)}" for i, r in enumerate(results[:5], 1))
    more = f"; and {len(results) - 5} more" if len(results) > 5 else ""
    return shown + more


def _polygon_place(label: str, row: Any, what: str, not_polygon: str) -> Place:
    """A Place from a geocoded row, which must be a (Multi)Polygon."""
    geom = row.geometry
    if geom is None or geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
        raise PlaceError(f"{not_polygon}, not an area",
                         "pass --osm-id of a boundary relation, or --bbox W,S,E,N")
    import shapely

    slug = slugify(re.sub(r"[/\\\x00]", "-", label))  # geocoded names may hold a "/"
    return place_from_polygon(label, shapely.make_valid(geom), slug, checked=False)
