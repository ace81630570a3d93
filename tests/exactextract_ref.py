"""Shared by the zonal parity test and benchmark: exactextract on the same buffers.

exactextract runs on a north-up float32 GeoTIFF of the *de-quantised* tile (NaN nodata),
with each buffer as a finely segmented polygon, so both sides compute the same quantity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aether.io import tiles as tile_io

#: 256 segments per circle: polygon area within 1e-4 of the circle.
QUAD_SEGS = 64


def decoded_geotiff(tile_path: str, out: Path) -> Path:
    """Write a tile's de-quantised values as a north-up float32 GeoTIFF for exactextract."""
    import rasterio
    from rasterio.transform import Affine

    block = tile_io.read_block(tile_path)
    assert block is not None
    vals = block.values if block.dy < 0 else block.values[::-1]
    ymax = block.bounds()[3]
    with rasterio.open(tile_path) as src:
        crs = src.crs
    h, w, b = vals.shape
    with rasterio.open(out, "w", driver="GTiff", width=w, height=h, count=b, dtype="float32",
                       crs=crs, nodata=np.nan, tiled=True, blockxsize=256, blockysize=256,
                       transform=Affine(block.dx, 0, block.x0, 0, -abs(block.dy), ymax)) as ds:
        ds.write(np.ascontiguousarray(np.moveaxis(vals, -1, 0)))
    return out


def exactextract_means(raster: Path, x: np.ndarray, y: np.ndarray, radius: float,
                       crs: str) -> np.ndarray:
    """(P, 64) area-weighted means from exactextract, NaN where no valid pixel."""
    import geopandas as gpd
    from exactextract import exact_extract

    circles = gpd.GeoSeries(gpd.points_from_xy(x, y), crs=crs).buffer(radius, quad_segs=QUAD_SEGS)
    gdf = gpd.GeoDataFrame({"i": np.arange(len(x))}, geometry=circles)
    df = exact_extract(str(raster), gdf, "mean", output="pandas",
                       strategy="raster-sequential")
    cols = [c for c in df.columns if c.endswith("_mean") or c == "mean"]
    return df[cols].to_numpy(dtype=np.float64)


def ours_and_exactextract(emb: Any, pois: Any, tile: Any, raster: Path, radius: float
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(P, 64) float64 band means of ``pois`` (in their order) at ``radius``: aether's rows of
    ``emb``, and exactextract's over ``raster`` in the tile's crs."""
    from aether.core.aef import BANDS

    pts = pois.to_crs(tile.crs)
    ours = emb[emb.radius_m == radius].set_index("poi_id").loc[pois.poi_id, list(BANDS)]
    ref = exactextract_means(raster, pts.geometry.x.to_numpy(), pts.geometry.y.to_numpy(),
                             radius, tile.crs)
    return ours.to_numpy(np.float64), ref

