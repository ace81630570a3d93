"""AlphaEarth COG tiles (a local directory or a URL with an ``aef_index.parquet``).

Only the windows that POI buffers touch are read; the work is a Dask graph of
(tile × spatial POI group) tasks whose partial sums are added per POI, so buffers spanning
two tiles or two UTM zones are exact.
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
from aether.embeddings.base import SourceOptions, point_means_table
from aether.errors import CoverageError
from aether.io import tiles as tile_io

if TYPE_CHECKING:
    import geopandas as gpd

    from aether.places.place import Place

#: POIs are grouped on a square grid of this size (m) so each task reads one small window.
GROUP_M = 2_000.0
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
        tasks = [
            dask.delayed(_tile_group_sums)(t.path, idx, x[idx], y[idx], radii)
            for t in tiles.itertuples()
            for x, y in [_project(lon, lat, t.crs)]
            for idx in _groups(x, y, t, max(radii))
        ]
        return point_means_table(pois, radii, year, dask.compute(*tasks))

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


def _groups(x: np.ndarray, y: np.ndarray, tile: object, radius: float) -> list[np.ndarray]:
    """Indices of POIs whose largest buffer touches the tile, grouped on a square grid."""
    near = np.flatnonzero(
        (x + radius >= tile.utm_west) & (x - radius <= tile.utm_east)
        & (y + radius >= tile.utm_south) & (y - radius <= tile.utm_north)
    )
    if len(near) == 0:
        return []
    key = np.floor(x[near] / GROUP_M) * 1e6 + np.floor(y[near] / GROUP_M)
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.diff(key[order])) + 1
    return np.split(near[order], bounds)


def _tile_group_sums(
    path: str, idx: np.ndarray, x: np.ndarray, y: np.ndarray, radii: list[float]
) -> tuple[np.ndarray, list[zonal.Partial]]:
    """Read one window of one tile and return the partial sums of its POIs' buffers."""
    r = max(radii) + aef.PIXEL_SIZE_M
    block = tile_io.read_block(path, (x.min() - r, y.min() - r, x.max() + r, y.max() + r))
    if block is None:
        return idx, [zonal.Partial.zeros(len(idx), aef.N_BANDS) for _ in radii]
    return idx, [zonal.partial_sums(block, x, y, rad) for rad in radii]


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


class CogOptions(SourceOptions):
    """Options of the ``cog`` source (``--tiles``)."""

    tiles: str | Path | None = None


def create(options: CogOptions, workdir: Path | None = None) -> CogSource:
    """Factory used by ``get_source('cog', tiles=...)`` (COG reads need no work directory)."""
    if options.tiles is None:
        from aether.errors import InputError

        raise InputError("the cog source needs --tiles DIR_OR_URL", "or use --offline")
    return CogSource(tiles=str(options.tiles))
