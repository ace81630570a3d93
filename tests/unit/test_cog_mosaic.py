"""What a pixel covered by two tiles means for the COG source: each ground pixel counts once.

Duplicate index rows are read once; where tiles overlap, the later tile in index order wins
(Earth Engine's ``mosaic()``). Oracles are analytic: constant tiles give known means, and a
buffer's weight is the one it has on a single tile.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from aef_tiles import constant_q, smooth_q, write
from pyproj import Transformer
from shapely.geometry import Point

from aether.core import aef
from aether.embeddings.cog import CogSource
from aether.io import tiles as tile_io

CRS = "EPSG:32635"
NORTH = 6_675_000.0
BANDS = list(aef.BANDS)


def _pois(xy: list[tuple[float, float]]) -> gpd.GeoDataFrame:
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(
        [p[0] for p in xy], [p[1] for p in xy])
    return gpd.GeoDataFrame({"poi_id": [f"p{i}" for i in range(len(xy))]},
                            geometry=[Point(a, b) for a, b in zip(lon, lat, strict=True)],
                            crs="EPSG:4326")


def _means(root: Path, pois: gpd.GeoDataFrame, radius: float = 100.0):
    return CogSource(str(root)).point_means(pois, [radius], 2024).set_index("poi_id")


def _decoded(q: np.ndarray) -> np.ndarray:
    return aef.dequantize(q[:, 0, 0]).astype(np.float64)


def test_duplicate_index_rows_count_once(tmp_path: Path) -> None:
    rec = write(tmp_path / "t", "a", smooth_q(300, 300), CRS, 385_000.0, NORTH)
    once, twice = tmp_path / "once", tmp_path / "twice"
    tile_io.write_index([rec], once)
    tile_io.write_index([rec, rec], twice)
    assert len(tile_io.read_index(twice)) == 1
    pois = _pois([(385_500.0, NORTH - 1_500.0), (386_200.0, NORTH - 700.0)])
    a, b = _means(once, pois), _means(twice, pois)
    np.testing.assert_array_equal(a[BANDS].to_numpy(), b[BANDS].to_numpy())
    np.testing.assert_array_equal(a["weight"].to_numpy(), b["weight"].to_numpy())
    # a 100 m buffer inside one tile weighs its area in pixels (coverage is exact)
    np.testing.assert_allclose(a["weight"], np.pi * 100.0**2 / 100.0, rtol=1e-6)


@pytest.mark.parametrize("b_last", [True, False])
def test_overlap_last_tile_in_index_order_wins(tmp_path: Path, b_last: bool) -> None:
    qa, qb = constant_q(300, 300, seed=1), constant_q(300, 300, seed=2)
    # A spans x 385000..388000, B 386000..389000: they overlap on 386000..388000
    ra = write(tmp_path, "a", qa, CRS, 385_000.0, NORTH)
    rb = write(tmp_path, "b", qb, CRS, 386_000.0, NORTH)
    tile_io.write_index([ra, rb] if b_last else [rb, ra], tmp_path)
    top = qb if b_last else qa
    y = NORTH - 1_500.0
    pois = _pois([(387_000.0, y), (385_400.0, y), (388_600.0, y)])
    m = _means(tmp_path, pois)
    np.testing.assert_allclose(m.loc["p0", BANDS].to_numpy(float), _decoded(top), atol=1e-6)
    np.testing.assert_allclose(m.loc["p1", BANDS].to_numpy(float), _decoded(qa), atol=1e-6)
    np.testing.assert_allclose(m.loc["p2", BANDS].to_numpy(float), _decoded(qb), atol=1e-6)
    # every buffer weighs its own area: overlapping pixels are not counted twice
    np.testing.assert_allclose(m["weight"], np.pi * 100.0**2 / 100.0, rtol=1e-6)
    assert (m["valid_fraction"] > 1 - 1e-6).all()


def test_buffer_across_an_overlap_edge_is_split_by_area(tmp_path: Path) -> None:
    qa, qb = constant_q(300, 300, seed=3), constant_q(300, 300, seed=4)
    ra = write(tmp_path, "a", qa, CRS, 385_000.0, NORTH)
    rb = write(tmp_path, "b", qb, CRS, 386_000.0, NORTH)
    tile_io.write_index([ra, rb], tmp_path)
    # centred on B's west edge: the west half sees only A, the east half B on top of A
    m = _means(tmp_path, _pois([(386_000.0, NORTH - 1_500.0)]))
    want = (_decoded(qa) + _decoded(qb)) / 2
    np.testing.assert_allclose(m.loc["p0", BANDS].to_numpy(float), want, atol=1e-6)
    np.testing.assert_allclose(m["weight"], np.pi * 100.0**2 / 100.0, rtol=1e-6)


def test_grid_cells_count_overlapping_pixels_once(tmp_path: Path) -> None:
    from shapely.geometry import box

    from aether.places.place import place_from_polygon

    qa, qb = constant_q(300, 300, seed=5), constant_q(300, 300, seed=6)
    ra = write(tmp_path, "a", qa, CRS, 385_000.0, NORTH)
    rb = write(tmp_path, "b", qb, CRS, 386_000.0, NORTH)
    tile_io.write_index([ra, rb, ra], tmp_path)  # A listed twice: read once, at its first row
    to_ll = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    w, s = to_ll.transform(386_300.0, NORTH - 2_000.0)
    e, n = to_ll.transform(387_700.0, NORTH - 1_000.0)
    place = place_from_polygon("overlap", box(w, s, e, n), "overlap")
    got = CogSource(str(tmp_path)).grid(place, 2024, "100m")
    full = got[got["valid_fraction"] > 0.999]
    assert len(full) > 10
    np.testing.assert_allclose(full[BANDS].to_numpy(float),
                               np.broadcast_to(_decoded(qb), (len(full), 64)), atol=1e-6)


def test_windows_follow_the_blocks_and_buffers_add_up_across_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stored block is read by one window only (windows are disjoint and each lies in
    one 256 px block), and a buffer cut by block edges is the sum of its parts: the same
    means as with the cells moved by half a block, and exact weights."""
    from aether.embeddings import cog

    west = 385_000.0
    rec = write(tmp_path / "t", "a", smooth_q(700, 700, seed=5), CRS, west, NORTH)
    tile_io.write_index([rec], tmp_path)
    south = NORTH - 7_000.0  # the tile is stored south-up: its blocks start at the south edge
    edge = 2_560.0
    xy = [(west + edge, south + edge), (west + edge + 35.0, south + 2 * edge - 20.0),
          (west + 1_000.0, south + 1_000.0), (west + 3_000.0, south + edge + 5.0)]
    xy += [(west + 300.0 + 61.0 * i, south + 2_400.0 + 17.0 * i) for i in range(40)]
    pois = _pois(xy)
    seen: list[tuple[float, float, float, float]] = []
    read = tile_io.read_window

    def recording(path: str, bounds=None):
        seen.append(bounds)
        return read(path, bounds)

    monkeypatch.setattr(tile_io, "read_window", recording)
    got = CogSource(str(tmp_path)).point_means(pois, [100.0, 200.0], 2024)
    boxes = np.array(seen)
    assert len(boxes) > 4
    cell = np.floor((boxes[:, :2] - [west, south]) / edge)
    np.testing.assert_array_equal(cell, np.floor((boxes[:, 2:] - 1e-6 - [west, south]) / edge))
    for i in range(len(boxes)):
        for j in range(i):
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            assert w <= 0 or h <= 0, "two windows share pixels"
    for r in (100.0, 200.0):
        np.testing.assert_allclose(got[got.radius_m == r]["weight"], np.pi * r * r / 100.0,
                                   rtol=1e-6)
    monkeypatch.setattr(tile_io, "read_window", read)
    monkeypatch.setattr(cog, "_cell_grid", lambda tiles, crs: (west + 1_280.0, south + 1_280.0,
                                                               edge))
    moved = CogSource(str(tmp_path)).point_means(pois, [100.0, 200.0], 2024)
    np.testing.assert_allclose(got[BANDS].to_numpy(), moved[BANDS].to_numpy(), atol=2e-6)
