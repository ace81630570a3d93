"""Grids: cell specs, square and H3 cells through the one kernel, xee = COG, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import share_sample

from aether.core import aef, zonal
from aether.core import cells as grids
from aether.embeddings import get_source
from aether.errors import InputError
from aether.io import tiles as tile_io

VALUES = [*aef.BANDS, "weight", "valid_fraction", "norm"]


@pytest.mark.parametrize(("spec", "kind", "size", "label"), [
    ("100m", "square", 100.0, "100m"), (250, "square", 250.0, "250m"),
    ("0.5km", "square", 500.0, "500m"), (" 10M ", "square", 10.0, "10m"),
    ("h3:9", "h3", 9.0, "h3r9"), ("H3:12", "h3", 12.0, "h3r12"),
])
def test_parse_cell(spec, kind, size, label) -> None:
    cell = grids.parse_cell(spec)
    assert (cell.kind, cell.size, cell.label) == (kind, size, label)


@pytest.mark.parametrize(("spec", "match"), [
    ("5m", "out of range"), ("9.99", "out of range"), ("200km", "out of range"),
    ("abc", "cannot read"), ("100 ft", "cannot read"), ("", "cannot read"),
    ("h3:13", "out of range"), ("h3:4", "out of range"), ("h3:99", "out of range"),
])
def test_bad_cells(spec, match) -> None:
    with pytest.raises(InputError, match=match):
        grids.parse_cell(spec)


def _block(sample_city) -> zonal.PixelBlock:
    idx = tile_io.read_index(sample_city.tiles)
    return tile_io.read_block(str(idx.path.iloc[0]))


def _split(block: zonal.PixelBlock, r: int, c: int) -> list[zonal.PixelBlock]:
    """Four pixel-aligned quarters of a block."""
    v = block.values
    return [zonal.PixelBlock(v[rs, cs], block.x0 + cs.start * block.dx,
                             block.y0 + rs.start * block.dy, block.dx, block.dy)
            for rs in (slice(0, r), slice(r, None)) for cs in (slice(0, c), slice(c, None))]


@pytest.mark.parametrize("spec", ["100m", "h3:10"])
def test_cells_sum_over_blocks_like_one_block(sample_city, spec) -> None:
    """A cell cut by chunk or tile edges gets exactly what one block would give it."""
    cells = grids.make_cells(sample_city.place.boundary, sample_city.place.crs,
                             grids.parse_cell(spec))
    block = _block(sample_city)
    whole = grids.accumulate(len(cells), [cells.sums(block)])
    parts = grids.accumulate(len(cells), [cells.sums(b) for b in _split(block, 77, 53)])
    np.testing.assert_allclose(parts.weighted_sum, whole.weighted_sum, atol=1e-3)
    np.testing.assert_allclose(parts.valid_weight, whole.valid_weight, rtol=1e-9)
    inside = cells.area_px > 0
    assert (whole.valid_weight[inside] > 0).all()


@pytest.mark.parametrize("spec", ["100m", "h3:10"])
def test_tile_in_the_next_utm_zone(sample_city, spec, tmp_path) -> None:
    """A tile in another UTM zone is warped onto the place's grid (as Earth Engine does)."""
    from aef_tiles import constant_q, write
    from pyproj import Transformer

    from aether.core import aef
    from aether.io import tiles as tile_io

    cells = grids.make_cells(sample_city.place.boundary, sample_city.place.crs,
                             grids.parse_cell(spec))
    xmin, ymin, xmax, ymax = Transformer.from_crs(cells.crs, "EPSG:32634", always_xy=True
                                                  ).transform_bounds(*cells.bounds())
    x0, y0 = np.floor(xmin / 10) * 10 - 300, np.ceil(ymax / 10) * 10 + 300
    h, w = int((y0 - ymin) / 10) + 60, int((xmax - x0) / 10) + 60
    q = constant_q(h, w, seed=7)
    tile_io.write_index([write(tmp_path, "z34", q, "EPSG:32634", x0, y0)], tmp_path)
    frame = get_source("cog", tiles=tmp_path).grid(sample_city.place, 2024, spec)
    want = aef.dequantize(q[:, 0, 0])
    np.testing.assert_allclose(frame[list(aef.BANDS)].to_numpy(float),
                               np.broadcast_to(want, (len(frame), 64)), atol=1e-6)
    np.testing.assert_allclose(frame["valid_fraction"], 1.0, atol=1e-6)


def test_h3_cells_are_area_weighted(sample_city) -> None:
    """Inside the data, each hexagon's weight is its own area in pixels (exact coverage)."""
    import h3

    frame = get_source("cog", tiles=sample_city.tiles).grid(sample_city.place, 2024, "h3:10")
    assert len(frame) > 50 and frame["cell_id"].map(h3.is_valid_cell).all()
    assert all(h3.get_resolution(c) == 10 for c in frame["cell_id"])
    cells = grids.make_cells(sample_city.place.boundary, sample_city.place.crs,
                             grids.parse_cell("h3:10"))
    np.testing.assert_allclose(frame["weight"], cells.area_px, rtol=1e-5)
    assert np.allclose(frame["valid_fraction"], 1.0, atol=1e-5)
    # the area-weighted mean of a hexagon, by hand from the exact pixel coverage
    i = len(frame) // 2
    block = _block(sample_city)
    own = zonal.polygon_partial_sums(block, [cells.polygons[i]])
    mean = own.weighted_sum[0] / own.valid_weight[0]
    np.testing.assert_allclose(frame.loc[i, list(aef.BANDS)].to_numpy(float), mean, atol=1e-5)


@pytest.mark.parametrize("cell", ["100m", "h3:9"])
def test_xee_and_cog_grids_agree(ee_server, emulator, sample_city, tmp_path: Path,
                                 cell: str) -> None:
    xee_src = get_source("xee", workdir=tmp_path, ee_url=ee_server, ee_project="demo-project")
    got = xee_src.grid(sample_city.place, 2024, cell)
    want = get_source("cog", tiles=sample_city.tiles).grid(sample_city.place, 2024, cell)
    assert got["cell_id"].tolist() == want["cell_id"].tolist()
    diff = np.abs(got[VALUES].to_numpy(float) - want[VALUES].to_numpy(float))
    assert np.nanmax(diff) <= 1e-4
    assert np.isnan(got[VALUES].to_numpy(float)).sum() == np.isnan(
        want[VALUES].to_numpy(float)).sum()
    assert sum(e["route"] == "image:computePixels" for e in emulator.log) == 1


def test_ee_source_grid_goes_through_xee(ee_server, sample_city, tmp_path: Path) -> None:
    src = get_source("ee", workdir=tmp_path, ee_url=ee_server, ee_project="demo-project")
    got = src.grid(sample_city.place, 2024, "200m")
    want = get_source("cog", tiles=sample_city.tiles).grid(sample_city.place, 2024, "200m")
    assert np.nanmax(np.abs(got[VALUES].to_numpy(float) - want[VALUES].to_numpy(float))) <= 1e-4


@pytest.fixture
def own_data(sample_city, data_root: Path, tmp_path: Path) -> Path:
    """A data directory of this test's own that shares the session's built sample."""
    return share_sample(data_root, tmp_path / "data")


def test_cli_grid_h3_and_zarr(cli, own_data: Path) -> None:
    import geopandas as gpd
    import xarray as xr

    env = {"AETHER_DATA_DIR": str(own_data)}
    out = own_data / "helsinki" / "2024"
    r = cli("grid", "--city", "Helsinki", "--offline", "--cell", "h3:9", env=env)
    assert r.returncode == 0, r.stderr
    hexes = gpd.read_parquet(out / "grid_embeddings_h3r9.parquet")
    assert len(hexes) > 10 and f"{len(hexes)} cells" in r.stdout
    r = cli("grid", "--city", "Helsinki", "--offline", "--cell", "150m", "--zarr", env=env)
    assert r.returncode == 0, r.stderr
    table = pd.read_parquet(out / "grid_embeddings_150m.parquet")
    ds = xr.open_zarr(out / "grid_embeddings_150m.zarr")
    assert ds["embedding"].shape == (64, ds.sizes["y"], ds.sizes["x"])
    assert ds.sizes["y"] * ds.sizes["x"] == len(table) and ds.attrs["crs"] == "EPSG:32635"
    row = table.iloc[len(table) // 3]
    px = ds["embedding"].sel(x=row["x"], y=row["y"]).values
    np.testing.assert_array_equal(px, row[list(aef.BANDS)].to_numpy(np.float32))


@pytest.mark.parametrize(("cell", "msg"), [
    ("5m", "cell size 5 m is out of range"), ("h3:15", "H3 resolution 15 is out of range"),
])
def test_cli_bad_cell(cli, own_data: Path, cell: str, msg: str) -> None:
    r = cli("grid", "--city", "Helsinki", "--offline", "--cell", cell,
            env={"AETHER_DATA_DIR": str(own_data)})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0]
    assert not (own_data / "helsinki").exists()


def test_cli_grid_unchanged_is_not_written_again(cli, own_data: Path) -> None:
    """As extract: the same place, source, cells and data give the same grid, so a second
    `aether grid` computes and writes nothing; another cell size, a lost file or --zarr
    asked for the first time do the work."""
    env = {"AETHER_DATA_DIR": str(own_data)}
    out = own_data / "helsinki" / "2024"
    grid = out / "grid_embeddings_200m.parquet"
    first = cli("grid", "--city", "Helsinki", "--offline", "--cell", "200m", env=env)
    assert first.returncode == 0 and "up to date" not in first.stdout, first.stderr
    stamp = grid.stat().st_mtime_ns, grid.stat().st_ino
    second = cli("grid", "--city", "Helsinki", "--offline", "--cell", "200m", env=env)
    assert second.returncode == 0, second.stderr
    assert "(up to date, nothing to do)" in second.stdout
    assert (grid.stat().st_mtime_ns, grid.stat().st_ino) == stamp
    assert first.stdout.split(" cells")[0] == second.stdout.split(" cells")[0]  # same count
    zarr = cli("grid", "--city", "Helsinki", "--offline", "--cell", "200m", "--zarr", env=env)
    assert zarr.returncode == 0 and "up to date" not in zarr.stdout, zarr.stderr
    assert grid.with_suffix(".zarr").is_dir()
    grid.write_bytes(b"damaged")  # a changed output is made again
    third = cli("grid", "--city", "Helsinki", "--offline", "--cell", "200m", env=env)
    assert third.returncode == 0 and "up to date" not in third.stdout, third.stderr
    assert len(pd.read_parquet(grid)) > 10
