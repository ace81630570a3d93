"""A light base map from the city's own OSM data, for maps that must work offline.

When the POIs come from a PBF, its roads, rails, water, green and buildings are kept beside
the tables (``basemap.parquet``), clipped to the place and simplified, so the HTML and PNG
maps show streets and shores even when no tile server can be reached.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aether.io.tables import write_parquet

if TYPE_CHECKING:
    from aether.places.place import Place

#: Layers drawn, from the sample generator's physical layers (``trees`` join ``green``).
LAYERS = {"road": "road", "rail": "rail", "water": "water", "green": "green", "trees": "green",
          "building": "building"}
SIMPLIFY_DEG = 1e-5  # about a metre


def write_basemap(pbf: str | Path, place: Place, path: Path) -> Path:
    """Write the physical layers of ``pbf`` inside the place's bounding box to ``path``."""
    import geopandas as gpd
    import shapely

    from aether.sample.layers import read_osm_features

    box = shapely.box(*place.boundary.bounds)
    rows = [(LAYERS[f.layer], f.geometry) for f in read_osm_features(pbf) if f.layer in LAYERS]
    geoms = shapely.intersection(shapely.simplify(
        [g for _, g in rows], SIMPLIFY_DEG, preserve_topology=True), box) if rows else []
    frame = gpd.GeoDataFrame({"layer": [layer for layer, _ in rows]}, geometry=list(geoms),
                             crs="EPSG:4326")
    keep = ~frame.geometry.is_empty & ~frame.geom_type.isin(["Point", "MultiPoint"])
    frame = frame[keep]  # single trees are points: a base map draws areas and lines
    return write_parquet(frame.reset_index(drop=True), path)
