"""One open dataset per tile per thread, with a real GDAL block cache behind it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import rasterio
from aef_tiles import smooth_q, write

from aether.io import tiles as tile_io


def test_one_dataset_per_tile_per_thread(tmp_path: Path) -> None:
    path = str(write(tmp_path, "a", smooth_q(64, 64), "EPSG:32635", 385_000.0, 6_675_000.0)
               ["path"])
    first = tile_io.open_tile(path)
    assert tile_io.open_tile(path) is first
    other: list[object] = []
    t = threading.Thread(target=lambda: other.append(tile_io.open_tile(path)))
    t.start()
    t.join()
    assert other[0] is not first  # datasets are not shared between threads
    # a tile rewritten in place is opened afresh
    write(tmp_path, "a", smooth_q(64, 64, seed=9), "EPSG:32635", 385_000.0, 6_675_000.0)
    os.utime(path, ns=(1, 1))
    assert tile_io.open_tile(path) is not first


def test_the_block_cache_holds_megabytes(monkeypatch) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with tile_io.gdal_env():
        # rasterio hands the value to GDALSetCacheMax64: bytes, so 256 would be 256 bytes
        assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) >= 64 * 2**20
