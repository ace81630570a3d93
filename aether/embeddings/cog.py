"""AlphaEarth COG tiles (a local directory or a URL with an ``aef_index.parquet``).

Only the windows that POI buffers touch are read. For POIs the work is a Dask graph of
(tile × block-aligned window) tasks: every compressed block is decoded once, and a buffer
that crosses windows, tiles or UTM zones is the sum of its partial sums, folded per POI as
tasks finish.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aether.core import aef, zonal
from aether.core import cells as grids
from aether.embeddings.base import point_means_table
from aether.errors import CoverageError
from aether.execution import cluster
from aether.io import tiles as tile_io

if TYPE_CHECKING:
    import geopandas as gpd

    from aether.places.place import Place

#: POI tasks read windows of this many pixels a side, aligned to the tile's blocks: no block
#: is decoded twice and no untouched block is read (a decoded window is 16 MiB).
WINDOW_PX = 256
#: Windows per task: a task opens its tile once for all of them.
WINDOWS_PER_TASK = 8
#: Grids read tiles in windows of at most this size (m): 256 × 256 pixels, 16 MiB decoded.
WINDOW_M = 2_560.0


@dataclass
class CogSource:
    """Buffer means and grids from AlphaEarth GeoTIFF tiles found through their index."""

    tiles: str
    name: str = "cog"

    def _tiles_for(self, year: int, bbox: tuple[float, float, float, float]) -> pd.DataFrame:
        index = tile_io.read_index(self.tiles)
        years = sorted(int(y) for y in index["year"].unique())
        in_year = index[index["year"] == year]
        if in_year.empty:
            raise CoverageError(f"no AlphaEarth tiles for year {year} in {self.tiles}",
                                f"years available: {', '.join(map(str, years)) or 'none'}")
        w, s, e, n = bbox
        hit = in_year[(in_year.wgs84_west <= e) & (in_year.wgs84_east >= w)
                      & (in_year.wgs84_south <= n) & (in_year.wgs84_north >= s)]
        if hit.empty:
            raise CoverageError(
                f"no AlphaEarth tile for {year} covers {w:.4f},{s:.4f},{e:.4f},{n:.4f}",
                "check --tiles, or use a source that covers this place",
            )
        return hit

    def point_means(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> pd.DataFrame:
        """Rows of the poi_embeddings contract for every POI × radius."""
        import dask

        radii = [float(r) for r in radii]
        lon = pois.geometry.x.to_numpy()
        lat = pois.geometry.y.to_numpy()
        margin = max(radii) / 111_000 * 2 + 1e-3
        tiles = self._tiles_for(year, (lon.min() - margin, lat.min() - margin,
                                       lon.max() + margin, lat.max() + margin))
        tasks = []
        for t in tiles.itertuples():
            x, y = _project(lon, lat, t.crs)
            work = [(window, idx, x[idx], y[idx])
                    for window, idx in _windows_of_pois(t.path, x, y, max(radii))]
            tasks += [dask.delayed(_windows_sums)(t.path, work[i : i + WINDOWS_PER_TASK], radii)
                      for i in range(0, len(work), WINDOWS_PER_TASK)]
        results = itertools.chain.from_iterable(cluster.as_completed(tasks))
        return point_means_table(pois, radii, year, results)

    def grid(self, place: Place, year: int, cell: str | float = 100.0) -> gpd.GeoDataFrame:
        """Area-weighted means over the cells of ``cell`` (``100m``, ``h3:9``; see ``grids``).

        One task per tile window of at most ``WINDOW_M``: memory stays flat whatever the
        raster's size. Cells whose area has no valid pixel keep NaN vectors with
        valid_fraction 0.
        """
        import dask

        cells = grids.make_cells(place.boundary, place.crs, grids.parse_cell(cell), place.name)
        tiles = self._tiles_for(year, place.bbox)
        shared = dask.delayed(cells, pure=True)
        tasks = [dask.delayed(_window_grid_sums)(t.path, t.crs, window, shared)
                 for t in tiles.itertuples() for window in _windows(t, cells)]
        return cells.frame(grids.accumulate(len(cells), list(dask.compute(*tasks))))


def _project(lon: np.ndarray, lat: np.ndarray, crs: str) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = tr.transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def _windows_of_pois(
    path: str, x: np.ndarray, y: np.ndarray, radius: float
) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(col_off, row_off, width, height) of each block-aligned window that buffers touch,
    with the indices of those POIs; a POI near a window's edge is in each window it touches.
    """
    with tile_io.open_tile(path) as ds:
        t, width, height = ds.transform, ds.width, ds.height
        bw, bh = ds.block_shapes[0][1], ds.block_shapes[0][0]
    # windows of whole blocks (the last ones cut by the tile's edge)
    wc, wr = max(WINDOW_PX // bw, 1) * bw, max(WINDOW_PX // bh, 1) * bh
    col, row = (x - t.c) / t.a, (y - t.f) / t.e
    pad_c, pad_r = radius / abs(t.a) + 1, radius / abs(t.e) + 1
    lo_c = np.floor(np.clip(col - pad_c, 0, width - 1) / wc).astype(np.int64)
    hi_c = np.floor(np.clip(col + pad_c, 0, width - 1) / wc).astype(np.int64)
    lo_r = np.floor(np.clip(row - pad_r, 0, height - 1) / wr).astype(np.int64)
    hi_r = np.floor(np.clip(row + pad_r, 0, height - 1) / wr).astype(np.int64)
    near = ((col + pad_c >= 0) & (col - pad_c <= width)
            & (row + pad_r >= 0) & (row - pad_r <= height))
    n_cols = (width + wc - 1) // wc
    keys, members = [], []
    for dc, dr in itertools.product(range(2), range(2)):  # a buffer is smaller than a window
        c, r = lo_c + dc, lo_r + dr
        hit = np.flatnonzero(near & (c <= hi_c) & (r <= hi_r))
        keys.append(r[hit] * n_cols + c[hit])
        members.append(hit)
    key, idx = np.concatenate(keys), np.concatenate(members)
    order = np.lexsort((idx, key))
    key, idx = key[order], idx[order]
    if len(key) == 0:
        return []
    cuts = np.flatnonzero(np.diff(key)) + 1
    out = []
    for k, group in zip(key[np.r_[0, cuts]], np.split(idx, cuts), strict=True):
        r, c = divmod(int(k), n_cols)
        c0, r0 = c * wc, r * wr
        out.append(((c0, r0, min(wc, width - c0), min(wr, height - r0)), group))
    return out


def _windows_sums(
    path: str, work: list[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray, np.ndarray]],
    radii: list[float],
) -> list[tuple[np.ndarray, list[zonal.Partial]]]:
    """Decode windows of one tile, opened once; each window's POI indices and partial sums
    (every radius)."""
    from rasterio.windows import Window

    out = []
    with tile_io.open_tile(path) as ds:
        for window, idx, x, y in work:
            block = tile_io.read_window(ds, Window(*window))
            out.append((idx, zonal.radii_partial_sums(block, x, y, radii)))
    return out


def _windows(tile: object, cells: grids.Cells) -> list[tuple[float, float, float, float]]:
    """The parts of a tile under the grid, cut into squares of at most WINDOW_M."""
    xmin, ymin, xmax, ymax = cells.bounds()
    if tile.crs != cells.crs:  # type: ignore[attr-defined]
        from pyproj import Transformer

        tr = Transformer.from_crs(cells.crs, tile.crs, always_xy=True)  # type: ignore[attr-defined]
        xmin, ymin, xmax, ymax = tr.transform_bounds(xmin, ymin, xmax, ymax)
    xmin, ymin = max(xmin, tile.utm_west), max(ymin, tile.utm_south)  # type: ignore[attr-defined]
    xmax, ymax = min(xmax, tile.utm_east), min(ymax, tile.utm_north)  # type: ignore[attr-defined]
    if xmin >= xmax or ymin >= ymax:
        return []
    xs = _cuts(xmin, xmax, tile.utm_west)  # type: ignore[attr-defined]
    ys = _cuts(ymin, ymax, tile.utm_south)  # type: ignore[attr-defined]
    return [(x0, y0, x1, y1) for x0, x1 in itertools.pairwise(xs)
            for y0, y1 in itertools.pairwise(ys)]


def _cuts(lo: float, hi: float, origin: float) -> list[float]:
    """lo, the multiples of WINDOW_M from the tile's (pixel-aligned) origin inside, hi.

    Inner cuts fall on pixel edges, so no pixel is read by two windows.
    """
    k0 = np.floor((lo - origin) / WINDOW_M) + 1
    k1 = np.ceil((hi - origin) / WINDOW_M)
    return [lo, *(origin + np.arange(k0, k1) * WINDOW_M).tolist(), hi]


def _window_grid_sums(path: str, tile_crs: str, window: tuple[float, float, float, float],
                      cells: grids.Cells) -> tuple[np.ndarray, zonal.Partial]:
    """One tile window's contribution to the cells it touches."""
    block = tile_io.read_block(path, window)
    if block is None:
        return np.zeros(0, np.int64), zonal.Partial.zeros(0, aef.N_BANDS)
    return cells.sums(block, tile_crs)


def create(*, tiles: str | Path, workdir: Path | None = None, **_: object) -> CogSource:
    """Factory used by ``get_source('cog', tiles=...)``."""
    if tiles is None:
        from aether.errors import InputError

        raise InputError("the cog source needs --tiles DIR_OR_URL", "or use --offline")
    return CogSource(tiles=str(tiles))
