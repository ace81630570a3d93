"""AlphaEarth COG tiles (a local directory or a URL with an ``aef_index.parquet``).

Only the windows that POI buffers touch are read; the work is a Dask graph of
(tile × spatial POI group) tasks whose partial sums are added per POI, so buffers spanning
two tiles or two UTM zones are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from aether import aef, zonal
from aether.errors import CoverageError
from aether.tables import poi_embeddings_frame

if TYPE_CHECKING:
    import geopandas as gpd

    from aether.places import Place

#: POIs are grouped on a square grid of this size (m) so each task reads one small window.
GROUP_M = 2_000.0


@dataclass
class CogSource:
    """Buffer means and grids from AlphaEarth GeoTIFF tiles found through their index."""

    tiles: str
    name: str = "cog"

    def _tiles_for(self, year: int, bbox: tuple[float, float, float, float]) -> pd.DataFrame:
        index = aef.read_index(self.tiles)
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
        n, nb = len(pois), aef.N_BANDS
        totals = [zonal.Partial.zeros(n, nb) for _ in radii]
        for idx, parts in dask.compute(*tasks):
            for total, part in zip(totals, parts, strict=True):
                total.weighted_sum[idx] += part.weighted_sum
                total.valid_weight[idx] += part.valid_weight
        ids = pois["poi_id"].astype(str).tolist()
        frames = []
        for r, total in zip(radii, totals, strict=True):
            m = zonal.finalize(total, r, aef.PIXEL_SIZE_M**2)
            frames.append(poi_embeddings_frame(ids, year, r, m.mean, m.weight,
                                               m.valid_fraction, m.norm))
        return pd.concat(frames, ignore_index=True)

    def grid(self, place: Place, year: int, cell_m: float = 100.0) -> gpd.GeoDataFrame:
        """Area-weighted means over square cells of ``cell_m`` in the place's UTM crs.

        Cells are aligned to multiples of ``cell_m`` and cover the place's bounding box;
        cells whose area has no valid pixel keep NaN vectors with valid_fraction 0.
        """
        import dask
        import geopandas as gpd
        from shapely import box

        w, s, e, n = place.bbox
        tiles = self._tiles_for(year, (w, s, e, n))
        g = gpd.GeoSeries([place.boundary], crs="EPSG:4326").to_crs(place.crs)
        xmin, ymin, xmax, ymax = g.total_bounds
        x_edges = np.arange(np.floor(xmin / cell_m), np.ceil(xmax / cell_m) + 1) * cell_m
        y_edges = np.arange(np.ceil(ymax / cell_m), np.floor(ymin / cell_m) - 1, -1) * cell_m
        tasks = [dask.delayed(_tile_grid_sums)(t.path, t.crs, place.crs, x_edges, y_edges)
                 for t in tiles.itertuples()]
        total = zonal.Partial.zeros((len(x_edges) - 1) * (len(y_edges) - 1), aef.N_BANDS)
        for part in dask.compute(*tasks):
            total = total.add(part)
        m = zonal.finalize_area(total, cell_m * cell_m / aef.PIXEL_SIZE_M**2)
        xc = (x_edges[:-1] + x_edges[1:]) / 2
        yc = (y_edges[:-1] + y_edges[1:]) / 2
        xx, yy = np.meshgrid(xc, yc)
        df = pd.DataFrame(m.mean, columns=list(aef.BANDS))
        df.insert(0, "cell_id", [f"{int(a)}_{int(b)}" for a, b in zip(xx.ravel(), yy.ravel(),
                                                                     strict=True)])
        df["weight"] = m.weight.astype(np.float32)
        df["valid_fraction"] = m.valid_fraction.astype(np.float32)
        df["norm"] = m.norm.astype(np.float32)
        df["x"], df["y"] = xx.ravel(), yy.ravel()
        half = cell_m / 2
        geom = gpd.GeoSeries(box(df.x - half, df.y - half, df.x + half, df.y + half),
                             crs=place.crs).to_crs("EPSG:4326")
        return gpd.GeoDataFrame(df, geometry=geom.values, crs="EPSG:4326")


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
    block = aef.read_block(path, (x.min() - r, y.min() - r, x.max() + r, y.max() + r))
    if block is None:
        return idx, [zonal.Partial.zeros(len(idx), aef.N_BANDS) for _ in radii]
    return idx, [zonal.partial_sums(block, x, y, rad) for rad in radii]


def _tile_grid_sums(
    path: str, tile_crs: str, grid_crs: str, x_edges: np.ndarray, y_edges: np.ndarray
) -> zonal.Partial:
    """One tile's contribution to every grid cell.

    A tile in another UTM zone than the grid is read over the grid's extent and its cells
    are taken as squares around their projected centres (exact in the grid's own zone,
    within the small rotation between neighbouring zones otherwise).
    """
    if tile_crs == grid_crs:
        bounds = (x_edges[0], y_edges[-1], x_edges[-1], y_edges[0])
        block = aef.read_block(path, bounds)
        n = (len(x_edges) - 1) * (len(y_edges) - 1)
        if block is None:
            return zonal.Partial.zeros(n, aef.N_BANDS)
        return zonal.grid_partial_sums(block, x_edges, y_edges)
    from pyproj import Transformer

    tr = Transformer.from_crs(grid_crs, tile_crs, always_xy=True)
    xc, yc = np.meshgrid((x_edges[:-1] + x_edges[1:]) / 2, (y_edges[:-1] + y_edges[1:]) / 2)
    tx, ty = tr.transform(xc.ravel(), yc.ravel())
    half = abs(x_edges[1] - x_edges[0]) / 2
    block = aef.read_block(path, (min(tx) - half, min(ty) - half, max(tx) + half, max(ty) + half))
    total = zonal.Partial.zeros(len(tx), aef.N_BANDS)
    if block is None:
        return total
    for i, (cx, cy) in enumerate(zip(tx, ty, strict=True)):
        e = [cx - half, cx + half]
        part = zonal.grid_partial_sums(block, np.array(e), np.array([cy + half, cy - half]))
        total.weighted_sum[i] = part.weighted_sum[0]
        total.valid_weight[i] = part.valid_weight[0]
    return total


def create(*, tiles: str | Path, workdir: Path | None = None, **_: object) -> CogSource:
    """Factory used by ``get_source('cog', tiles=...)``."""
    if tiles is None:
        from aether.errors import InputError

        raise InputError("the cog source needs --tiles DIR_OR_URL", "or use --offline")
    return CogSource(tiles=str(tiles))
