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
