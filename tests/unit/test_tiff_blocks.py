"""Blocks inflated by libdeflate from a tile's stored bytes equal what GDAL reads, bit for bit;
tiles the direct path cannot read exactly go through GDAL; a damaged block is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from aef_tiles import smooth_q, write
from rasterio.windows import Window

from aether.core import aef
from aether.errors import TilesError
from aether.io import tiff_blocks
from aether.io import tiles as tile_io

WEST, NORTH = 385_000.0, 6_675_000.0


def gdal_window(path: str, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """The oracle: GDAL's own read of the window, band-last."""
    with rasterio.open(path) as ds:
        return np.moveaxis(ds.read(window=Window(c0, r0, w, h)), 0, -1)


@pytest.fixture
def tile(tmp_path: Path) -> str:
    q = smooth_q(600, 700, seed=3)  # 3 × 3 blocks of 256², the last ones cut
    q[:, 250:270, 100:140] = aef.NODATA  # nodata across a block edge
    return str(write(tmp_path, "a", q, "EPSG:32635", WEST, NORTH)["path"])


@pytest.mark.parametrize("window", [
    (0, 0, 256, 256),  # one whole block
    (10, 20, 100, 50),  # inside one block: a view of it
    (200, 230, 120, 90),  # across four blocks
    (512, 512, 88, 188),  # the cut corner block
    (0, 0, 600, 700),  # the whole tile
])
def test_direct_reads_equal_gdal_bit_for_bit(tile: str, window: tuple[int, ...]) -> None:
    with rasterio.open(tile) as ds:
        layout = tiff_blocks.layout(ds, tile)
    assert layout is not None and layout.block == (256, 256)
    got = layout.read(*window)
    assert got.shape == (window[2], window[3], aef.N_BANDS)
    assert np.array_equal(got, gdal_window(tile, *window))


def test_read_window_takes_the_direct_path_and_matches_gdal(tile: str) -> None:
    with rasterio.open(tile) as ds:
        t = ds.transform
    # a window in map units (the tile is south-up: rows run north from its south edge)
    bounds = (t.c + 1_000, t.f + 2_000, t.c + 4_000, t.f + 3_500)
    raw = tile_io.read_window(tile, bounds)
    assert raw is not None
    r0, c0 = round(2_000 / 10), round(1_000 / 10)
    assert raw.transform.f == t.f + r0 * 10 and raw.transform.c == t.c + c0 * 10
    assert np.array_equal(raw.q, gdal_window(tile, r0, c0, 150, 300))


@pytest.mark.parametrize("options", [{"compress": "lzw"}, {"predictor": 2},
                                     {"interleave": "band"}])
def test_tiles_it_cannot_read_exactly_go_through_gdal(tmp_path: Path, options: dict) -> None:
    q = smooth_q(300, 300, seed=1)
    path = str(tmp_path / "other.tif")
    profile = {"driver": "GTiff", "width": 300, "height": 300, "count": aef.N_BANDS,
               "dtype": "int8", "crs": "EPSG:32635", "nodata": aef.NODATA,
               "transform": rasterio.transform.from_origin(WEST, NORTH, 10, 10),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               "interleave": "pixel", **options}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(q)
    with rasterio.open(path) as ds:
        assert tiff_blocks.layout(ds, path) is None
    raw = tile_io.read_window(path)
    assert raw is not None and np.array_equal(raw.q, np.moveaxis(q, 0, -1))


def test_a_sparse_block_reads_as_nodata_as_in_gdal(tmp_path: Path) -> None:
    path = str(tmp_path / "sparse.tif")
    profile = {"driver": "GTiff", "width": 512, "height": 256, "count": aef.N_BANDS,
               "dtype": "int8", "crs": "EPSG:32635", "nodata": aef.NODATA,
               "transform": rasterio.transform.from_origin(WEST, NORTH, 10, 10),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               "interleave": "pixel", "sparse_ok": True}
    with rasterio.open(path, "w", **profile) as ds:  # only the left block is written
        ds.write(smooth_q(256, 256, seed=2), window=Window(0, 0, 256, 256))
    with rasterio.open(path) as ds:
        layout = tiff_blocks.layout(ds, path)
    assert layout is not None and layout.offsets[0, 1] == 0
    got = layout.read(0, 0, 256, 512)
    assert np.array_equal(got, gdal_window(path, 0, 0, 256, 512))
    assert (got[:, 256:] == aef.NODATA).all()


def test_a_damaged_block_is_one_line(tile: str) -> None:
    with rasterio.open(tile) as ds:
        off = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    with open(tile, "r+b") as f:  # the middle of block (1, 1) overwritten
        f.seek(off + size // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(TilesError) as e:
        tile_io.read_window(tile, None)
    assert "cannot read tile" in str(e.value) and "\n" not in str(e.value)
