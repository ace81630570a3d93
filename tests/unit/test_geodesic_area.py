"""The area limit is geodesic: a continent or the whole world is not 0 km²."""

from __future__ import annotations

import math

import pytest
from shapely.geometry import box

from aether.errors import PlaceError
from aether.places.place import place_from_polygon, resolve_place

#: The WGS84 authalic radius: the sphere with the ellipsoid's surface area.
AUTHALIC_R_M = 6_371_007.2


def test_whole_world_is_the_earths_surface() -> None:
    world = place_from_polygon("world", box(-180, -90, 180, 90), checked=False)
    assert world.area_km2 == pytest.approx(4 * math.pi * AUTHALIC_R_M**2 / 1e6, rel=1e-4)


def _zone_m2(lat_deg: float) -> float:
    """Ellipsoid area from the equator to ``lat_deg`` over all longitudes (WGS84, closed form)."""
    a, f = 6_378_137.0, 1 / 298.257223563
    e = math.sqrt(f * (2 - f))
    b = a * (1 - f)
    s = math.sin(math.radians(lat_deg))
    return math.pi * b**2 * (s / (1 - e**2 * s**2) + math.log((1 + e * s) / (1 - e * s)) / (2 * e))


@pytest.mark.parametrize("bounds", [(24, 60, 25, 61), (-10, 35, 30, 70), (24.9, 60.1, 25.0, 60.2)])
def test_a_box_matches_the_closed_form_zone_area(bounds) -> None:
    west, south, east, north = bounds
    want = (east - west) / 360 * (_zone_m2(north) - _zone_m2(south)) / 1e6
    cell = place_from_polygon("cell", box(*bounds), checked=False)
    assert cell.area_km2 == pytest.approx(want, rel=1e-4)


def test_a_polygon_matches_pyproj_geod() -> None:
    import shapely
    from pyproj import Geod

    tri = shapely.Polygon([(24.90, 60.10), (25.05, 60.12), (24.95, 60.25)])
    geod, _ = Geod(ellps="WGS84").geometry_area_perimeter(shapely.segmentize(tri, 0.001))
    assert place_from_polygon("tri", tri).area_km2 == pytest.approx(abs(geod) / 1e6, rel=1e-4)


def test_whole_world_bbox_needs_yes() -> None:
    with pytest.raises(PlaceError, match="above the limit"):
        resolve_place(bbox="-180,-90,180,90")
    assert resolve_place(bbox="-180,-90,180,90", yes=True).area_km2 > 5e8
