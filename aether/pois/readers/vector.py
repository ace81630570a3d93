"""``file:PATH``: users' own POIs (GeoJSON, GeoParquet, GPKG, Shapefile, CSV with lon/lat, or a
zip holding one of them), with name and category columns mapped by option.

Categories come from, in order: the ``category_column`` the user names; OSM tag columns
(``amenity``, ``shop``, ...) classified through the taxonomy; a column called ``category``
(with ``top_category`` beside it, as in a pois table).
Ids come from a ``poi_id`` column, an ``osm_id`` column (``N123`` / ``node/123`` style), or
else the row number (stable for the same file).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from aether.errors import PoiError
from aether.pois.readers.base import RAW_COLUMNS, osm_rows, raw_frame

VECTOR_SUFFIXES = (".parquet", ".geoparquet", ".gpkg", ".geojson", ".json", ".shp", ".fgb")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
LON_NAMES = ("lon", "lng", "long", "longitude", "x")
LAT_NAMES = ("lat", "latitude", "y")
POINTISH = {"Point", "MultiPoint", "Polygon", "MultiPolygon"}
_OSM_ID = re.compile(r"^(?:(?P<letter>[NWR])|(?P<word>node|way|relation)/)(?P<num>\d+)$", re.I)
_LETTER = {"n": "node", "w": "way", "r": "relation"}


def read(
    path: str,
    *,
    name_column: str | None = None,
    category_column: str | None = None,
    top_category_column: str | None = None,
) -> Any:
    """Raw POI frame from a user's file."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        raise PoiError(f"POI file {p} is missing or empty", "pass an existing, non-empty file")
    gdf = _read_any(p)
    if len(gdf) == 0:
        raise PoiError(f"POI file {p} has no rows", "pass a file with at least one POI")
    _check_finite(gdf, p)
    if gdf.crs is not None and gdf.crs.to_epsg() != 4326:
        gdf = gdf.to_crs("EPSG:4326")
    kinds = set(gdf.geometry.dropna().geom_type)
    if not kinds <= POINTISH:
        raise PoiError(f"POI file {p} has {', '.join(sorted(kinds - POINTISH))} geometries",
                       "POIs must be points (or polygons, used through a point inside them)")
    west, south, east, north = gdf.total_bounds
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise PoiError(f"POI file {p} has coordinates outside lon/lat ranges",
                       "give it a crs (GeoParquet/GPKG) or use lon/lat degrees in EPSG:4326")
    ids = _ids(gdf, p)
    names = _column(gdf, name_column, ("name",), p, "name") if name_column or _find(
        gdf, ("name",)) else None
    if category_column is None and _osm_tag_columns(gdf):
        return _classify_tags(gdf, ids, names)
    cats = _column(gdf, category_column, ("category",), p, "category")
    tops = _column(gdf, top_category_column, ("top_category",), p, "top category") if (
        top_category_column or (category_column is None and _find(gdf, ("top_category",)))
    ) else None
    return _mapped(gdf, ids, names, cats, tops)


def _read_any(p: Path) -> Any:
    """Open a vector or lon/lat table file (or the first such file inside a zip)."""
    import geopandas as gpd
    import pandas as pd

    suffix = p.suffix.lower()
    try:
        if suffix == ".zip":
            member = _zip_member(p)
            if member.lower().endswith(TABLE_SUFFIXES):
                with zipfile.ZipFile(p) as z, z.open(member) as f:
                    return _points_from_table(pd.read_csv(f), p)
            return gpd.read_file(f"/vsizip/{p.resolve()}/{member}")
        if suffix in (".parquet", ".geoparquet"):
            import pyarrow.parquet as pq

            if b"geo" in (pq.read_schema(p).metadata or {}):
                return gpd.read_parquet(p)
            return _points_from_table(pd.read_parquet(p), p)
        if suffix in TABLE_SUFFIXES:
            return _points_from_table(pd.read_csv(p, sep=None, engine="python")
                                      if suffix != ".csv" else pd.read_csv(p), p)
        return gpd.read_file(p)
    except PoiError:
        raise
    except Exception as e:  # the readers' own errors (GDAL, Arrow, CSV) are input errors here
        raise PoiError(f"cannot read POI file {p}: {str(e).splitlines()[0][:200]}",
                       "use GeoJSON, GeoParquet, GPKG, Shapefile or CSV with lon/lat") from e


def _check_finite(gdf: Any, p: Path) -> None:
    """Refuse rows whose coordinates are NaN or infinite (GEOS cannot place them)."""
    import numpy as np
    import shapely

    coords, rows = shapely.get_coordinates(gdf.geometry.values, return_index=True)
    bad = np.unique(rows[~np.isfinite(coords).all(axis=1)])
    if len(bad):
        first = ", ".join(str(int(i) + 1) for i in bad[:5])
        raise PoiError(f"POI file {p}: {len(bad)} row(s) have NaN or infinite coordinates "
                       f"(row {first}{', ...' if len(bad) > 5 else ''})",
                       "fix or remove those rows")


def _zip_member(p: Path) -> str:
    """The vector file inside a zip (a vector format beats a plain table)."""
    with zipfile.ZipFile(p) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
    for suffixes in (VECTOR_SUFFIXES, TABLE_SUFFIXES):
        hits = sorted(n for n in names if n.lower().endswith(suffixes))
        if hits:
            return hits[0]
    raise PoiError(f"zip {p} holds no POI file", "zip a GeoJSON, GPKG, Shapefile or CSV")


def _points_from_table(df: Any, p: Path) -> Any:
    """A plain table with lon/lat columns as a point GeoDataFrame (EPSG:4326)."""
    import geopandas as gpd

    lon, lat = _find(df, LON_NAMES), _find(df, LAT_NAMES)
    if lon is None or lat is None:
        raise PoiError(f"POI file {p} has no geometry and no lon/lat columns",
                       f"add columns lon, lat (columns now: {_list(df)})")
    return gpd.GeoDataFrame(df, geometry=gpd.points_from_xy(df[lon], df[lat]),
                            crs="EPSG:4326")


def _find(df: Any, candidates: tuple[str, ...]) -> str | None:
    """The first column whose name matches a candidate, case-insensitively."""
    lower = {str(c).lower(): c for c in df.columns}
    return next((lower[c] for c in candidates if c in lower), None)


def _list(df: Any) -> str:
    cols = [str(c) for c in df.columns if c != "geometry"]
    return ", ".join(cols[:12]) + (", ..." if len(cols) > 12 else "")


def _column(df: Any, chosen: str | None, defaults: tuple[str, ...], p: Path, what: str) -> Any:
    """The column the user chose (or a default name) as strings; PoiError if absent."""
    col = (chosen if chosen in df.columns else None) if chosen else _find(df, defaults)
    if col is None:
        option = "--name-column" if what == "name" else "--category-column"
        raise PoiError(
            f"POI file {p} has no {what} column {chosen or ''}".rstrip(),
            f"pick one of: {_list(df)} (e.g. {option} COLUMN)")
    values = df[col].astype(object)
    return values.where(values.notna(), None).map(
        lambda v: None if v is None else str(v).strip() or None)


def _ids(df: Any, p: Path) -> list[str]:
    """Stable ids: a poi_id column, OSM ids, or the row number."""
    col = _find(df, ("poi_id",))
    if col is not None:
        return [str(v) for v in df[col]]
    col = _find(df, ("osm_id",))
    if col is not None:
        kind_col = _find(df, ("osm_type", "element", "element_type"))
        out = []
        for i, v in enumerate(df[col]):
            m = _OSM_ID.match(str(v))
            if m:
                kind = m["word"] or _LETTER[m["letter"].lower()]
                out.append(f"osm:{kind.lower()}/{m['num']}")
            elif kind_col is not None and str(v).isdigit():
                out.append(f"osm:{_LETTER.get(str(df[kind_col].iloc[i])[:1].lower(), 'node')}/{v}")
            else:
                break
        else:
            return out
    width = len(str(len(df)))
    return [f"file:{p.stem}/{i:0{width}d}" for i in range(len(df))]


def _osm_tag_columns(df: Any) -> list[str]:
    from aether.pois.taxonomy import load_taxonomy

    return [k for k in load_taxonomy().keys if k in df.columns]


def _classify_tags(df: Any, ids: list[str], names: Any) -> Any:
    """Files that carry OSM tags as columns go through the taxonomy like OSM sources."""
    records = df[_osm_tag_columns(df)].to_dict("records")
    name_list = [None] * len(df) if names is None else list(names)
    elements = (
        (poi_id, {**{k: v for k, v in rec.items() if isinstance(v, str)},
                  **({"name": name} if name else {})}, geom)
        for poi_id, rec, name, geom in zip(ids, records, name_list, df.geometry, strict=True)
    )
    return raw_frame(osm_rows(elements))


def _mapped(df: Any, ids: list[str], names: Any, cats: Any, tops: Any) -> Any:
    """Users' own categories: humanised; top categories from a column or the taxonomy."""
    import geopandas as gpd

    from aether.pois.taxonomy import map_category

    humane = {c: map_category(c) for c in set(cats.dropna())}
    out = gpd.GeoDataFrame({
        "poi_id": ids,
        "name": names.to_numpy() if names is not None else None,
        "category": [humane[c][0] if c is not None else None for c in cats],
        "top_category": ([humane[c][1] if c is not None else None for c in cats]
                         if tops is None else tops.map(_humanise).to_numpy()),
        "geometry": df.geometry.to_numpy(),
    }, geometry="geometry", crs="EPSG:4326")
    out = out[out["category"].notna() & out["top_category"].notna()]
    return out[list(RAW_COLUMNS)]


def _humanise(value: str | None) -> str | None:
    from aether.pois.taxonomy import humanise

    return None if value is None else humanise(value)
