"""One open dataset per tile for the process, read by one thread at a time, with a real
GDAL block cache behind it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import rasterio
from aef_tiles import smooth_q, write

from aether.io import tiles as tile_io


def test_one_dataset_per_tile_shared_by_threads_one_at_a_time(tmp_path: Path) -> None:
    path = str(write(tmp_path, "a", smooth_q(64, 64), "EPSG:32635", 385_000.0, 6_675_000.0)
               ["path"])
    got: list[object] = []
    entered = threading.Event()

    def other() -> None:
        with tile_io.open_tile(path) as ds:
            entered.set()
            got.append(ds)

    with tile_io.open_tile(path) as first:
        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(0.3)  # held here: the other thread waits for it
    t.join(5)
    assert got == [first]  # the same dataset (and its block cache), once released
    # a tile rewritten in place is opened afresh
    write(tmp_path, "a", smooth_q(64, 64, seed=9), "EPSG:32635", 385_000.0, 6_675_000.0)
    os.utime(path, ns=(1, 1))
    with tile_io.open_tile(path) as again:
        assert again is not first
    raw = tile_io.read_window(path)
    assert raw is not None and raw.q.shape == (64, 64, 64) and raw.q.flags.c_contiguous


def test_the_block_cache_holds_megabytes(monkeypatch) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with tile_io.gdal_env():
        # rasterio hands the value to GDALSetCacheMax64: bytes, so 256 would be 256 bytes
        assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) >= 64 * 2**20
