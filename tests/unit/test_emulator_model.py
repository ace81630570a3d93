"""The emulator's own model of Earth Engine, piece by piece (no server, no ee client).

Each oracle here is a hand computation from the EE documentation, not emulator code:
inscribed-polygon geometry, the 8-bit weights and 0.5% rule of the "Weighted reductions"
guide, the AlphaEarth de-quantisation formula, computePixels' byte count, EE's messages.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from aether.testing.emulator.coverage import pixel_weights, quantise
from aether.testing.emulator.exports import destination, open_confined
from aether.testing.emulator.faults import Faults, fault_message
from aether.testing.emulator.geometry import buffer, reproject, vertex_count
from aether.testing.emulator.raster import decode
from aether.testing.emulator.server import pixel_bytes
from aether.testing.emulator.values import EEError, Geom, Projection

UTM = "EPSG:32635"
LON, LAT = 24.94, 60.17


def _utm_ring(geom: Geom) -> np.ndarray:
    return np.asarray(reproject(geom.shape, "EPSG:4326", UTM).exterior.coords)[:-1]


def test_default_buffer_is_an_inscribed_23_gon_about_1_3_percent_short() -> None:
    # maxError defaults to 1% of r: the fewest n with r (1 - cos(pi / n)) <= 0.01 r is 23
    assert vertex_count(100.0, 1.0) == 23 == math.ceil(math.pi / math.acos(0.99))
    g = buffer(Geom(shapely.Point(LON, LAT)), 100.0)
    ring = _utm_ring(g)
    assert len(ring) == 23
    # geodesic: vertices at 100 m true distance, i.e. ~100 m / k in UTM units (k ~ 0.9998)
    from pyproj import Geod

    _, _, dist = Geod(ellps="WGS84").inv(np.full(23, LON), np.full(23, LAT),
                                         *np.asarray(g.shape.exterior.coords)[:-1].T)
    np.testing.assert_allclose(dist, 100.0, atol=1e-6)
    area = reproject(g.shape, "EPSG:4326", UTM).area
    assert 0.986 < area / (math.pi * 100.0**2) < 0.989  # 23 sin(2 pi / 23) / (2 pi) = 0.9876


def test_buffer_in_a_projection_honours_max_error() -> None:
    g = buffer(Geom(shapely.Point(LON, LAT)), 200.0, 0.02, Projection(UTM))
    ring = _utm_ring(g)
    cx, cy = reproject(shapely.Point(LON, LAT), "EPSG:4326", UTM).coords[0]
    r = np.hypot(ring[:, 0] - cx, ring[:, 1] - cy)
    np.testing.assert_allclose(r, 200.0, atol=1e-6)  # inscribed: every vertex on the circle
    n = len(ring)
    assert 200.0 * (1 - math.cos(math.pi / n)) <= 0.02 < 200.0 * (1 - math.cos(math.pi / (n - 1)))
    area = reproject(g.shape, "EPSG:4326", UTM).area
    assert area / (math.pi * 200.0**2) == pytest.approx(n * math.sin(2 * math.pi / n)
                                                        / (2 * math.pi), rel=1e-9)


def test_weights_are_8_bit_with_the_half_percent_rule() -> None:
    np.testing.assert_allclose(quantise(np.array([1.0, 0.5, 0.004, 0.006, 0.0])),
                               [1.0, 127 / 255, 0.0, 1 / 255, 0.0])
    # a 10 m pixel grid; a box covering all of pixel (0,0), 30% of (0,1), 0.3% of (0,2)
    t = (10.0, 0.0, 0.0, 0.0, -10.0, 100.0)
    region = shapely.Polygon([(0, 90), (10, 90), (10, 100), (0, 100)]).union(
        shapely.box(10, 97, 20, 100)).union(shapely.box(20, 99.97, 30, 100))
    rows, cols, w = pixel_weights(region, t, 10, 10)
    got = dict(zip(zip(rows.tolist(), cols.tolist(), strict=True), w.tolist(), strict=True))
    assert got == {(0, 0): 1.0, (0, 1): math.floor(0.3 * 255) / 255}
    # unweighted: the pixel centre rule (pixel (0,1)'s centre is outside, so is (0,2)'s)
    rows, cols, w = pixel_weights(region, t, 10, 10, weighted=False)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 0)] and w.tolist() == [1]


def test_tile_decoding_follows_the_documented_formula() -> None:
    q = np.array([-128, -127, -1, 0, 1, 64, 127], dtype=np.int8)
    v = decode(q)
    assert np.isnan(v[0])
    want = [-(127 / 127.5) ** 2, -(1 / 127.5) ** 2, 0.0, (1 / 127.5) ** 2, (64 / 127.5) ** 2,
            (127 / 127.5) ** 2]
    np.testing.assert_allclose(v[1:], want, rtol=1e-6)


def test_compute_pixels_counts_value_plus_mask_bytes() -> None:
    f4, f8, u1 = np.dtype("f4"), np.dtype("f8"), np.dtype("u1")
    assert pixel_bytes(256, 256, [f4] * 64) == 256 * 256 * 64 * 5
    assert pixel_bytes(10, 10, [f8, u1]) == 100 * (9 + 2)
    # xee's 64 float bands: 4 bytes alone would let 196,608 px pass; with the mask byte not
    assert 196_608 * 64 * 4 <= 50_331_648 < pixel_bytes(196_608, 1, [f4] * 64)


def test_fault_kinds_carry_earth_engine_messages() -> None:
    assert fault_message("ee_memory") == "Earth Engine memory capacity exceeded."
    assert fault_message("capacity") == "Earth Engine capacity exceeded."
    assert fault_message("payload") == "Request payload size exceeds the limit: 10485760 bytes."
    assert fault_message("deadline") == "Deadline expired before operation could complete."
    msg = fault_message("request_size", 70_000_000)
    assert msg == ("Total request size (70000000 bytes) must be less than or equal to "
                   "50331648 bytes.")
    n = int(fault_message("request_size", 1000).split("(")[1].split()[0])
    assert n > 50_331_648
    f = Faults(schedule={0: "deadline", 1: "request_size"})
    assert [f.draw("value:compute"), f.draw("image:computePixels")] == ["deadline",
                                                                        "request_size"]


def test_drive_names_are_literal_and_gcs_prefixes_nest() -> None:
    drive = {"fileFormat": "CSV", "driveDestination": {"folder": "a/b", "filenamePrefix": "x/y"}}
    assert destination(drive, "d") == ["drive", "a%2Fb", "x%2Fy.csv"]
    assert destination({"driveDestination": {"filenamePrefix": "p"}}, "d") == ["drive", "p.csv"]
    gcs = {"fileFormat": "GEO_JSON",
           "cloudStorageDestination": {"bucket": "b", "filenamePrefix": "poi/emb"}}
    assert destination(gcs, "d") == ["gcs", "b", "poi", "emb.geojson"]


@pytest.mark.parametrize("dest", [
    {"cloudStorageDestination": {"bucket": "..", "filenamePrefix": "x"}},
    {"cloudStorageDestination": {"bucket": "b", "filenamePrefix": "../../x"}},
    {"cloudStorageDestination": {"bucket": "b", "filenamePrefix": "/etc/x"}},
    {"cloudStorageDestination": {"bucket": "b", "filenamePrefix": "%2e%2e/%2e%2e/x"}},
    {"cloudStorageDestination": {"bucket": "a/../..", "filenamePrefix": "x"}},
    {"driveDestination": {"folder": "..", "filenamePrefix": "x"}},
    {"driveDestination": {"folder": "f", "filenamePrefix": ".."}},
    {"driveDestination": {"folder": "%2E%2E", "filenamePrefix": "x"}},
])
def test_export_names_that_escape_are_refused(dest) -> None:
    with pytest.raises(EEError, match="Invalid"):
        destination({"fileFormat": "CSV", **dest}, "d")


def test_writes_never_follow_a_symlink(tmp_path) -> None:
    root, outside = tmp_path / "exports", tmp_path / "outside"
    (root / "gcs").mkdir(parents=True)
    outside.mkdir()
    (root / "gcs" / "b").symlink_to(outside)
    with pytest.raises(EEError, match="symlink"), open_confined(root, ["gcs", "b", "x.csv"]):
        pass
    assert list(outside.iterdir()) == []
    # a symlink at the file's own place is replaced, its target left untouched
    target = outside / "victim.csv"
    target.write_text("keep")
    (root / "drive").mkdir()
    (root / "drive" / "t.csv").symlink_to(target)
    with open_confined(root, ["drive", "t.csv"]) as (fh, path):
        fh.write("new")
    assert target.read_text() == "keep" and not path.is_symlink() and path.read_text() == "new"


def test_coverage_of_a_concave_polygon_with_a_hole_matches_plain_intersection() -> None:
    """The fast path (corner test + vectorised rectangle clip) against GEOS overlay per pixel."""
    star = shapely.Polygon(
        [(500, 500), (800, 520), (510, 540), (800, 800), (490, 560), (200, 800), (480, 530),
         (200, 500)], [[(300, 505.5), (350, 505.5), (350, 510), (300, 510)]])
    assert star.is_valid
    t = (10.0, 0.0, 0.0, 0.0, -10.0, 1000.0)
    rows, cols, w = pixel_weights(star, t, 100, 100)
    got = np.zeros((100, 100))
    got[rows, cols] = w
    r, c = (a.ravel() for a in np.meshgrid(np.arange(100), np.arange(100), indexing="ij"))
    boxes = shapely.box(c * 10.0, 1000 - 10.0 * r - 10, c * 10.0 + 10, 1000 - 10.0 * r)
    frac = shapely.area(shapely.intersection(boxes, star)) / 100
    want = np.where(frac >= 0.005, np.floor(255 * frac + 1e-6) / 255, 0.0)
    np.testing.assert_array_equal(got[r, c], want)
