"""The polygon Earth Engine builds for ``Geometry.buffer(distance, maxError, proj)``.

From the algorithm's own documentation (``ee/tests/algorithms.json``): without ``proj`` the
distance is in metres and the buffer is geodesic; with ``proj`` the buffering is done in that
projection and the distance is in its units; ``maxError`` "defaults to 1% of the distance".
A circle becomes an *inscribed* regular polygon (vertices on the circle, edges inside it)
with the fewest vertices whose sagitta ``r (1 - cos(pi / n))`` is within ``maxError``.
Vertex placement is this model's assumption: the first vertex due east (projected) or at
azimuth 90° (geodesic), the others evenly spaced counter-clockwise.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from aether.testing.emulator.values import EEError, ErrorMargin, Geom, Projection, is_geographic

#: EE's default buffer error, as a fraction of the distance.
DEFAULT_ERROR_FRACTION = 0.01


@lru_cache(maxsize=64)
def transformer(src: str, dst: str) -> Any:
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def reproject(shape: Any, src: str, dst: str) -> Any:
    """``shape`` with its vertices moved from ``src`` to ``dst`` (identity when equal)."""
    if src == dst or (is_geographic(src) and is_geographic(dst)):
        return shape
    import shapely

    tr = transformer(src, dst)
    return shapely.transform(shape, lambda c: np.column_stack(tr.transform(c[:, 0], c[:, 1])))


def vertex_count(distance: float, max_error: float) -> int:
    """Fewest vertices of an inscribed polygon within ``max_error`` of a circle of ``distance``."""
    ratio = min(max(max_error / distance, 1e-12), 1.0)
    return max(4, math.ceil(math.pi / math.acos(1.0 - ratio)))


def max_error_of(max_error: Any, distance: float) -> float:
    """``maxError`` as metres (a number, an ErrorMargin, or None for EE's 1% default)."""
    if max_error is None:
        return DEFAULT_ERROR_FRACTION * abs(distance)
    if isinstance(max_error, ErrorMargin):
        if max_error.unit == "infinite":
            return abs(distance)
        return float(max_error.value)
    value = float(max_error)
    if not value > 0:
        raise EEError(f"Geometry.buffer: maxError must be positive, got {value}.")
    return value


def _utm_crs(lon: float, lat: float) -> str:
    zone = int((lon + 180.0) // 6.0) % 60 + 1
    return f"EPSG:{(32600 if lat >= 0 else 32700) + zone}"


def buffer(geom: Geom, distance: float, max_error: Any = None, proj: Any = None) -> Geom:
    """EE's buffer of ``geom`` (lon/lat) as a lon/lat polygon."""
    from shapely.geometry import Polygon

    err = max_error_of(max_error, distance)
    shape = geom.shape
    crs = proj.crs if isinstance(proj, Projection) else (str(proj) if proj else None)
    if shape.geom_type == "Point" and distance > 0:
        n = vertex_count(distance, err)
        angles = 2.0 * math.pi * np.arange(n) / n
        if crs is None:  # geodesic: vertices at true distance, azimuths counter-clockwise
            from pyproj import Geod

            az = (90.0 - np.degrees(angles)) % 360.0
            lons, lats, _ = Geod(ellps="WGS84").fwd(np.full(n, shape.x), np.full(n, shape.y),
                                                    az, np.full(n, float(distance)))
            return Geom(Polygon(np.column_stack([lons, lats])))
        cx, cy = transformer("EPSG:4326", crs).transform(shape.x, shape.y)
        ring = np.column_stack([cx + distance * np.cos(angles), cy + distance * np.sin(angles)])
        return Geom(reproject(Polygon(ring), crs, "EPSG:4326"))
    # other geometries: planar buffer in ``proj`` (or the local UTM zone for geodesic buffers)
    if crs is None:
        c = shape.centroid
        crs = _utm_crs(c.x, c.y)
    quad = max(1, math.ceil(vertex_count(abs(distance) or 1.0, err or 1.0) / 4))
    planar = reproject(shape, "EPSG:4326", crs).buffer(distance, quad_segs=quad)
    return Geom(reproject(planar, crs, "EPSG:4326"))
