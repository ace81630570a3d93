"""A city on a UTM-zone edge: the COG, Earth Engine and xee sources agree.

Two generated tiles, one in zone 34N and one in 35N, each reaching 1 km past the zone
boundary (24°E), so they overlap there. Each buffer is reduced in its POI's zone over the
year's mosaic (the 35N tile, later in index order, on top): the Earth Engine source (through
the genuine client against the emulator) and xee are the oracles for the COG source, at
the tolerances of the other EE-parity tests.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from aef_tiles import smooth_q, write
from pyproj import Transformer
from shapely.geometry import Point
from support import require

from aether.core import aef
from aether.embeddings import get_source
from aether.io import tiles as tile_io

require("xee")

LAT, EDGE = 60.17, 24.0
BANDS = list(aef.BANDS)
KEY = ["poi_id", "radius_m"]


def _tile(root: Path, name: str, epsg: int, west_m: float, east_m: float, seed: int) -> dict:
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(EDGE, LAT)
    x0, x1 = np.floor((x + west_m) / 10) * 10, np.floor((x + east_m) / 10) * 10
    north = np.floor(y / 10) * 10 + 1_000
    cols = int((x1 - x0) / 10)
    return write(root, name, smooth_q(200, cols, seed=seed), f"EPSG:{epsg}", x0, north)


@pytest.fixture
def two_zones(tmp_path: Path) -> Path:
    root = tmp_path / "tiles"
    west = _tile(root, "w-0000000000-0000000000", 32634, -2_000, 1_000, seed=1)
    east = _tile(root, "e-0000000000-0000000000", 32635, -1_000, 2_000, seed=2)
    tile_io.write_index([west, east], root)  # path order: 34N first, 35N on top
    return root


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEY).reset_index(drop=True)


def test_cog_ee_and_xee_agree_across_a_zone_edge(two_zones: Path, tmp_path: Path) -> None:
    from aether.testing.emulator import Emulator, running

    lon = np.linspace(EDGE - 0.012, EDGE + 0.012, 9)
    pois = gpd.GeoDataFrame({"poi_id": [f"p{i}" for i in range(len(lon))]},
                            geometry=[Point(a, LAT) for a in lon], crs="EPSG:4326")
    assert {aef.utm_epsg(float(a), LAT) for a in lon} == {32634, 32635}
    radii = [100.0, 200.0]
    cog = _sorted(get_source("cog", tiles=two_zones).point_means(pois, radii, 2024))
    with running(Emulator(tiles=two_zones, exports=tmp_path / "exports")) as url:
        opts = {"ee_url": url, "ee_project": "demo-project"}
        ee = _sorted(get_source("ee", workdir=tmp_path / "e", **opts).point_means(pois, radii,
                                                                                  2024))
        xee = _sorted(get_source("xee", workdir=tmp_path / "x", **opts).point_means(pois, radii,
                                                                                    2024))
    # xee hands pixels to the exact kernel; EE (the emulator) reduces its buffer polygons
    # with 8-bit coverage weights, so real EE implies 1e-3 on means, 2e-3 on coverage
    for other, tol, vtol in ((xee, 1e-4, 1e-5), (ee, 1e-3, 2e-3)):
        assert other[KEY].equals(cog[KEY])
        assert np.nanmax(np.abs(other[BANDS].to_numpy(float) - cog[BANDS].to_numpy(float))) \
            <= tol
        np.testing.assert_allclose(other["valid_fraction"], cog["valid_fraction"], atol=vtol)
    # every buffer lies inside the mosaic and counts its area once
    np.testing.assert_allclose(cog["valid_fraction"], 1.0, atol=1e-6)
    np.testing.assert_allclose(cog["weight"], np.pi * cog["radius_m"] ** 2 / 100, rtol=1e-6)
