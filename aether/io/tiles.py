"""AlphaEarth GeoTIFF tiles and their index: every reader of the tiles (COG source, sample
city, emulator) goes through these, so the south-up and nodata traps are handled once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aether.core.aef import (
    BANDS,
    INDEX_COLUMNS,
    INDEX_NAME,
    N_BANDS,
    NODATA,
    PIXEL_SIZE_M,
    dequantize,
    utm_zone_label,
    valid_mask,
)
from aether.errors import TilesError
from aether.io.tables import atomic_path, write_parquet

if TYPE_CHECKING:
    import geopandas as gpd

    from aether.core.zonal import PixelBlock



def write_tile(
    path: str | os.PathLike[str],
    q_north_up: np.ndarray,
    crs: str,
    west: float,
    north: float,
    *,
    pixel_size: float = PIXEL_SIZE_M,
    south_up: bool = True,
) -> None:
    """Write int8 values ``(64, rows, cols)`` (row 0 = north) as an AlphaEarth GeoTIFF.

    Stored south-up by default, like the public COGs: origin bottom-left, positive y step.
    Written atomically (temp file, then rename).
    """
    import rasterio
    from rasterio.transform import Affine

    if q_north_up.dtype != np.int8 or q_north_up.shape[0] != N_BANDS:
        raise ValueError("expected int8 values shaped (64, rows, cols)")
    _, h, w = q_north_up.shape
    if south_up:
        data = q_north_up[:, ::-1, :]
        transform = Affine(pixel_size, 0, west, 0, pixel_size, north - h * pixel_size)
    else:
        data = q_north_up
        transform = Affine(pixel_size, 0, west, 0, -pixel_size, north)
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": N_BANDS, "dtype": "int8",
        "crs": crs, "transform": transform, "nodata": NODATA, "compress": "deflate",
        "tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "pixel",
    }
    if w < 256 or h < 256:
        profile.update(tiled=False)
        profile.pop("blockxsize")
        profile.pop("blockysize")
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as ds:
        ds.write(np.ascontiguousarray(data))
        ds.descriptions = BANDS


def tile_record(path: str | os.PathLike[str], year: int) -> dict[str, object]:
    """One ``aef_index`` row for a tile: its UTM and WGS84 bounds and footprint."""
    import rasterio
    from pyproj import Transformer
    from shapely.geometry import Polygon

    with rasterio.open(path) as ds:
        t, w, h = ds.transform, ds.width, ds.height
        crs = ds.crs.to_string()
    # from the transform, not ds.bounds: south-up files have a positive y step
    west, east = sorted((t.c, t.c + w * t.a))
    south, north = sorted((t.f, t.f + h * t.e))
    epsg = int(crs.split(":")[1])
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    xs = np.array([west, east, east, west])
    ys = np.array([south, south, north, north])
    lon, lat = tr.transform(xs, ys)
    return {
        "path": str(path), "crs": crs, "year": int(year), "utm_zone": utm_zone_label(epsg),
        "utm_west": west, "utm_south": south, "utm_east": east, "utm_north": north,
        "wgs84_west": float(min(lon)), "wgs84_south": float(min(lat)),
        "wgs84_east": float(max(lon)), "wgs84_north": float(max(lat)),
        "geometry": Polygon(zip(lon, lat, strict=True)),
    }


def write_index(records: list[dict[str, object]], root: str | os.PathLike[str]) -> Path:
    """Write ``aef_index.parquet`` in ``root``; tile paths are stored relative to it."""
    import geopandas as gpd

    root = Path(root)
    rows = [{**r, "path": os.path.relpath(str(r["path"]), root)} for r in records]
    gdf = gpd.GeoDataFrame(rows, columns=list(INDEX_COLUMNS), geometry="geometry", crs="EPSG:4326")
    return write_parquet(gdf, root / INDEX_NAME)


def read_index(location: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Read an AEF index from a directory, a local ``.parquet`` file, or a URL.

    Relative tile paths are resolved against the index's own location, so a copied tile
    directory keeps working.
    """
    import geopandas as gpd

    loc = str(location)
    is_url = "://" in loc
    if not is_url and Path(loc).is_dir():
        loc = str(Path(loc) / INDEX_NAME)
    if not is_url and not Path(loc).is_file():
        raise TilesError(
            f"no AlphaEarth index at {location}",
            f"point --tiles at a directory holding {INDEX_NAME} (`aether sample build` makes one)",
        )
    try:
        if is_url:
            import fsspec

            with fsspec.open(loc, "rb") as f:
                gdf = gpd.read_parquet(f)
        else:
            gdf = gpd.read_parquet(loc)
    except Exception as e:  # unreadable or not an index at all
        raise TilesError(f"cannot read AlphaEarth index {loc}: {e}", "re-create the index") from e
    missing = [c for c in INDEX_COLUMNS if c not in gdf.columns]
    if missing:
        raise TilesError(f"{loc} is not an AEF index (lacks {', '.join(missing)})",
                         f"use the public {INDEX_NAME} layout")
    _check_crs(gdf, loc)
    base = loc.rsplit("/", 1)[0]
    gdf["path"] = [
        p if "://" in p or os.path.isabs(p) else f"{base}/{p}" for p in gdf["path"].astype(str)
    ]
    return gdf


def _check_crs(index: gpd.GeoDataFrame, loc: str) -> None:
    """Every tile's ``crs`` must be one pyproj knows (a typo would fail mid-extraction)."""
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    for crs in index["crs"].astype(str).unique():
        try:
            CRS.from_user_input(crs)
        except CRSError:
            raise TilesError(f"{loc}: tile crs {crs!r} is not a valid CRS",
                             "fix the index's crs column (e.g. EPSG:32635)") from None


def read_block(
    path: str, bounds: tuple[float, float, float, float] | None = None
) -> PixelBlock | None:
    """Read the part of a tile that overlaps ``bounds`` (tile crs), decoded, band-last.

    The window comes from the file's own transform, so south-up and north-up files read
    the same; nodata is masked before de-quantisation. Returns None when nothing overlaps.
    """
    import rasterio
    from rasterio.windows import Window

    from aether.core.zonal import PixelBlock

    try:
        with rasterio.open(path) as ds:
            if ds.count != N_BANDS or ds.dtypes[0] != "int8":
                raise TilesError(f"{path} is not an AlphaEarth tile (64 int8 bands expected)",
                                 "check the tile directory")
            t = ds.transform
            if bounds is None:
                win = Window(0, 0, ds.width, ds.height)
            else:
                xmin, ymin, xmax, ymax = bounds
                cs = [(x - t.c) / t.a for x in (xmin, xmax)]
                rs = [(y - t.f) / t.e for y in (ymin, ymax)]
                c0, c1 = max(int(np.floor(min(cs))), 0), min(int(np.ceil(max(cs))), ds.width)
                r0, r1 = max(int(np.floor(min(rs))), 0), min(int(np.ceil(max(rs))), ds.height)
                if c0 >= c1 or r0 >= r1:
                    return None
                win = Window(c0, r0, c1 - c0, r1 - r0)
            q = ds.read(window=win)
            wt = ds.window_transform(win)
    except TilesError:
        raise
    except rasterio.errors.RasterioError as e:
        raise TilesError(f"cannot read tile {path}: {e}", "the file may be corrupt; re-download it"
                         ) from e
    values = np.moveaxis(dequantize(q), 0, -1)
    values[~valid_mask(q)] = np.nan
    return PixelBlock.from_transform(values, wt)
