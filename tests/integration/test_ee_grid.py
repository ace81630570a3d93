"""The grid a zone's images lie on is checked at run time, not assumed (#25 item 12).

aether used to send ``crs`` + ``scale=10``: a grid with pixel edges on whole multiples of
10 m. Tiles written 5 m off that grid, served by the emulator (which reduces as Earth Engine
does, resampling to the working grid by nearest neighbour), show what the check changes: the
Earth Engine source asks each zone's image for its projection once, reduces on that grid
(``crsTransform``), and agrees with the COG source, which reduces on the tiles' own grid too.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from aef_tiles import smooth_q, write
from shapely.geometry import Point

from aether.core.aef import BANDS
from aether.embeddings import get_source
from aether.embeddings.earthengine import source as ee_source
from aether.embeddings.earthengine.export import VALID_BAND
from aether.io import tiles as tile_io
from aether.io.tables import sort_poi_embeddings
from aether.testing.emulator import Emulator, running

CRS = "EPSG:32635"
RADII = [100.0, -45.0]  # a circle, and the reference's 9 × 9 px square window


@pytest.fixture
def reset_ee():
    yield
    import ee

    ee.Reset()


def _computes(emu: Emulator) -> int:
    return sum(1 for e in emu.log if e["route"] == "value:compute")


def _tiles(root: Path, shift: float) -> Path:
    """Two tiles side by side, their pixel edges ``shift`` m off whole multiples of 10 m."""
    west, north = 385_000.0 + shift, 6_675_000.0 + shift
    recs = [write(root, "a", smooth_q(300, 300, seed=1, patch_px=1), CRS, west, north),
            write(root, "b", smooth_q(300, 300, seed=2, patch_px=1), CRS, west + 3_000, north)]
    tile_io.write_index(recs, root)
    return root


def _pois(n: int = 40, seed: int = 0) -> gpd.GeoDataFrame:
    from pyproj import Transformer

    rng = np.random.default_rng(seed)
    x = rng.uniform(385_400, 390_600, n)
    y = rng.uniform(6_672_400, 6_674_600, n)
    lon, lat = Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)
    return gpd.GeoDataFrame({"poi_id": [f"p{i:03d}" for i in range(n)]},
                            geometry=[Point(a, b) for a, b in zip(lon, lat, strict=True)],
                            crs="EPSG:4326")


def _means(src: object, pois: gpd.GeoDataFrame) -> pd.DataFrame:
    out = src.point_means(pois, RADII, 2024)  # type: ignore[attr-defined]
    return sort_poi_embeddings(out).set_index(["poi_id", "radius_m"])[list(BANDS)]


@pytest.mark.parametrize("shift", [0.0, 5.0])
def test_ee_reduces_on_the_images_own_grid_and_agrees_with_cog(tmp_path: Path, shift: float,
                                                                 reset_ee, caplog) -> None:
    tiles = _tiles(tmp_path / "tiles", shift)
    pois = _pois()
    emu = Emulator(tiles=tiles, exports=tmp_path / "exports")
    with running(emu) as url:
        src = get_source("ee", workdir=tmp_path / "ee", ee_url=url, ee_project="demo",
                         ee_backoff=0.01)
        ee = _means(src, pois)
        first = _computes(emu)
        _means(src, _pois(seed=1))  # the same zone again: its grid is known
        again = _computes(emu) - first
    cog = _means(get_source("cog", tiles=str(tiles)), pois)
    assert np.abs(ee.to_numpy() - cog.loc[ee.index].to_numpy()).max() <= 1e-3
    grid = src._grids[CRS]
    if shift == 0:
        assert grid is None  # crs + scale, as before
    else:
        assert grid is not None and (grid[0], grid[4]) == (10.0, -10.0)
        assert (grid[2] % 10, grid[5] % 10) == (5.0, 5.0)
    assert first == again + 1  # one projection request per zone, then cached
    warned = [r for r in caplog.records if "own grid" in r.getMessage()]
    assert len(warned) == (1 if shift else 0)


def test_without_the_check_an_offset_grid_shifts_every_mean(tmp_path: Path, reset_ee) -> None:
    """The check matters: the same offset tiles reduced on the assumed grid differ from the
    COG source's means by far more than the two routes' agreement above."""
    tiles = _tiles(tmp_path / "tiles", 5.0)
    pois = _pois()
    emu = Emulator(tiles=tiles, exports=tmp_path / "exports")
    cog = _means(get_source("cog", tiles=str(tiles)), pois)
    with running(emu) as url:
        src = get_source("ee", workdir=tmp_path / "ee", ee_url=url, ee_project="demo",
                         ee_backoff=0.01)
        src._initialize()
        import ee as ee_client

        batches = ee_source.make_batches(pois, RADII, 2024, 1000)
        expr = ee_source.reduce_regions_graph(batches[0].items, 2024)  # crs + scale=10
        feats = ee_client.data.computeFeatures({"expression": expr})["features"]
    props = pd.DataFrame([f["properties"] for f in feats])
    props = props.set_index(["poi_id", "radius_m"])
    assumed = props[list(BANDS)].to_numpy() / props[[VALID_BAND]].to_numpy()
    diff = np.abs(assumed - cog.loc[props.index].to_numpy()).max()
    assert diff > 5e-3
