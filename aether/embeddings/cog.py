"""AlphaEarth COG tiles (a local directory or a URL with an ``aef_index.parquet``).

Only the blocks that POI buffers touch are read, each by one task: the work is a Dask graph
of (UTM zone × tile block) windows whose partial sums are added per POI as they finish
(``aether.embeddings.fold``), so memory stays bounded whatever the POI count.

What a pixel covered by two tiles means (docs/formats.md, "Overlapping tiles"): each buffer
is reduced in ONE crs, its POI's UTM zone (as the Earth Engine source's per-batch ``crs``),
on that zone's 10 m lattice, over the year's mosaic: tiles in index order, the last one with
data on top (Earth Engine's ``mosaic()``), tiles of the next zone warped in by nearest
neighbour. So duplicate index rows and overlapping tiles count each ground pixel once.
Grids are reduced in the place's crs the same way.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aether.core import aef, windows, zonal
from aether.core import cells as grids
from aether.embeddings.fold import WindowSums, point_means_table
from aether.embeddings.options import CogOptions
from aether.errors import CoverageError
from aether.execution import cluster
from aether.io import tiles as tile_io

if TYPE_CHECKING:
    import geopandas as gpd
    from dask.delayed import Delayed
    from pyproj import Transformer

    from aether.places.place import Place

#: Cells of POI windows, in pixels, where the tiles' blocks give no square grid.
CELL_PX = 256
#: At most this many POIs per window task: its sums are about 1 KB a POI.
TASK_POIS = 8192
#: The tiles a window reads, in index order: ``(path, crs)``.
TileList = list[tuple[str, str]]


@dataclass
class CogSource:
    """Buffer means and grids from AlphaEarth GeoTIFF tiles found through their index."""

    tiles: str
    name: str = "cog"

    @functools.cached_property
    def _index(self) -> pd.DataFrame:
        """The tile index, read once per source (a URL's is revalidated once, not per use)."""
        return tile_io.read_index(self.tiles)

    def _tiles_for(self, year: int, bbox: tuple[float, float, float, float]) -> _Footprints:
        """The year's tiles (in index order) whose footprint meets a lon/lat bbox."""
        index = self._index
        years = sorted(int(y) for y in index["year"].unique())
        in_year = index[index["year"] == year]
        if in_year.empty:
            raise CoverageError(f"no AlphaEarth tiles for year {year} in {self.tiles}",
                                f"years available: {', '.join(map(str, years)) or 'none'}")
        hit = in_year[_meets(in_year[list(_WGS84)].to_numpy(float), bbox)]
        if hit.empty:
            w, s, e, n = bbox
            raise CoverageError(
                f"no AlphaEarth tile for {year} covers {w:.4f},{s:.4f},{e:.4f},{n:.4f}",
                "check --tiles, or use a source that covers this place",
            )
        return _Footprints.of(hit)

    def latest_year(self) -> int | None:
        """The newest year the tile index holds."""
        years = self._index["year"]
        return int(years.max()) if len(years) else None

    def version(self, year: int, bbox: tuple[float, float, float, float]) -> dict[str, Any]:
        """The tiles the year's tables over bbox are read from: their names (the public
        layout puts the dataset version in them) and a checksum of their index rows. A
        year added to the index changes neither for the other years."""
        import hashlib

        used = self._tiles_for(year, bbox)
        names = [Path(str(p)).name for p in used.paths]  # not where the folder is
        rows = np.column_stack([names, used.crs, used.utm.astype(str)])
        labels = sorted({str(s) for s in used.synthetic if s})
        return {"tiles": sorted(names),
                "index_rows": hashlib.sha256("\n".join(map(",".join, rows)).encode())
                .hexdigest(),
                # a generated raster's label travels with its tables (real tiles: no key)
                **({"synthetic": "; ".join(labels)} if labels else {})}

    def point_means(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> pd.DataFrame:
        """Rows of the poi_embeddings contract for every POI × radius."""
        return point_means_table(pois, radii, year, self.point_sums(pois, radii, year))

    def point_sums(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> Iterator[WindowSums]:
        """The buffers' sums over every window they touch, as the windows finish.

        Windows are the cells of the tiles' own block grid (``_cell_grid``), clipped to the
        buffers inside: each stored block is read and inflated by one task only, so no
        block cache is needed, and a buffer cut by a cell edge adds up across cells. A cell
        with very many POIs is cut into strips of at most ``TASK_POIS`` (bounded memory).
        """
        import dask

        radii = [float(r) for r in radii]
        lon = pois.geometry.x.to_numpy()
        lat = pois.geometry.y.to_numpy()
        margin = max(map(windows.reach, radii)) / 111_000 * 2 + 1e-3
        tiles = self._tiles_for(year, (lon.min() - margin, lat.min() - margin,
                                       lon.max() + margin, lat.max() + margin))
        zone = aef.utm_epsgs(lon, lat)
        reach = max(map(windows.reach, radii)) + aef.PIXEL_SIZE_M
        tasks: list[Delayed] = []
        for epsg in np.unique(zone):
            crs = f"EPSG:{epsg}"
            in_zone = np.flatnonzero(zone == epsg)
            x, y = _project(lon[in_zone], lat[in_zone], crs)
            grid = _cell_grid(tiles, crs)
            for cell, members in _cells(x, y, reach, grid):
                for part in _strips(members, y):
                    bounds = (max(cell[0], x[part].min() - reach),
                              max(cell[1], y[part].min() - reach),
                              min(cell[2], x[part].max() + reach),
                              min(cell[3], y[part].max() + reach))
                    under = _tiles_under(tiles, crs, bounds)
                    if under:
                        tasks.append(dask.delayed(_window_sums)(
                            len(tasks), under, crs, _origin(grid), bounds, in_zone[part],
                            x[part], y[part], radii))
        return cluster.as_completed(tasks)

    def grid(self, place: Place, year: int, cell: str | float = 100.0) -> gpd.GeoDataFrame:
        """Area-weighted means over the cells of ``cell`` (``100m``, ``h3:9``; see ``grids``).

        One task per block of the tiles under the place (``_windows``), in the place's crs:
        memory stays flat whatever the raster's size. Cells whose area has no valid pixel
        keep NaN vectors with valid_fraction 0.
        """
        import dask

        cells = grids.make_cells(place.boundary, place.crs, grids.parse_cell(cell), place.name)
        tiles = self._tiles_for(year, place.bbox)
        shared = dask.delayed(cells, pure=True)
        grid = _cell_grid(tiles, cells.crs)
        tasks = [dask.delayed(_window_grid_sums)(under, cells.crs, _origin(grid), window, shared)
                 for window in _windows(cells.bounds(), grid)
                 for under in [_tiles_under(tiles, cells.crs, window)] if under]
        return cells.frame(grids.accumulate(len(cells), list(dask.compute(*tasks))))


#: The index's footprint columns: in lon/lat, and in each tile's own crs.
_WGS84 = ("wgs84_west", "wgs84_south", "wgs84_east", "wgs84_north")
_UTM = ("utm_west", "utm_south", "utm_east", "utm_north")


def _meets(wgs84: np.ndarray, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """Which footprints ``(n, 4)`` (west, south, east, north) meet a lon/lat bbox."""
    w, s, e, n = bbox
    return (wgs84[:, 0] <= e) & (wgs84[:, 2] >= w) & (wgs84[:, 1] <= n) & (wgs84[:, 3] >= s)


@dataclass(frozen=True)
class _Footprints:
    """The tiles' bounds as arrays, so finding the tiles under each of thousands of windows
    is a few numpy comparisons (pandas costs ~6 ms a look-up)."""

    paths: np.ndarray
    crs: np.ndarray
    utm: np.ndarray  # (n, 4) west, south, east, north in each tile's own crs
    wgs84: np.ndarray  # (n, 4) the same in lon/lat
    synthetic: np.ndarray  # (n,) a generated tile's label, else None

    @classmethod
    def of(cls, tiles: pd.DataFrame) -> _Footprints:
        labels = (tiles[aef.SYNTHETIC_COLUMN].to_numpy(object)
                  if aef.SYNTHETIC_COLUMN in tiles else np.full(len(tiles), None, object))
        return cls(tiles["path"].astype(str).to_numpy(), tiles["crs"].astype(str).to_numpy(),
                   tiles[list(_UTM)].to_numpy(float), tiles[list(_WGS84)].to_numpy(float),
                   labels)


def _tiles_under(tiles: _Footprints, crs: str, bounds: tuple[float, float, float, float]
                 ) -> TileList:
    """The tiles (index order) that may hold pixels of a window given in ``crs``."""
    same = tiles.crs == crs
    xmin, ymin, xmax, ymax = bounds
    b = tiles.utm
    hit = same & (b[:, 0] < xmax) & (b[:, 2] > xmin) & (b[:, 1] < ymax) & (b[:, 3] > ymin)
    if not same.all():
        lonlat = _to_lonlat(crs).transform_bounds(xmin, ymin, xmax, ymax, densify_pts=21)
        hit |= ~same & _meets(tiles.wgs84, lonlat)
    return list(zip(tiles.paths[hit].tolist(), tiles.crs[hit].tolist(), strict=True))


@functools.lru_cache(maxsize=16)
def _to_lonlat(crs: str) -> Transformer:
    from pyproj import Transformer

    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)


def _project(lon: np.ndarray, lat: np.ndarray, crs: str) -> tuple[np.ndarray, np.ndarray]:
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = tr.transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def _cell_grid(tiles: _Footprints, crs: str) -> tuple[float, float, float]:
    """(x origin, y origin, edge) in m of the cells POI windows are cut on: the block grid
    of the zone's first tile (square blocks; else 256 px squares from its corner), or
    CELL_PX squares from the origin when no tile is in this crs. The origin is on the
    tile's own pixel grid, as the mosaic is (``_origin``): cells never share a pixel."""
    same = np.flatnonzero(tiles.crs == crs)
    if len(same) == 0:
        return 0.0, 0.0, CELL_PX * aef.PIXEL_SIZE_M
    with tile_io.open_tile(str(tiles.paths[same[0]])) as ds:
        t = ds.transform
        bh, bw = ds.block_shapes[0]
    edge_px = bw if bw == bh and bw >= 64 else CELL_PX
    return float(t.c), float(t.f), edge_px * aef.PIXEL_SIZE_M


def _origin(grid: tuple[float, float, float]) -> tuple[float, float]:
    """The zone's 10 m pixel grid, as an origin within one pixel: (0, 0) for tiles whose
    pixel edges are whole multiples of 10 m (what Earth Engine's ``crs`` + ``scale`` gives),
    their own offset otherwise (the EE source then reduces on the images' grid too)."""
    px = aef.PIXEL_SIZE_M

    def within(v: float) -> float:
        o = v % px
        return 0.0 if min(o, px - o) < 1e-6 else o

    return within(grid[0]), within(grid[1])


def _cells(x: np.ndarray, y: np.ndarray, reach: float, grid: tuple[float, float, float]
           ) -> Iterator[tuple[tuple[float, float, float, float], np.ndarray]]:
    """(cell bounds, POIs whose buffers may reach it) for every cell of ``grid`` some buffer
    touches, in a fixed order (column, then row)."""
    gx, gy, edge = grid
    c0 = np.floor((x - reach - gx) / edge).astype(np.int64)
    c1 = np.floor((x + reach - gx) / edge).astype(np.int64)
    r0 = np.floor((y - reach - gy) / edge).astype(np.int64)
    r1 = np.floor((y + reach - gy) / edge).astype(np.int64)
    nc, nr = c1 - c0 + 1, r1 - r0 + 1
    count = nc * nr
    poi = np.repeat(np.arange(len(x)), count)
    k = np.arange(len(poi)) - np.repeat(np.cumsum(count) - count, count)
    col, row = c0[poi] + k // nr[poi], r0[poi] + k % nr[poi]
    order = np.lexsort((poi, row, col))
    poi, col, row = poi[order], col[order], row[order]
    cuts = np.flatnonzero((np.diff(col) != 0) | (np.diff(row) != 0)) + 1
    for members in np.split(np.arange(len(poi)), cuts):
        if len(members) == 0:
            continue
        c, r = int(col[members[0]]), int(row[members[0]])
        yield (gx + c * edge, gy + r * edge, gx + (c + 1) * edge, gy + (r + 1) * edge), \
            poi[members]


def _strips(members: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """A cell's POIs, cut by y into strips of at most TASK_POIS (each strip's task decodes
    and sums only the rows its buffers cover)."""
    if len(members) <= TASK_POIS:
        return [members]
    by_y = members[np.argsort(y[members], kind="stable")]
    return np.array_split(by_y, -(-len(members) // TASK_POIS))


def _window_sums(key: int, tiles: TileList, crs: str, origin: tuple[float, float],
                 bounds: tuple[float, float, float, float], idx: np.ndarray, x: np.ndarray,
                 y: np.ndarray, radii: list[float]) -> WindowSums:
    """The mosaic under one window, and the sums of the buffers' parts inside it."""
    raw = tile_io.mosaic_window(tiles, crs, bounds, origin)
    if raw is None:
        return key, idx, [zonal.Partial.zeros(len(idx), aef.N_BANDS) for _ in radii]
    block = tile_io.decode(raw)
    # float32, as the fold spools them: a finished task waiting to be folded holds half
    parts = windows.radii_partial_sums(block, x, y, radii)
    return key, idx, [zonal.Partial(p.weighted_sum.astype(np.float32), p.valid_weight, p.n_bands)
                      for p in parts]


def _windows(bounds: tuple[float, float, float, float], grid: tuple[float, float, float]
             ) -> list[tuple[float, float, float, float]]:
    """The cells of ``grid`` (the tiles' blocks, ``_cell_grid``) clipped to ``bounds``: no
    pixel is read by two windows, and each block is inflated by one."""
    gx, gy, edge = grid
    xs, ys = _cuts(bounds[0], bounds[2], gx, edge), _cuts(bounds[1], bounds[3], gy, edge)
    return [(x0, y0, x1, y1) for x0, x1 in itertools.pairwise(xs)
            for y0, y1 in itertools.pairwise(ys)]


def _cuts(lo: float, hi: float, origin: float, edge: float) -> list[float]:
    """lo, the cell edges strictly inside, hi."""
    k0 = np.floor((lo - origin) / edge) + 1
    k1 = np.ceil((hi - origin) / edge)
    return [lo, *(origin + np.arange(k0, k1) * edge).tolist(), hi]


def _window_grid_sums(tiles: TileList, crs: str, origin: tuple[float, float],
                      window: tuple[float, float, float, float], cells: grids.Cells
                      ) -> tuple[np.ndarray, zonal.Partial]:
    """One window's contribution to the cells it touches."""
    raw = tile_io.mosaic_window(tiles, crs, window, origin)
    if raw is None:
        return np.zeros(0, np.int64), zonal.Partial.zeros(0, aef.N_BANDS)
    return cells.sums(tile_io.decode(raw))


def create(options: CogOptions, workdir: Path | None = None) -> CogSource:
    """Factory used by ``get_source('cog', tiles=...)``: without ``tiles``, ``AETHER_TILES``
    or else the public AEF index (``settings.DEFAULT_TILES``); COG reads need no work dir."""
    from aether.settings import tiles as default_tiles

    return CogSource(tiles=default_tiles(options.tiles))
