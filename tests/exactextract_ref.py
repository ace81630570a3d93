"""Shared by the zonal parity test and benchmark: exactextract on the same buffers.

exactextract runs on a north-up float32 GeoTIFF of the *de-quantised* tile (NaN nodata),
with each buffer as a finely segmented polygon, so both sides compute the same quantity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: 256 segments per circle: polygon area within 1e-4 of the circle.
QUAD_SEGS = 64


def decoded_geotiff(tile_path: str, out: Path) -> Path:
    """Write a tile's de-quantised values as a north-up float32 GeoTIFF for exactextract.

    Read with rasterio and decoded with plain numpy, nothing of aether's, so a reader or
    decoding bug in aether cannot pass on both sides: ``sign(q)·(q/127.5)²``, and a pixel
    whose value is -128 (nodata) in any band NaN in every band.
    """
    import rasterio
    from rasterio.transform import Affine

    with rasterio.open(tile_path) as src:
        q = src.read().astype(np.float64)  # (bands, rows, cols)
        t, crs, height = src.transform, src.crs, src.height
    vals = np.sign(q) * (q / 127.5) ** 2
    vals[:, (q == -128).any(axis=0)] = np.nan
    assert t.b == 0 and t.d == 0, "the tiles are axis-aligned"
    if t.e > 0:  # south-up: row 0 is the southern edge, so flip to north-up
        vals = vals[:, ::-1]
    ymax = max(t.f, t.f + t.e * height)
    with rasterio.open(out, "w", driver="GTiff", width=vals.shape[2], height=vals.shape[1],
                       count=vals.shape[0], dtype="float32", crs=crs, nodata=np.nan,
                       tiled=True, blockxsize=256, blockysize=256,
                       transform=Affine(t.a, 0, t.c, 0, -abs(t.e), ymax)) as ds:
        ds.write(np.ascontiguousarray(vals, dtype=np.float32))
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

