"""What every POI source shares: the raw frame they return, and OSM tags → taxonomy rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

RAW_COLUMNS: tuple[str, ...] = ("poi_id", "name", "category", "top_category", "geometry")


def raw_frame(rows: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> Any:
    """A raw GeoDataFrame in EPSG:4326 from dicts with the RAW_COLUMNS keys (and ``extra``
    optional columns of the pois table, such as ``confidence``)."""
    import geopandas as gpd

    columns = [*RAW_COLUMNS, *extra]
    if not rows:
        return gpd.GeoDataFrame({c: [] for c in columns}, geometry="geometry", crs="EPSG:4326")
    return gpd.GeoDataFrame(rows, columns=columns, geometry="geometry", crs="EPSG:4326")


def with_snapshot(frame: Any, as_of: str | None, how: str) -> Any:
    """``frame`` with the date its data is as of (``attrs["snapshot"]``): which OSM or
    Overture state the POIs were read from, recorded in the extract's manifest. ``how`` says
    what the date is (a replication time, a release, the newest edit among the POIs)."""
    frame.attrs["snapshot"] = {"as_of": as_of, "from": how}
    return frame


def osm_rows(elements: Iterable[tuple[str, Mapping[str, str], Any]]) -> list[dict[str, Any]]:
    """Rows for elements ``(poi_id, OSM tags, geometry)`` the taxonomy classifies as POIs."""
    from aether.pois.taxonomy import load_taxonomy

    tax = load_taxonomy()
    rows = []
    for poi_id, tags, geom in elements:
        hit = tax.classify(tags)
        if hit is None:
            continue
        rows.append({"poi_id": poi_id, "name": tags.get("name"),
                     "category": hit[0], "top_category": hit[1], "geometry": geom})
    return rows
