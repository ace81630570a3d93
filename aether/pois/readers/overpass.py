"""``osm``: POIs of a place from Overpass through osmnx ``features_from_polygon``.

The query asks for the taxonomy's tags (``taxonomy.poi_tags``); osmnx subdivides large
polygons, caches every response in its HTTP cache, and builds the geometries; failures are
retried politely by ``aether.places.osm_http``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aether.errors import PoiError
from aether.pois.readers.base import osm_rows, raw_frame

if TYPE_CHECKING:
    from aether.places.place import Place


def read(place: Place) -> Any:
    """Raw POI frame of the OSM features with POI tags inside the place's boundary."""
    from aether.places.osm_http import osmnx_session
    from aether.pois.taxonomy import poi_tags

    tags = poi_tags()
    with osmnx_session(PoiError, "Overpass") as ox:
        try:
            gdf = ox.features_from_polygon(place.boundary, tags=tags)
        except ox._errors.InsufficientResponseError:  # osmnx's "no matching features"
            return raw_frame([])
    keys = [k for k in [*tags, "name"] if k in gdf.columns]
    records = gdf[keys].to_dict("records")
    elements = (
        (f"osm:{kind}/{oid}", {k: v for k, v in rec.items() if isinstance(v, str)}, geom)
        for (kind, oid), rec, geom in zip(gdf.index, records, gdf.geometry, strict=True)
    )
    return raw_frame(osm_rows(elements))
