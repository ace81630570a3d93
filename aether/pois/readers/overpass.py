"""``osm``: POIs of a place from Overpass through osmnx ``features_from_polygon``.

The query asks for the taxonomy's tags (``taxonomy.poi_tags``); osmnx subdivides large
polygons, caches every response in its HTTP cache, and builds the geometries; failures are
retried politely by ``aether.places.osm_http``.

The data's date is Overpass's own, ``osm3s.timestamp_osm_base`` of each response (a cached
response keeps the date it was made with): the oldest is recorded. osmnx does not return it,
so the responses are taken from the two steps ``features_from_polygon`` is made of (osmnx
2.x internals, pinned by ``osmnx<3``; checked here, and without them the POIs are read as
before and the date is recorded as unknown).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aether.errors import PoiError
from aether.pois.readers.base import osm_rows, raw_frame, with_snapshot

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from aether.places.place import Place


def read(place: Place) -> Any:
    """Raw POI frame of the OSM features with POI tags inside the place's boundary."""
    from aether.places.osm_http import osmnx_session
    from aether.pois.taxonomy import poi_tags

    tags = poi_tags()
    stamps: list[str] = []
    with osmnx_session(PoiError, "Overpass") as ox:
        try:
            gdf = _features(ox, place, tags, stamps)
        except ox._errors.InsufficientResponseError:  # osmnx's "no matching features"
            return _dated(raw_frame([]), stamps)
    keys = [k for k in [*tags, "name"] if k in gdf.columns]
    records = gdf[keys].to_dict("records")
    elements = (
        (f"osm:{kind}/{oid}", {k: v for k, v in rec.items() if isinstance(v, str)}, geom)
        for (kind, oid), rec, geom in zip(gdf.index, records, gdf.geometry, strict=True)
    )
    return _dated(raw_frame(osm_rows(elements)), stamps)


def _features(ox: Any, place: Place, tags: dict[str, Any], stamps: list[str]) -> Any:
    """``features_from_polygon``, keeping each response's ``timestamp_osm_base``."""
    download = getattr(getattr(ox, "_overpass", None), "_download_overpass_features", None)
    create = getattr(getattr(ox, "features", None), "_create_gdf", None)
    if not place.boundary.is_valid:  # osmnx's own check and message
        return ox.features_from_polygon(place.boundary, tags=tags)
    if download is None or create is None:
        log.warning("this osmnx (%s) has no _download_overpass_features/_create_gdf: the "
                    "POIs' OSM date is not recorded", getattr(ox, "__version__", "?"))
        return ox.features_from_polygon(place.boundary, tags=tags)

    def dated(responses: Any) -> Any:
        for response in responses:
            stamp = (response.get("osm3s") or {}).get("timestamp_osm_base")
            if stamp:
                stamps.append(str(stamp))
            yield response

    return create(dated(download(place.boundary, tags)), place.boundary, tags)


def _dated(frame: Any, stamps: list[str]) -> Any:
    if not stamps:
        return with_snapshot(frame, None, "Overpass gave no timestamp_osm_base")
    return with_snapshot(frame, min(stamps), "Overpass's timestamp_osm_base (the oldest of "
                         f"{len(stamps)} response(s))")
