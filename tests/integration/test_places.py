"""Places from a name (through osmnx against the stand-in), an OSM id, a bbox or a file."""

from __future__ import annotations

import pytest
import shapely

from aether.errors import PlaceError
from aether.places.place import MAX_AREA_KM2, parse_bbox, resolve_place


def fails(match: str, *args, **kwargs) -> PlaceError:
    with pytest.raises(PlaceError, match=match) as e:
        resolve_place(*args, **kwargs)
    assert "\n" not in str(e.value)
    return e.value


def test_bbox_place():
    from pyproj import Geod

    place = resolve_place("Helsinki centre", bbox="24.93,60.16,24.96,60.18")
    assert place.slug == "helsinki-centre"
    assert place.crs == "EPSG:32635"
    assert place.bbox == (24.93, 60.16, 24.96, 60.18)
    geodesic = abs(Geod(ellps="WGS84").geometry_area_perimeter(place.boundary)[0]) / 1e6
    assert place.area_km2 == pytest.approx(geodesic, rel=2e-3)
    assert resolve_place(bbox=(24.93, 60.16, 24.96, 60.18)).slug == "bbox-24-93-60-16-24-96-60-18"
    south = resolve_place(bbox="103.6,1.15,104.1,1.48")
    assert south.crs == "EPSG:32648"


@pytest.mark.parametrize(("bbox", "match"), [
    ("24.96,60.16,24.93,60.18", "has W >= E"),
    ("24.93,60.18,24.96,60.16", "has S >= N"),
    ("200,60.16,201,60.18", "outside lon"),
    ("24.93,-95,24.96,60", "outside lon"),
    ("24.93,60.16,24.96", "not four numbers"),
    ("a,b,c,d", "not four numbers"),
    ("nan,1,2,3", "not four numbers"),
])
def test_bad_bbox(bbox, match):
    fails(match, bbox=bbox)
    with pytest.raises(PlaceError):
        parse_bbox(bbox)


def test_area_limit_asks_for_yes(monkeypatch):
    big = "20,55,30,65"
    err = fails(f"above the limit of {MAX_AREA_KM2:,.0f}", bbox=big)
    assert "--yes" in err.hint
    assert resolve_place(bbox=big, yes=True).area_km2 > MAX_AREA_KM2
    fails("above the limit of 1 km", bbox="24.93,60.16,24.96,60.18", max_area_km2=1)
    monkeypatch.setenv("AETHER_MAX_AREA_KM2", "2")
    fails("above the limit of 2 km", bbox="24.93,60.16,24.96,60.18")


def test_boundary_file(tmp_path):
    import geopandas as gpd

    a, b = shapely.box(24.93, 60.16, 24.94, 60.17), shapely.box(24.94, 60.16, 24.95, 60.17)
    gpd.GeoDataFrame(geometry=[a, b], crs="EPSG:4326").to_crs("EPSG:3067").to_file(
        tmp_path / "area.gpkg")
    place = resolve_place(boundary=tmp_path / "area.gpkg")
    assert place.slug == "area"
    assert place.boundary.geom_type == "Polygon"  # the union, back in EPSG:4326
    assert place.boundary.symmetric_difference(a.union(b)).area < 1e-10
    gpd.GeoDataFrame(geometry=[shapely.Point(24.9, 60.1)], crs="EPSG:4326").to_file(
        tmp_path / "points.geojson")
    fails("holds no polygon", boundary=tmp_path / "points.geojson")
    fails("missing or empty", boundary=tmp_path / "absent.geojson")
    (tmp_path / "junk.geojson").write_text("{not json")
    fails("cannot read boundary file", boundary=tmp_path / "junk.geojson")


def test_nothing_or_too_much_given():
    fails("no place given")
    fails(r"osm_id=\.\.\. and bbox=\.\.\. both given", osm_id="R1", bbox="1,2,3,4")


def test_city_name_prefers_the_polygon(osm_env):
    place = resolve_place("Helsinki")  # the city node ranks below the boundary relation
    assert place.name == "Helsinki" and place.slug == "helsinki"
    assert place.crs == "EPSG:32635"
    assert place.boundary.geom_type == "Polygon"
    west, south, east, north = place.bbox
    assert west < 24.936 and east > 24.952 and south < 60.165 and north > 60.178
    by_id = resolve_place(osm_id="r34914")
    assert by_id.boundary.equals(place.boundary)
    assert by_id.slug == "helsinki"


def test_geocoding_errors(osm_env):
    fails("no place called 'Atlantis' found", "Atlantis")
    err = fails(r"'Keskusta' resolves only to a point \(Keskusta \[N4246817520", "Keskusta")
    assert "--osm-id" in err.hint and "--bbox" in err.hint
    err = fails(r"'Vuohi' is ambiguous: 1\) Vuohi \[W33505710.*2\) Vuohi \[W33505711", "Vuohi")
    assert "--which-result" in err.hint
    fails("'Vuohi' has only 2 result", "Vuohi", which_result=3)
    fails("must be 1 or more", "Vuohi", which_result=0)
    fails("is not like R123", osm_id="relation 5")
    fails("OSM id R1 is unknown", osm_id="R1")
    fails("N4246817520 is a Point, not an area", osm_id="N4246817520")


def test_which_result_picks_among_ambiguous(osm_env):
    first = resolve_place("Vuohi", which_result=1)
    second = resolve_place("Vuohi", which_result=2)
    assert not first.boundary.equals(second.boundary)
    assert {first.slug, second.slug} == {"vuohi"}
