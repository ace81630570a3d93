"""AlphaEarth tiles as Earth Engine images, and reading any image onto a pixel grid.

Tiles are found and read only through ``aether.core.aef`` (``read_index`` / ``read_block``): one
image per tile per year, bands A00..A63, ``system:time_start/end`` from ``aef.year_range_ms``.
A grid that shares the tile's crs and pixel lattice is filled by slicing (exact pixels, as
the COG source sees them); any other grid is filled by nearest-neighbour warping, as EE does.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from aether.core import aef
from aether.io import tiles as tile_io
from aether.testing.emulator.values import Grid, Img


def _aligned(a: float, b: float, step: float) -> bool:
    k = (a - b) / step
    return abs(k - round(k)) < 1e-6


def paste(dst: np.ndarray, grid: Grid, block: object, block_crs: str) -> None:
    """Write the valid pixels of a ``zonal.PixelBlock`` into ``dst`` (H, W, B) on ``grid``.

    Later calls win where they hold data: that is EE's ``mosaic`` (last image on top).
    """
    vals, x0, y0, dx, dy = block.values, block.x0, block.y0, block.dx, block.dy  # type: ignore[attr-defined]
    a, b, c, d, e, f = grid.transform
    if dy > 0:  # south-up: flip to north-up
        vals, y0, dy = vals[::-1], y0 + dy * vals.shape[0], -dy
    same = (block_crs == grid.crs and b == 0 and d == 0 and abs(dx - a) < 1e-9
            and abs(dy - e) < 1e-9 and _aligned(x0, c, a) and _aligned(y0, f, e))
    if same:
        c0, r0 = round((x0 - c) / a), round((y0 - f) / e)
        h, w = vals.shape[:2]
        rs, re_ = max(r0, 0), min(r0 + h, grid.height)
        cs, ce = max(c0, 0), min(c0 + w, grid.width)
        if rs >= re_ or cs >= ce:
            return
        src = vals[rs - r0 : re_ - r0, cs - c0 : ce - c0]
        ok = ~np.isnan(src).any(axis=-1)
        dst[rs:re_, cs:ce][ok] = src[ok]
        return
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    warped = np.full((vals.shape[2], grid.height, grid.width), np.nan, dtype=np.float32)
    reproject(np.ascontiguousarray(np.moveaxis(vals, -1, 0)), warped,
              src_transform=Affine(dx, 0, x0, 0, dy, y0), src_crs=block_crs, src_nodata=np.nan,
              dst_transform=grid.affine, dst_crs=grid.crs, dst_nodata=np.nan,
              resampling=Resampling.nearest)
    warped = np.moveaxis(warped, 0, -1)
    ok = ~np.isnan(warped).any(axis=-1)
    dst[ok] = warped[ok]


def _grid_bounds_in(grid: Grid, crs: str) -> tuple[float, float, float, float]:
    b = grid.bounds()
    if crs == grid.crs:
        return b
    from rasterio.warp import transform_bounds

    return transform_bounds(grid.crs, crs, *b, densify_pts=21)


def tile_image(row: dict, collection_id: str) -> Img:
    """One index row as an EE image of the collection (lazy reader over ``tile_io.read_block``)."""
    path, crs, year = str(row["path"]), str(row["crs"]), int(row["year"])
    start, end = aef.year_range_ms(year)
    index = f"{Path(path).stem}_{year}"
    res = aef.PIXEL_SIZE_M
    native = Grid(crs, (res, 0.0, float(row["utm_west"]), 0.0, -res, float(row["utm_north"])),
                  round((row["utm_east"] - row["utm_west"]) / res),
                  round((row["utm_north"] - row["utm_south"]) / res))

    def read(grid: Grid) -> np.ndarray:
        out = np.full((grid.height, grid.width, aef.N_BANDS), np.nan, dtype=np.float32)
        xmin, ymin, xmax, ymax = _grid_bounds_in(grid, crs)
        pad = 0 if crs == grid.crs else res
        block = _read_block(path, (xmin - pad, ymin - pad, xmax + pad, ymax + pad))
        if block is not None:
            paste(out, grid, block, crs)
        return out

    props = {"system:index": index, "system:time_start": start, "system:time_end": end,
             "year": year, "utm_zone": str(row["utm_zone"])}
    return Img(list(aef.BANDS), read, props, f"{collection_id}/{index}", row["geometry"], native)


@lru_cache(maxsize=8)
def _read_block(path: str, bounds: tuple[float, float, float, float]) -> object:
    """Cached: paging and xee's one-band-per-request reads hit the same windows again."""
    return tile_io.read_block(path, bounds)


class Catalog:
    """The image collections the emulator serves, from one AEF tile index."""

    def __init__(self, tiles: str | os.PathLike[str] | None) -> None:
        """Reads the index now, so a wrong ``tiles`` fails at start-up, not at first request."""
        self._images: list[Img] = []
        if tiles is not None:
            index = tile_io.read_index(tiles)
            self._images = [tile_image(r, aef.COLLECTION_ID)
                            for r in index.sort_values(["year", "path"]).to_dict("records")]

    def collection(self, collection_id: str) -> list[Img]:
        return self._images if collection_id == aef.COLLECTION_ID else []

    def image(self, image_id: str) -> Img | None:
        coll = image_id.rsplit("/", 1)[0]
        return next((i for i in self.collection(coll) if i.id == image_id), None)
