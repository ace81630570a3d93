"""AlphaEarth tiles as Earth Engine images, and reading any image onto a pixel grid.

The emulator decodes tiles itself (rasterio and the documented formula of the AlphaEarth
COG README: ``sign(q) * (q / 127.5) ** 2``, ``-128`` = no data), not through aether's
``io.tiles``/``core.aef``, so a decoding bug there shows up as an EE-vs-COG difference. One
image per tile per year, bands A00..A63, ``system:time_start/end`` the year's bounds. A grid
that shares the tile's crs and pixel lattice is filled by slicing (exact pixels); any other
grid by nearest-neighbour warping, as EE resamples by default.
"""

from __future__ import annotations

import datetime as dt
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from aether.errors import InputError
from aether.testing.emulator.values import Grid, Img

COLLECTION_ID = "GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL"
BANDS: tuple[str, ...] = tuple(f"A{i:02d}" for i in range(64))
NODATA = -128
INDEX_FILE = "aef_index.parquet"
Affine6 = tuple[float, float, float, float, float, float]


def decode(q: np.ndarray) -> np.ndarray:
    """int8 AlphaEarth values as float32 (NaN where the value is the nodata -128)."""
    v = q.astype(np.float64)
    out = np.sign(v) * (v / 127.5) ** 2
    out[q == NODATA] = np.nan
    return out.astype(np.float32)


def _aligned(a: float, b: float, step: float) -> bool:
    k = (a - b) / step
    return abs(k - round(k)) < 1e-6


def paste(dst: np.ndarray, grid: Grid, vals: np.ndarray, t: Affine6, src_crs: str) -> None:
    """Write the valid pixels of north-up ``vals`` (h, w, B) on affine ``t`` into ``dst``.

    Later calls win where they hold data: that is EE's ``mosaic`` (last image on top).
    """
    dx, _, x0, _, dy, y0 = t
    a, b, c, d, e, f = grid.transform
    same = (src_crs == grid.crs and b == 0 and d == 0 and abs(dx - a) < 1e-9
            and abs(dy - e) < 1e-9 and _aligned(x0, c, a) and _aligned(y0, f, e))
    if same:
        c0, r0 = round((x0 - c) / a), round((y0 - f) / e)
        h, w = vals.shape[:2]
        rs, re_ = max(r0, 0), min(r0 + h, grid.height)
        cs, ce = max(c0, 0), min(c0 + w, grid.width)
        if rs >= re_ or cs >= ce:
            return
        src = vals[rs - r0 : re_ - r0, cs - c0 : ce - c0]
        ok = ~np.isnan(src)
        dst[rs:re_, cs:ce][ok] = src[ok]
        return
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    warped = np.full((vals.shape[2], grid.height, grid.width), np.nan, dtype=np.float32)
    reproject(np.ascontiguousarray(np.moveaxis(vals, -1, 0)), warped,
              src_transform=Affine(*t), src_crs=src_crs, src_nodata=np.nan,
              dst_transform=grid.affine, dst_crs=grid.crs, dst_nodata=np.nan,
              resampling=Resampling.nearest)
    warped = np.moveaxis(warped, 0, -1)
    ok = ~np.isnan(warped)
    dst[ok] = warped[ok]


def _grid_bounds_in(grid: Grid, crs: str) -> tuple[float, float, float, float]:
    b = grid.bounds()
    if crs == grid.crs:
        return b
    from rasterio.warp import transform_bounds

    return transform_bounds(grid.crs, crs, *b, densify_pts=21)


@lru_cache(maxsize=8)
def read_window(path: str, bounds: tuple[float, float, float, float]
                ) -> tuple[np.ndarray, Affine6] | None:
    """Decoded north-up (h, w, 64) values of a tile inside ``bounds`` (tile crs), or None.

    Cached: paging and xee's one-band-per-request reads hit the same windows again.
    """
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as ds:
        t = ds.transform
        xs = [(x - t.c) / t.a for x in (bounds[0], bounds[2])]
        ys = [(y - t.f) / t.e for y in (bounds[1], bounds[3])]
        c0, c1 = max(int(np.floor(min(xs))), 0), min(int(np.ceil(max(xs))), ds.width)
        r0, r1 = max(int(np.floor(min(ys))), 0), min(int(np.ceil(max(ys))), ds.height)
        if c0 >= c1 or r0 >= r1:
            return None
        win = Window(c0, r0, c1 - c0, r1 - r0)
        q = ds.read(window=win)
        wt = ds.window_transform(win)
    vals = np.moveaxis(decode(q), 0, -1)
    if wt.e > 0:  # stored south-up (as the public COGs are): flip to north-up
        return vals[::-1].copy(), (wt.a, 0.0, wt.c, 0.0, -wt.e, wt.f + wt.e * vals.shape[0])
    return vals, (wt.a, 0.0, wt.c, 0.0, wt.e, wt.f)


def _native_grid(path: str) -> tuple[Grid, Any]:
    """The tile's own north-up grid, and its lon/lat footprint."""
    import rasterio
    from shapely.geometry import box

    from aether.testing.emulator.geometry import reproject

    with rasterio.open(path) as ds:
        if ds.count != len(BANDS) or ds.dtypes[0] != "int8":
            raise InputError(f"{path} is not an AlphaEarth tile (64 int8 bands expected)",
                             "check the tile directory given to the emulator")
        crs, b, res = ds.crs.to_string(), ds.bounds, abs(ds.transform.a)
        grid = Grid(crs, (res, 0.0, b.left, 0.0, -res, b.top), ds.width, ds.height)
    return grid, reproject(box(*b).segmentize(res * 64), crs, "EPSG:4326")


def _year_ms(year: int) -> tuple[int, int]:
    start = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def tile_image(path: str, year: int, utm_zone: str) -> Img:
    """One tile of one year as an EE image of the collection (a lazy, cached reader)."""
    native, footprint = _native_grid(path)
    crs, res = native.crs, native.transform[0]
    start, end = _year_ms(year)
    index = f"{Path(path).stem}_{year}"

    def read(grid: Grid) -> np.ndarray:
        out = np.full((grid.height, grid.width, len(BANDS)), np.nan, dtype=np.float32)
        xmin, ymin, xmax, ymax = _grid_bounds_in(grid, crs)
        pad = 0 if crs == grid.crs else res
        hit = read_window(path, (xmin - pad, ymin - pad, xmax + pad, ymax + pad))
        if hit is not None:
            paste(out, grid, hit[0], hit[1], crs)
        return out

    # an asset's version changes when it is rewritten: here, the tile file's mtime (µs)
    version = Path(path).stat().st_mtime_ns // 1000 if Path(path).is_file() else 0
    props = {"system:index": index, "system:time_start": start, "system:time_end": end,
             "system:version": version, "year": year, "utm_zone": utm_zone}
    return Img(list(BANDS), read, props, f"{COLLECTION_ID}/{index}", footprint, native)


def _index_rows(tiles: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """(path, year, utm_zone) of each tile of an ``aef_index.parquet`` (a dir or the file)."""
    import pandas as pd

    loc = Path(tiles)
    if loc.is_dir():
        loc = loc / INDEX_FILE
    if not loc.is_file():
        raise InputError(f"no AlphaEarth index at {tiles}",
                         f"point --tiles at a directory holding {INDEX_FILE}")
    df = pd.read_parquet(loc, columns=["path", "year", "utm_zone"])
    rows = []
    for r in df.to_dict("records"):
        p = Path(str(r["path"]))
        rows.append({"path": str(p if p.is_absolute() else loc.parent / p),
                     "year": int(r["year"]), "utm_zone": str(r["utm_zone"])})
    return sorted(rows, key=lambda r: (r["year"], r["path"]))


class Catalog:
    """The image collections the emulator serves, from one AEF tile index."""

    def __init__(self, tiles: str | os.PathLike[str] | None) -> None:
        """Reads the index now, so a wrong ``tiles`` fails at start-up, not at first request."""
        self._images: list[Img] = []
        if tiles is not None:
            self._images = [tile_image(r["path"], r["year"], r["utm_zone"])
                            for r in _index_rows(tiles)]

    def collection(self, collection_id: str) -> list[Img]:
        return self._images if collection_id == COLLECTION_ID else []

    def image(self, image_id: str) -> Img | None:
        coll = image_id.rsplit("/", 1)[0]
        return next((i for i in self.collection(coll) if i.id == image_id), None)
