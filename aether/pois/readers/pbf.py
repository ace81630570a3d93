"""``pbf:PATH``: POIs from a local OSM extract, read with pyosmium (~0.3 s for central Helsinki).

Geometries follow osmnx's rules so ``pbf:`` and ``osm`` agree: nodes are points, ways are
lines (closed ones become areas later, in ``aether.pois.load``), and relations of type
multipolygon/boundary are the multipolygons osmium's area assembler builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aether.errors import PoiError
from aether.pois.readers.base import osm_rows, raw_frame, with_snapshot


def read(path: str) -> Any:
    """Raw POI frame of every node, way and multipolygon relation the taxonomy classifies."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        raise PoiError(f"PBF file {p} is missing or empty", "pass an existing .osm.pbf extract")
    newest: list[Any] = []
    try:
        elements = list(_elements(p, newest))
        as_of = _replication_time(p)
    except RuntimeError as e:  # osmium reports corrupt input as RuntimeError
        raise PoiError(f"cannot read PBF file {p}: {e}", "check that it is an OSM PBF") from e
    frame = raw_frame(osm_rows(elements))
    if as_of:
        return with_snapshot(frame, as_of, "the PBF header's replication time")
    return with_snapshot(frame, newest[0].strftime("%Y-%m-%dT%H:%M:%SZ") if newest else None,
                         "the newest edit among its POIs (the PBF header names no "
                         "replication time)")


def _replication_time(path: Path) -> str | None:
    """The time the extract is as of, when its header says (``osmosis_replication_timestamp``,
    which Geofabrik and planet extracts set)."""
    import osmium

    reader = osmium.io.Reader(str(path), osmium.osm.osm_entity_bits.NOTHING)
    try:
        return reader.header().get("osmosis_replication_timestamp") or None
    finally:
        reader.close()


def _elements(path: Path, newest: list[Any]) -> Any:
    """(poi_id, tags, shapely geometry) for every tagged element with a POI key; the latest
    edit time among them is kept in ``newest``."""
    import osmium
    from shapely import wkb
    from shapely.geometry import LineString, Point

    from aether.pois.taxonomy import load_taxonomy

    keys = load_taxonomy().keys
    factory = osmium.geom.WKBFactory()
    # node locations are stored before the key filter runs, so filtered ways keep them
    reader = osmium.FileProcessor(str(path)).with_areas().with_filter(
        osmium.filter.KeyFilter(*keys))
    obj: Any  # a Node, Way or Area: the is_*() checks below tell which
    for obj in reader:
        tags = dict(obj.tags)
        if obj.timestamp and (not newest or obj.timestamp > newest[0]):
            newest[:] = [obj.timestamp]
        if obj.is_node():
            if obj.location.valid():
                yield f"osm:node/{obj.id}", tags, Point(obj.location.lon, obj.location.lat)
        elif obj.is_way():
            coords = [(n.lon, n.lat) for n in obj.nodes if n.location.valid()]
            if len(coords) == len(obj.nodes) and len(coords) >= 2:
                yield f"osm:way/{obj.id}", tags, LineString(coords)
        elif obj.is_area() and not obj.from_way():
            try:
                geom = wkb.loads(factory.create_multipolygon(obj), hex=True)
            except RuntimeError:  # broken relation: osmnx drops it too
                continue
            yield f"osm:relation/{obj.orig_id()}", tags, geom
