"""Physical layers of a city for the synthetic embedding generator.

The generator may only see physical form (docs/sample.md): building cover and height,
water, green, trees, bare ground, roads and rails. POI tags and functional land-use classes
are what the POI alignment must add and what the evaluation uses as labels, so they never
pass: every OSM object is first reduced to ``physical_tags`` (a whitelist of keys), and a
feature is kept only when its tags match the whitelisted (key, value) pairs below.

Two producers fill the same ``(len(LAYERS), rows, cols)`` array of per-pixel fractions:
``osm_layers`` rasterises a PBF (read with pyosmium), ``procedural_layers`` invents a city
from hashed value noise for extents without OSM data (benchmarks, scale work).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Layer order of every layer array; ``height`` is mean building height over the pixel / 30 m.
LAYERS: tuple[str, ...] = (
    "building", "height", "water", "green", "trees", "bare", "road", "rail",
)
HEIGHT_SCALE_M = 30.0
LEVEL_HEIGHT_M = 3.2
DEFAULT_LEVELS = 5.0  # central Helsinki blocks without a height or level tag
SUPERSAMPLE = 4  # rasterise at 2.5 m so layers hold fractions of a 10 m pixel

#: The only OSM keys the generator can read. Anything else is dropped on input.
PHYSICAL_KEYS: frozenset[str] = frozenset({
    "building", "height", "building:levels", "natural", "landuse", "landcover", "water",
    "waterway", "highway", "railway", "tunnel", "area", "covered",
})

#: Land COVER areas, per layer: (key, value); value "*" accepts any value but "no".
AREA_COVER: Mapping[str, frozenset[tuple[str, str]]] = {
    "water": frozenset({
        ("natural", "water"), ("natural", "bay"), ("waterway", "riverbank"), ("water", "*"),
        ("landuse", "basin"), ("landuse", "reservoir"),
    }),
    "green": frozenset({
        ("natural", "grassland"), ("natural", "scrub"), ("natural", "heath"),
        ("natural", "wetland"), ("landuse", "grass"), ("landuse", "meadow"),
        ("landcover", "grass"), ("landcover", "scrub"),
    }),
    "trees": frozenset({("natural", "wood"), ("landuse", "forest"), ("landcover", "trees")}),
    "bare": frozenset({
        ("natural", "bare_rock"), ("natural", "scree"), ("natural", "shingle"),
        ("natural", "sand"), ("natural", "beach"),
    }),
    "building": frozenset({("building", "*")}),
}

#: Line features: width in metres by (key, value). Tunnels are not on the surface.
LINE_WIDTH_M: Mapping[tuple[str, str], float] = {
    **{("highway", v): 14.0 for v in ("motorway", "trunk", "primary")},
    **{("highway", v): 10.0 for v in ("secondary", "tertiary", "motorway_link", "trunk_link",
                                       "primary_link", "secondary_link", "tertiary_link")},
    **{("highway", v): 7.0 for v in ("residential", "unclassified", "service", "living_street",
                                      "pedestrian", "busway", "road")},
    **{("highway", v): 2.5 for v in ("footway", "path", "cycleway", "steps", "track",
                                      "bridleway", "corridor")},
    **{("railway", v): 4.0 for v in ("rail", "tram", "light_rail", "narrow_gauge",
                                      "funicular", "monorail", "preserved")},
    ("natural", "tree_row"): 6.0,
}
LINE_LAYER: Mapping[str, str] = {"highway": "road", "railway": "rail", "natural": "trees"}
TREE_CROWN_M = 3.0  # natural=tree nodes become discs of this radius

#: Never features (documented so a test can hold the whitelist to it).
POI_KEYS: frozenset[str] = frozenset({
    "amenity", "shop", "office", "tourism", "leisure", "healthcare", "craft",
    "public_transport", "historic", "sport", "emergency", "club", "name", "brand", "cuisine",
})
FUNCTIONAL_LANDUSE: frozenset[str] = frozenset({
    "residential", "commercial", "retail", "industrial", "civil", "military", "education",
    "religious", "institutional", "railway", "construction", "garages", "cemetery",
    "farmyard", "allotments", "recreation_ground", "port", "brownfield", "greenfield",
})


def physical_tags(tags: Any) -> dict[str, str]:
    """The whitelisted physical tags of an OSM object; the generator sees nothing else."""
    return {k: v for k, v in ((t.k, t.v) if hasattr(t, "k") else t for t in tags)
            if k in PHYSICAL_KEYS}


def _matches(tags: Mapping[str, str], pairs: frozenset[tuple[str, str]]) -> bool:
    return any((k, v) in pairs or ((k, "*") in pairs and v != "no") for k, v in tags.items())


def area_layer(tags: Mapping[str, str]) -> str | None:
    """The cover layer of an area's physical tags (buildings first), or None."""
    if tags.get("highway") and tags.get("area") == "yes" and "tunnel" not in tags:
        return "road"  # pedestrian squares and other paved highway areas
    for layer in ("building", "water", "trees", "green", "bare"):
        if _matches(tags, AREA_COVER[layer]):
            return layer
    return None


def line_width(tags: Mapping[str, str]) -> tuple[str, float] | None:
    """(layer, width_m) of a surface line feature, or None."""
    if (tags.get("tunnel", "no") != "no" or tags.get("covered") == "yes"
            or tags.get("area") == "yes"):
        return None
    for key in ("highway", "railway", "natural"):
        width = LINE_WIDTH_M.get((key, tags.get(key, "")))
        if width:
            return LINE_LAYER[key], width
    return None


def building_height(tags: Mapping[str, str]) -> float:
    """Height in metres from ``height`` or ``building:levels``, else a typical block."""
    for key, scale in (("height", 1.0), ("building:levels", LEVEL_HEIGHT_M)):
        raw = tags.get(key, "").replace("m", "").replace(",", ".").strip()
        try:
            value = float(raw.split(";")[0])
        except ValueError:
            continue
        if 0 < value < 1000:
            return value * scale
    return DEFAULT_LEVELS * LEVEL_HEIGHT_M


@dataclass(frozen=True)
class Feature:
    """One physical feature in WGS84: a layer, a shapely geometry, a width or a height."""

    layer: str
    geometry: Any
    width_m: float = 0.0  # lines and points are buffered by half of it
    height_m: float = 0.0  # buildings only


def read_osm_features(pbf: str | Path) -> list[Feature]:
    """Physical features of a PBF, in file order (deterministic)."""
    import osmium
    import shapely

    wkb = osmium.geom.WKBFactory()
    out: list[Feature] = []

    def add(layer: str, make: Any, *, width: float = 0.0, height: float = 0.0) -> None:
        try:
            geom = shapely.from_wkb(make())
        except (osmium.InvalidLocationError, RuntimeError, shapely.errors.GEOSException):
            return  # a geometry cut by the extract's edge
        out.append(Feature(layer, geom, width, height))

    class Handler(osmium.SimpleHandler):
        def node(self, n: Any) -> None:
            if physical_tags(n.tags).get("natural") == "tree":
                add("trees", lambda: wkb.create_point(n), width=2 * TREE_CROWN_M)

        def way(self, w: Any) -> None:
            hit = line_width(physical_tags(w.tags))
            if hit:
                add(hit[0], lambda: wkb.create_linestring(w), width=hit[1])

        def area(self, a: Any) -> None:
            tags = physical_tags(a.tags)
            layer = area_layer(tags)
            if layer:
                height = building_height(tags) if layer == "building" else 0.0
                add(layer, lambda: wkb.create_multipolygon(a), height=height)

    # the key filter runs in C++, so Python only sees candidate objects
    keys = osmium.filter.KeyFilter("building", "natural", "landuse", "landcover", "water",
                                   "waterway", "highway", "railway")
    Handler().apply_file(str(pbf), locations=True, filters=[keys])
    return out


@dataclass(frozen=True)
class Grid:
    """A north-up 10 m pixel grid in a UTM crs: ``west``/``north`` are outer edges."""

    crs: str
    west: float
    north: float
    width: int
    height: int
    pixel: float = 10.0

    @property
    def south(self) -> float:
        return self.north - self.height * self.pixel

    @property
    def east(self) -> float:
        return self.west + self.width * self.pixel

    @property
    def row0(self) -> int:
        """Global row index of row 0 (rows grow southward): keys the seeded noise."""
        return round(-self.north / self.pixel)

    @property
    def col0(self) -> int:
        return round(self.west / self.pixel)


def utm_grid(bbox: tuple[float, float, float, float], crs: str, margin_m: float) -> Grid:
    """The 10 m grid, aligned to multiples of 10 m, covering a lon/lat bbox plus a margin."""
    from pyproj import Transformer

    w, s, e, n = bbox
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xs, ys = tr.transform([w, e, e, w], [s, s, n, n])
    x0 = np.floor((min(xs) - margin_m) / 10.0) * 10.0
    x1 = np.ceil((max(xs) + margin_m) / 10.0) * 10.0
    y0 = np.floor((min(ys) - margin_m) / 10.0) * 10.0
    y1 = np.ceil((max(ys) + margin_m) / 10.0) * 10.0
    return Grid(crs, float(x0), float(y1), int((x1 - x0) / 10), int((y1 - y0) / 10))


def osm_layers(features: list[Feature], grid: Grid) -> np.ndarray:
    """Rasterise features to per-pixel fractions ``(len(LAYERS), rows, cols)`` float32."""
    import shapely
    from pyproj import Transformer
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    s = SUPERSAMPLE
    shape = (grid.height * s, grid.width * s)
    transform = from_origin(grid.west, grid.north, grid.pixel / s, grid.pixel / s)
    tr = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    geoms = shapely.transform(
        np.array([f.geometry for f in features], dtype=object),
        lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])),
    ) if features else np.array([], dtype=object)
    widths = np.array([f.width_m for f in features])
    geoms = np.where(widths > 0, shapely.buffer(geoms, widths / 2, quad_segs=4), geoms)

    def fraction(shapes: list[tuple[Any, float]], dtype: str) -> np.ndarray:
        if not shapes:
            return np.zeros((grid.height, grid.width), np.float32)
        fine = rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype=dtype)
        return fine.reshape(grid.height, s, grid.width, s).mean(axis=(1, 3), dtype=np.float32)

    out = np.zeros((len(LAYERS), grid.height, grid.width), np.float32)
    for i, layer in enumerate(LAYERS):
        if layer == "height":
            continue
        out[i] = fraction([(g, 1) for g, f in zip(geoms, features, strict=True)
                           if f.layer == layer], "uint8")
    buildings = sorted((f.height_m, j) for j, f in enumerate(features) if f.layer == "building")
    out[LAYERS.index("height")] = fraction(
        [(geoms[j], h) for h, j in buildings], "float32") / HEIGHT_SCALE_M  # tallest wins
    return out


# --- procedural cities: hashed value noise, so any window of any extent is reproducible ---

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a good 64-bit hash of integer coordinates."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def hash_uniform(key: int, iy: np.ndarray, ix: np.ndarray, channels: int) -> np.ndarray:
    """Uniform values in [-1, 1) for integer lattice points: ``(len(iy), len(ix), channels)``."""
    with np.errstate(over="ignore"):
        base = _mix(np.asarray(np.uint64(key & 0xFFFFFFFFFFFFFFFF) + np.uint64(0x9E3779B97F4A7C15)))
        y = _mix(iy.astype(np.int64).astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93) ^ base)
        x = ix.astype(np.int64).astype(np.uint64) * np.uint64(0xA0761D6478BD642F)
        c = np.arange(channels, dtype=np.uint64) * np.uint64(0xE7037ED1A0B428DB)
        h = _mix(y[:, None, None] ^ _mix(x ^ base)[None, :, None] ^ c[None, None, :])
    return ((h >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2 - 1).astype(np.float32)


def value_noise(key: int, spacing: int, row0: int, col0: int, rows: int, cols: int,
                channels: int) -> np.ndarray:
    """Smooth noise ``(rows, cols, channels)`` with features ~``spacing`` px, from global indices.

    Lattice values are hashed from global lattice coordinates, so adjacent windows join
    without seams and a window never depends on what else is generated.
    """
    if spacing == 1:  # white noise: the lattice is the pixel grid
        return hash_uniform(key, row0 + np.arange(rows), col0 + np.arange(cols), channels)

    def axis(start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = (start + np.arange(n) + 0.5) / spacing
        i0 = np.floor(g).astype(np.int64)
        f = g - i0
        return i0, (f * f * (3 - 2 * f)).astype(np.float32), np.arange(i0.min(), i0.max() + 2)

    iy, wy, ly = axis(row0, rows)
    ix, wx, lx = axis(col0, cols)
    lat = hash_uniform(key, ly, lx, channels)
    jx, jy = ix - lx[0], iy - ly[0]
    a = lat[:, jx] * (1 - wx)[None, :, None] + lat[:, jx + 1] * wx[None, :, None]
    return a[jy] * (1 - wy)[:, None, None] + a[jy + 1] * wy[:, None, None]


def procedural_layers(seed: int, row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
    """An invented city's layers ``(len(LAYERS), rows, cols)`` for any window of a grid.

    Urban cores (km scale) hold dense blocks and a fine street grid; elsewhere green,
    trees and a coarse road net; lakes and a few rail lines. Global indices in, so tiles
    of one extent join without seams.
    """
    key = (seed + 1) * 0x5851F42D4C957F2D
    n = lambda k, sp, ch=1: value_noise(key + k, sp, row0, col0, rows, cols, ch)[..., 0]  # noqa: E731
    urban = np.clip(0.5 + 1.3 * (n(1, 320) + 0.5 * n(2, 80)), 0, 1)
    water = (n(3, 240) + 0.3 * n(4, 40) > 0.62).astype(np.float32)
    r = (row0 + np.arange(rows))[:, None]
    c = (col0 + np.arange(cols))[None, :]
    minor = ((r % 11 == 0) | (c % 13 == 0)) & (urban > 0.45)
    major = (r % 53 == 0) | (c % 61 == 0)
    road = np.clip(minor * 0.7 + major * 1.0, 0, 1) * (1 - water)
    rail = ((np.abs((r + (40 * n(5, 400))) % 700) < 1) & (urban > 0.2)).astype(np.float32)
    fine = n(6, 3)
    building = ((fine + 1) / 2 < urban * 0.9).astype(np.float32) * (1 - road) * (1 - water)
    height = building * np.clip(urban * (0.6 + 0.4 * n(7, 25)), 0.05, 1.0)
    green_field = (1 - urban) * (n(8, 30) + 1) / 2
    trees = (green_field > 0.35).astype(np.float32) * (1 - building) * (1 - water) * (1 - road)
    green = ((green_field > 0.15) & (trees == 0)).astype(np.float32) * (1 - building - road
                                                                         ).clip(0) * (1 - water)
    bare = ((n(9, 12) > 0.8) & (urban < 0.3)).astype(np.float32) * (1 - water) * (1 - trees)
    rail = rail * (1 - water)
    layers = {"building": building, "height": height, "water": water, "green": green,
              "trees": trees, "bare": bare, "road": road, "rail": rail}
    return np.stack([layers[k] for k in LAYERS]).astype(np.float32)
