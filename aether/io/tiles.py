"""AlphaEarth GeoTIFF tiles and their index: every reader of the tiles (COG source, sample
city, emulator) goes through these, so the south-up and nodata traps are handled once.

Tiles may be local files or URLs (``https://``, ``s3://``, ``gs://``): GDAL reads remote COGs
by HTTP range requests (``/vsicurl/``), fetching only the blocks a window touches, with the
settings in ``GDAL_COG_ENV``. The process keeps its open datasets (``open_tile``), so GDAL's
block cache survives from one window of a tile to the next. Local DEFLATE tiles have their
blocks inflated by libdeflate instead (``io.tiff_blocks``: twice as fast, the same bytes).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aether.core.aef import (
    BANDS,
    INDEX_COLUMNS,
    INDEX_NAME,
    N_BANDS,
    NODATA,
    PIXEL_SIZE_M,
    SYNTHETIC_COLUMN,
    SYNTHETIC_TAG,
    utm_zone_label,
    valid_mask,
)
from aether.errors import TilesError
from aether.io import tiff_blocks
from aether.io.index_cache import USER_AGENT
from aether.io.tables import atomic_path, sha256_file, write_parquet

if TYPE_CHECKING:
    import geopandas as gpd
    from affine import Affine
    from rasterio.io import DatasetReader

    from aether.core.zonal import PixelBlock

log = logging.getLogger(__name__)

#: GDAL settings for reading COGs over HTTP; a variable set in the environment wins.
GDAL_COG_ENV: dict[str, str | int] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing per open
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    # bytes (rasterio passes it to GDALSetCacheMax64): windows follow the blocks, so a
    # block is inflated once; the cache only bridges the strips of a crowded cell
    "GDAL_CACHEMAX": 64 * 2**20,
    # no VSI_CACHE: /vsicurl/ keeps fetched ranges itself (CPL_VSIL_CURL_CACHE_SIZE), and
    # for local files it would copy the page cache, 32 MB per open tile
    "GDAL_HTTP_USERAGENT": USER_AGENT,
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",  # on 429 / 5xx, with a growing delay
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
}
#: Open datasets kept by the process; a city touches a handful of 8192² tiles.
OPEN_TILES = 32
#: The public index names its tiles by S3 URL; the same objects are served over HTTPS.
_MIRROR_S3 = "s3://us-west-2.opendata.source.coop/"
_MIRROR_HTTPS = "https://data.source.coop/"
#: Open datasets of the process, most recently used last, each with the lock its reader holds.
_Open = tuple["DatasetReader", threading.Lock, tiff_blocks.BlockLayout | None]
_open: OrderedDict[tuple[str, int, int], _Open] = OrderedDict()
_open_lock = threading.Lock()


def write_tile(
    path: str | os.PathLike[str],
    q_north_up: np.ndarray,
    crs: str,
    west: float,
    north: float,
    *,
    pixel_size: float = PIXEL_SIZE_M,
    south_up: bool = True,
    synthetic: str | None = None,
) -> None:
    """Write int8 values ``(64, rows, cols)`` (row 0 = north) as an AlphaEarth GeoTIFF.

    Stored south-up by default, like the public COGs: origin bottom-left, positive y step.
    Written atomically (temp file, then rename). ``synthetic`` (what made a generated raster)
    goes into the file's metadata, where ``tile_record`` finds it again.
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
        if synthetic:
            ds.update_tags(**{SYNTHETIC_TAG: synthetic})


def tile_record(path: str | os.PathLike[str], year: int) -> dict[str, object]:
    """One ``aef_index`` row for a tile: its UTM and WGS84 bounds and footprint, and the
    generated raster's label where the file carries one."""
    import rasterio
    from pyproj import Transformer
    from shapely.geometry import Polygon

    with rasterio.open(path) as ds:
        t, w, h = ds.transform, ds.width, ds.height
        crs = ds.crs.to_string()
        synthetic = ds.tags().get(SYNTHETIC_TAG)
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
        **({SYNTHETIC_COLUMN: synthetic} if synthetic else {}),
    }


def write_index(records: list[dict[str, object]], root: str | os.PathLike[str]) -> Path:
    """Write ``aef_index.parquet`` in ``root``; tile paths are stored relative to it. The
    ``synthetic`` column is there only when some tile is generated (the public index lacks it)."""
    import geopandas as gpd

    root = Path(root)
    rows = [{**r, "path": os.path.relpath(str(r["path"]), root)} for r in records]
    extra = [SYNTHETIC_COLUMN] if any(r.get(SYNTHETIC_COLUMN) for r in records) else []
    gdf = gpd.GeoDataFrame(rows, columns=[*INDEX_COLUMNS, *extra], geometry="geometry",
                           crs="EPSG:4326")
    return write_parquet(gdf, root / INDEX_NAME)


def gdal_options() -> dict[str, str | int]:
    """``GDAL_COG_ENV`` less what the environment sets (GDAL reads those itself)."""
    return {k: v for k, v in GDAL_COG_ENV.items() if k not in os.environ}


@contextmanager
def gdal_env() -> Iterator[None]:
    """The COG-friendly GDAL settings, for opening and reading tiles."""
    import rasterio

    with rasterio.Env(**gdal_options()):
        yield


def _is_url(loc: str) -> bool:
    return "://" in loc


def index_location(location: str | os.PathLike[str]) -> str:
    """Where the index file of ``location`` is: a directory (or URL not naming a
    ``.parquet``) stands for its ``aef_index.parquet``."""
    loc = str(location)
    if _is_url(loc):
        return loc if loc.split("?")[0].endswith(".parquet") else f"{loc.rstrip('/')}/{INDEX_NAME}"
    return str(Path(loc) / INDEX_NAME) if Path(loc).is_dir() else loc


def _local_index(loc: str, location: object) -> str:
    """A local path to read the index at ``loc`` from (HTTP(S) indexes via the disk cache)."""
    if loc.startswith(("http://", "https://")):
        from aether.io.index_cache import cached_index
        from aether.settings import cache_dir

        return str(cached_index(loc, cache_dir() / "index"))
    if _is_url(loc):
        return loc  # s3:// gs:// ...: read by fsspec when its backend is installed
    if not Path(loc).is_file():
        raise TilesError(
            f"no AlphaEarth index at {location}",
            f"point --tiles at a directory holding {INDEX_NAME} (`aether sample build` makes one)",
        )
    return loc


def index_sha256(location: str | os.PathLike[str]) -> str | None:
    """Checksum of the tile index a city was extracted from (an HTTP(S) index: the copy its
    extraction just read, asked of no server; None for an s3:// or gs:// index, which is not
    copied here)."""
    loc = index_location(location)
    if loc.startswith(("http://", "https://")):
        from aether.io.index_cache import cached_copy
        from aether.settings import cache_dir

        src = cached_copy(loc, cache_dir() / "index")
        return None if src is None else sha256_file(src)
    return None if _is_url(loc) or not Path(loc).is_file() else sha256_file(loc)


def read_index(location: str | os.PathLike[str]) -> gpd.GeoDataFrame:
    """Read an AEF index from a directory, a local ``.parquet`` file, or a URL.

    Relative tile paths are resolved against the index's own location, so a copied tile
    directory (or a mirror of the public layout) keeps working. Rows naming the same tile
    twice are kept once (the first), so no pixel is counted twice.
    """
    import geopandas as gpd

    loc = index_location(location)
    src = _local_index(loc, location)
    try:
        if _is_url(src):
            import fsspec

            with fsspec.open(src, "rb") as f:
                gdf = gpd.read_parquet(f)
        else:
            gdf = gpd.read_parquet(src)
    except ImportError as e:  # fsspec without the s3fs / gcsfs backend
        raise TilesError(f"cannot read {loc}: {' '.join(str(e).split())}",
                         "use the HTTPS mirror (the default) or a local copy of the index"
                         ) from None
    except Exception as e:  # unreadable or not an index at all
        hint = ("check that it is an aef_index.parquet (GeoParquet)" if src == loc else
                f"the server's file or its cached copy is damaged: delete {src} and run again")
        raise TilesError(f"cannot read AlphaEarth index {loc}: {' '.join(str(e).split())}",
                         hint) from e
    missing = [c for c in INDEX_COLUMNS if c not in gdf.columns]
    if missing:
        raise TilesError(f"{loc} is not an AEF index (lacks {', '.join(missing)})",
                         f"use the public {INDEX_NAME} layout")
    _check_crs(gdf, loc)
    base = loc.rsplit("/", 1)[0]
    gdf["path"] = [resolve_tile_path(p, base) for p in gdf["path"].astype(str)]
    n = len(gdf)
    gdf = gdf.drop_duplicates(subset=["path", "year"], keep="first").reset_index(drop=True)
    if len(gdf) < n:
        log.warning("%s lists %d tile(s) twice: each is read once", loc, n - len(gdf))
    return gdf


def resolve_tile_path(path: str, base: str) -> str:
    """A tile path of an index as something GDAL opens: relative paths join the index's
    location; the mirror's ``s3://`` names become its public HTTPS URLs."""
    if path.startswith(_MIRROR_S3):
        return _MIRROR_HTTPS + path[len(_MIRROR_S3):]
    if _is_url(path) or os.path.isabs(path):
        return path
    return f"{base}/{path}"


def _tile_key(path: str) -> tuple[str, int, int]:
    """Cache key of an open tile: a local file rewritten in place is opened afresh."""
    if _is_url(path):
        return path, 0, 0
    try:
        st = os.stat(path)
    except OSError:
        return path, -1, -1
    return path, st.st_mtime_ns, st.st_size


def _read_error(path: str, e: Exception) -> TilesError:
    msg = " ".join(str(e).split())
    if _is_url(path):
        return TilesError(f"cannot read tile {path}: {msg}",
                          "check that the tile server is up and serves the index's files")
    return TilesError(f"cannot read tile {path}: {msg}", "the file may be corrupt; re-download it")


@contextmanager
def open_tile(path: str) -> Iterator[DatasetReader]:
    """The process's open dataset for a tile (opened once, checked once), held by this
    thread for the block: GDAL's block cache is per dataset, so threads that shared none
    would each inflate the blocks their neighbouring windows share."""
    with _held(path) as (ds, _):
        yield ds


@contextmanager
def _held(path: str) -> Iterator[tuple[DatasetReader, tiff_blocks.BlockLayout | None]]:
    """``open_tile``, with the tile's block layout when its blocks can be read directly."""
    while True:
        ds, lock, blocks = _shared_dataset(path)
        with lock:
            if not ds.closed:  # not evicted between the look-up and the lock
                yield ds, blocks
                return


def _shared_dataset(path: str) -> _Open:
    import rasterio

    key = _tile_key(path)
    with _open_lock:
        hit = _open.get(key)
        if hit is not None:
            _open.move_to_end(key)
            return hit
        try:
            with gdal_env():
                ds = rasterio.open(path)
        except rasterio.errors.RasterioError as e:
            raise _read_error(path, e) from None
        if ds.count != N_BANDS or ds.dtypes[0] != "int8":
            ds.close()
            raise TilesError(f"{path} is not an AlphaEarth tile (64 int8 bands expected)",
                             "check the tile directory")
        _open[key] = hit = (ds, threading.Lock(), tiff_blocks.layout(ds, path))
        while len(_open) > OPEN_TILES:
            old, old_lock, _ = _open.popitem(last=False)[1]
            with old_lock:
                old.close()
        return hit


@dataclass(frozen=True)
class RawWindow:
    """Stored int8 values of a window, band-last ``(rows, cols, 64)`` with each pixel's bands
    side by side (as the file interleaves them, and as the kernel sums them; a window inside
    one block is a read-only view of it), and its transform (which may be south-up). What
    the tile reader hands to the decoder."""

    q: np.ndarray
    transform: Affine


def read_window(path: str, bounds: tuple[float, float, float, float] | None = None
                ) -> RawWindow | None:
    """The stored values of a tile under ``bounds`` (tile crs); None when nothing overlaps.

    The window comes from the file's own transform, so south-up and north-up files read
    the same; only the blocks it touches are read (over HTTP: fetched).
    """
    import rasterio
    from rasterio.windows import Window

    with _held(path) as (ds, blocks):
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
        transform = ds.window_transform(win)
        if blocks is None:  # GDAL inflates, under the dataset's lock
            q = np.empty((int(win.height), int(win.width), N_BANDS), np.int8)
            try:
                with gdal_env():
                    ds.read(out=np.moveaxis(q, -1, 0), window=win)
            except rasterio.errors.RasterioError as e:
                raise _read_error(path, e) from None
            return RawWindow(q, transform)
    try:  # libdeflate, outside the lock: threads inflate blocks of one tile side by side
        q = blocks.read(int(win.row_off), int(win.col_off), int(win.height), int(win.width))
    except (OSError, ValueError) as e:
        raise _read_error(path, e) from None
    return RawWindow(q, transform)


def decode(raw: RawWindow) -> PixelBlock:
    """A window as a kernel block: the stored int8 values (no copy) and their valid mask;
    the kernel decodes them as it sums (``PixelBlock.from_int8``)."""
    from aether.core.zonal import PixelBlock

    return PixelBlock.from_int8(raw.q, raw.transform)


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
    """Read and decode the part of a tile that overlaps ``bounds`` (tile crs), band-last,
    nodata pixels NaN in every band (for readers that want NaN, not the kernel's mask)."""
    from aether.core.aef import decode as decode_values
    from aether.core.zonal import PixelBlock

    raw = read_window(path, bounds)
    if raw is None:
        return None
    values, valid = decode_values(raw.q)
    values[~valid] = np.nan
    return PixelBlock.from_transform(values, raw.transform)


def mosaic_window(tiles: Sequence[tuple[str, str]], crs: str,
                  bounds: tuple[float, float, float, float],
                  origin: tuple[float, float] = (0.0, 0.0)) -> RawWindow | None:
    """The year's mosaic under ``bounds`` on ``crs``'s 10 m grid through ``origin`` (by
    default whole multiples of 10 m, as Earth Engine's ``crs`` + ``scale`` grid is; the
    zone's own grid when its tiles lie off it, as the EE source then reduces too).

    ``tiles`` are ``(path, crs)`` in index order; where two hold data, the later one wins
    (Earth Engine's ``mosaic()``), so every ground pixel counts once. Tiles of another crs
    (the next UTM zone) are warped onto the grid by nearest neighbour, as Earth Engine
    does. A single aligned tile of the same crs is returned as read, without a copy.
    """
    px = PIXEL_SIZE_M
    ox, oy = origin
    x0, y1 = ox + np.floor((bounds[0] - ox) / px) * px, oy + np.ceil((bounds[3] - oy) / px) * px
    x1, y0 = ox + np.ceil((bounds[2] - ox) / px) * px, oy + np.floor((bounds[1] - oy) / px) * px
    if len(tiles) == 1 and tiles[0][1] == crs:
        raw = read_window(tiles[0][0], (x0, y0, x1, y1))
        if raw is None or _on_grid(raw.transform, origin):
            return raw
    from rasterio.transform import Affine

    w, h = round((x1 - x0) / px), round((y1 - y0) / px)
    out = np.full((h, w, N_BANDS), NODATA, dtype=np.int8)
    dst = Affine(px, 0.0, float(x0), 0.0, -px, float(y1))
    hit = False
    for path, tile_crs in tiles:
        placed = _onto(path, tile_crs, crs, dst, (h, w))
        if placed is None:
            continue
        (rows, cols), part = placed
        ok = valid_mask(part)
        np.copyto(out[rows, cols], part, where=ok[..., None])
        hit = hit or bool(ok.any())
    return RawWindow(out, dst) if hit else None


def _on_grid(t: Any, origin: tuple[float, float]) -> bool:
    """Whether a transform's pixels are the 10 m grid's through ``origin``."""
    px = PIXEL_SIZE_M
    u, v = (t.c - origin[0]) / px, (t.f - origin[1]) / px
    return (abs(abs(t.a) - px) < 1e-9 and abs(abs(t.e) - px) < 1e-9 and t.b == 0 and t.d == 0
            and abs(u - round(u)) < 1e-6 and abs(v - round(v)) < 1e-6)


def _onto(path: str, tile_crs: str, crs: str, dst: Any, shape: tuple[int, int]
          ) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """One tile's stored values on the north-up lattice ``dst`` of ``shape``: the (rows,
    cols) of the lattice they cover and the values there (nodata where the tile has none)."""
    h, w = shape
    x0, y1 = dst.c, dst.f
    x1, y0 = x0 + w * dst.a, y1 + h * dst.e
    if tile_crs == crs:
        raw = read_window(path, (x0, y0, x1, y1))
        if raw is not None and _on_grid(raw.transform, (dst.c, dst.f)):
            q, t = raw.q, raw.transform
            if t.e > 0:  # south-up: flip to north-up
                q, top = q[::-1], t.f + t.e * q.shape[0]
            else:
                top = t.f
            r0, c0 = round((y1 - top) / dst.a), round((t.c - x0) / dst.a)
            rh, rw = q.shape[:2]
            rs, cs = max(r0, 0), max(c0, 0)
            re_, ce = min(r0 + rh, h), min(c0 + rw, w)
            if rs >= re_ or cs >= ce:
                return None
            return (slice(rs, re_), slice(cs, ce)), q[rs - r0:re_ - r0, cs - c0:ce - c0]
    else:
        from rasterio.warp import transform_bounds

        pad = PIXEL_SIZE_M
        b = transform_bounds(crs, tile_crs, x0, y0, x1, y1, densify_pts=21)
        raw = read_window(path, (b[0] - pad, b[1] - pad, b[2] + pad, b[3] + pad))
    if raw is None:
        return None
    from rasterio.warp import Resampling, reproject

    part = np.full((N_BANDS, h, w), NODATA, dtype=np.int8)  # reproject works band-first
    with gdal_env():
        reproject(np.ascontiguousarray(np.moveaxis(raw.q, -1, 0)), part,
                  src_transform=raw.transform, src_crs=tile_crs, src_nodata=NODATA,
                  dst_transform=dst, dst_crs=crs, dst_nodata=NODATA,
                  resampling=Resampling.nearest)
    return (slice(0, h), slice(0, w)), np.moveaxis(part, 0, -1)
