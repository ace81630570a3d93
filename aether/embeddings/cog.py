"""AlphaEarth COG tiles (a local directory or a URL with an ``aef_index.parquet``).

Only the windows that POI buffers touch are read; the work is a Dask graph of
(UTM zone × spatial POI group) tasks whose partial sums are added per POI.

What a pixel covered by two tiles means (docs/formats.md, "Overlapping tiles"): each buffer
is reduced in ONE crs, its POI's UTM zone (as the Earth Engine source's per-batch ``crs``),
on that zone's 10 m lattice, over the year's mosaic: tiles in index order, the last one with
data on top (Earth Engine's ``mosaic()``), tiles of the next zone warped in by nearest
neighbour. So duplicate index rows and overlapping tiles count each ground pixel once.
Grids are reduced in the place's crs the same way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aether.core import aef, windows, zonal
from aether.core import cells as grids
from aether.embeddings.base import SourceOptions, point_means_table
from aether.errors import CoverageError
from aether.execution import cluster
from aether.io import tiles as tile_io

if TYPE_CHECKING:
    import geopandas as gpd

    from aether.places.place import Place

#: POIs are grouped on a square grid of this size (m) so each task reads one small window.
GROUP_M = 4000.0
#: Grids read tiles in windows of at most this size (m): 256 × 256 pixels, 16 MiB decoded.
WINDOW_M = 2_560.0
#: The tiles a window reads, in index order: ``(path, crs)``.
TileList = list[tuple[str, str]]


@dataclass
class CogSource:
    """Buffer means and grids from AlphaEarth GeoTIFF tiles found through their index."""

    tiles: str
    name: str = "cog"

    def _tiles_for(self, year: int, bbox: tuple[float, float, float, float]) -> pd.DataFrame:
        """The year's index rows (in index order) whose footprint meets a lon/lat bbox."""
        index = tile_io.read_index(self.tiles)
        years = sorted(int(y) for y in index["year"].unique())
        in_year = index[index["year"] == year]
        if in_year.empty:
            raise CoverageError(f"no AlphaEarth tiles for year {year} in {self.tiles}",
                                f"years available: {', '.join(map(str, years)) or 'none'}")
        hit = in_year[_meets(in_year, bbox)]
        if hit.empty:
            w, s, e, n = bbox
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
        margin = max(map(windows.reach, radii)) / 111_000 * 2 + 1e-3
        tiles = self._tiles_for(year, (lon.min() - margin, lat.min() - margin,
                                       lon.max() + margin, lat.max() + margin))
        zone = aef.utm_epsgs(lon, lat)
        reach = max(map(windows.reach, radii)) + aef.PIXEL_SIZE_M
        tasks = []
        for epsg in np.unique(zone):
            crs = f"EPSG:{epsg}"
            in_zone = np.flatnonzero(zone == epsg)
            x, y = _project(lon[in_zone], lat[in_zone], crs)
            for group in _groups(x, y):
                bounds = (x[group].min() - reach, y[group].min() - reach,
                          x[group].max() + reach, y[group].max() + reach)
                under = _tiles_under(tiles, crs, bounds)
                if under:
                    tasks.append(dask.delayed(_group_sums)(
                        under, crs, bounds, in_zone[group], x[group], y[group], radii))
        return point_means_table(pois, radii, year, cluster.as_completed(tasks))

    def grid(self, place: Place, year: int, cell: str | float = 100.0) -> gpd.GeoDataFrame:
        """Area-weighted means over the cells of ``cell`` (``100m``, ``h3:9``; see ``grids``).

        One task per window of at most ``WINDOW_M`` in the place's crs: memory stays flat
        whatever the raster's size. Cells whose area has no valid pixel keep NaN vectors
        with valid_fraction 0.
        """
        import dask

        cells = grids.make_cells(place.boundary, place.crs, grids.parse_cell(cell), place.name)
        tiles = self._tiles_for(year, place.bbox)
        shared = dask.delayed(cells, pure=True)
        tasks = [dask.delayed(_window_grid_sums)(under, cells.crs, window, shared)
                 for window in _windows(cells.bounds())
                 for under in [_tiles_under(tiles, cells.crs, window)] if under]
        return cells.frame(grids.accumulate(len(cells), list(dask.compute(*tasks))))


def _meets(index: pd.DataFrame, bbox: tuple[float, float, float, float]) -> pd.Series:
    w, s, e, n = bbox
    return ((index.wgs84_west <= e) & (index.wgs84_east >= w)
            & (index.wgs84_south <= n) & (index.wgs84_north >= s))


def _tiles_under(tiles: pd.DataFrame, crs: str, bounds: tuple[float, float, float, float]
                 ) -> TileList:
    """The tiles (index order) that may hold pixels of a window given in ``crs``."""
    same = tiles["crs"] == crs
    xmin, ymin, xmax, ymax = bounds
    hit = same & (tiles.utm_west < xmax) & (tiles.utm_east > xmin) \
        & (tiles.utm_south < ymax) & (tiles.utm_north > ymin)
    if not same.all():
        from pyproj import Transformer

        lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform_bounds(
            xmin, ymin, xmax, ymax, densify_pts=21)
        hit |= ~same & _meets(tiles, lonlat)
    return list(zip(tiles["path"][hit].astype(str), tiles["crs"][hit].astype(str), strict=True))


def _project(lon: np.ndarray, lat: np.ndarray, crs: str) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = tr.transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def _groups(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Indices of POIs grouped on a square grid of GROUP_M."""
    if len(x) == 0:
        return []
    key = np.floor(x / GROUP_M) * 1e6 + np.floor(y / GROUP_M)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    return np.split(order, bounds)


def _group_sums(tiles: TileList, crs: str, bounds: tuple[float, float, float, float],
                idx: np.ndarray, x: np.ndarray, y: np.ndarray, radii: list[float]
                ) -> tuple[np.ndarray, list[zonal.Partial]]:
    """The mosaic under one POI group's buffers, and the partial sums of those buffers."""
    raw = tile_io.mosaic_window(tiles, crs, bounds)
    if raw is None:
        return idx, [zonal.Partial.zeros(len(idx), aef.N_BANDS) for _ in radii]
    block = tile_io.decode(raw)
    # float32, as the table folds them: a finished task waiting to be folded holds half
    parts = windows.radii_partial_sums(block, x, y, radii)
    return idx, [zonal.Partial(p.weighted_sum.astype(np.float32), p.valid_weight, p.n_bands)
                 for p in parts]


def _windows(bounds: tuple[float, float, float, float]) -> list[tuple[float, float, float, float]]:
    """Squares of at most WINDOW_M covering ``bounds``, cut on multiples of WINDOW_M (pixel
    edges of the 10 m lattice), so no pixel is read by two windows."""
    xs, ys = _cuts(bounds[0], bounds[2]), _cuts(bounds[1], bounds[3])
    return [(x0, y0, x1, y1) for x0, x1 in itertools.pairwise(xs)
            for y0, y1 in itertools.pairwise(ys)]


def _cuts(lo: float, hi: float) -> list[float]:
    """lo, the multiples of WINDOW_M strictly inside, hi."""
    k0 = np.floor(lo / WINDOW_M) + 1
    k1 = np.ceil(hi / WINDOW_M)
    return [lo, *(np.arange(k0, k1) * WINDOW_M).tolist(), hi]


def _window_grid_sums(tiles: TileList, crs: str, window: tuple[float, float, float, float],
                      cells: grids.Cells) -> tuple[np.ndarray, zonal.Partial]:
    """One window's contribution to the cells it touches."""
    raw = tile_io.mosaic_window(tiles, crs, window)
    if raw is None:
        return np.zeros(0, np.int64), zonal.Partial.zeros(0, aef.N_BANDS)
    return cells.sums(tile_io.decode(raw))


class CogOptions(SourceOptions):
    """Options of the ``cog`` source (``--tiles``)."""

    tiles: str | Path | None = None


def create(options: CogOptions, workdir: Path | None = None) -> CogSource:
    """Factory used by ``get_source('cog', tiles=...)``: without ``tiles``, ``AETHER_TILES``
    or else the public AEF index (``settings.DEFAULT_TILES``); COG reads need no work dir."""
    from aether.settings import tiles as default_tiles

    return CogSource(tiles=default_tiles(options.tiles))
