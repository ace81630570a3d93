"""AlphaEarth pixels through xee 0.1.x: a dask-backed xarray, reduced by the one zonal kernel.

The year's mosaic is opened with xee on an explicit 10 m grid in a UTM crs (``crs``,
``crs_transform``, ``shape_2d``), lazily, chunked so that one Dask chunk is one
``computePixels`` request. Point buffer means and grid cells are then sums over the chunks
they touch (``zonal.partial_sums`` / ``grids.Cells.sums``), added per POI / cell: the same
kernel as the COG source, so the two agree to float rounding (the emulator's own, independent
coverage is what both are checked against).

Why the collection is reshaped: xee fetches one *variable* (band) per request. Opened as one
64-band image, every chunk costs 64 requests. Here the mosaic is handed to xee as 64
single-band images (``band`` is xee's primary dimension, one variable ``embedding``), so one
request returns all 64 bands of a chunk: 64 times fewer requests, and chunks are as large as
EE's 48 MiB pixel-request limit allows (``CHUNK_PX``).

Every chunk task initialises Earth Engine on the process that runs it (``ee_session.ensure``)
from picklable settings and opens the dataset once per process, so the same graph runs on
the local scheduler or on any Dask cluster.

``import xee`` below is the real xee package: imports are absolute, and this module is
``aether.embeddings.xee``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aether.core import aef, windows, zonal
from aether.core import cells as grids
from aether.embeddings.earthengine import catalog
from aether.embeddings.earthengine.options import (
    BYTES_PER_BAND_PIXEL,
    CHUNK_PX,
    REQUEST_BYTES,
    REQUEST_MARGIN,
    XeeOptions,
)
from aether.embeddings.earthengine.session import EESettings, ensure
from aether.embeddings.fold import WindowSums, point_means_table
from aether.errors import CoverageError, InputError

if TYPE_CHECKING:
    import geopandas as gpd
    import xarray as xr

    from aether.places.place import Place

def request_bytes(chunk: int) -> int:
    """What EE counts against ``REQUEST_BYTES`` for one full chunk of all 64 bands."""
    return aef.N_BANDS * chunk * chunk * BYTES_PER_BAND_PIXEL


def check_chunk(chunk: int) -> int:
    """``chunk`` if one request of it fits EE's limit with the margin, else InputError."""
    if chunk < 1 or request_bytes(chunk) > REQUEST_MARGIN * REQUEST_BYTES:
        raise InputError(
            f"--xee-chunk {chunk} asks {request_bytes(chunk):,} bytes per request; Earth "
            f"Engine allows {REQUEST_BYTES:,}",
            f"use a chunk between 1 and {CHUNK_PX} pixels (the default)")
    return chunk
_open_lock = threading.Lock()


@dataclass(frozen=True)
class View:
    """A north-up 10 m pixel grid over which xee opens one year: picklable and hashable."""

    session: EESettings
    year: int
    crs: str
    x0: float  # west edge
    y0: float  # north edge
    width: int
    height: int
    chunk: int = CHUNK_PX

    @classmethod
    def over(cls, session: EESettings, year: int, crs: str,
             bounds: tuple[float, float, float, float], chunk: int = CHUNK_PX) -> View:
        """The pixel-aligned view covering ``bounds`` (xmin, ymin, xmax, ymax in ``crs``)."""
        px = aef.PIXEL_SIZE_M
        x0, y0 = np.floor(bounds[0] / px) * px, np.ceil(bounds[3] / px) * px
        w = int(np.ceil((bounds[2] - x0) / px))
        h = int(np.ceil((y0 - bounds[1]) / px))
        return cls(session, year, crs, float(x0), float(y0), max(w, 1), max(h, 1), chunk)

    def starts(self) -> tuple[list[int], list[int]]:
        """First row / column of every chunk."""
        return list(range(0, self.height, self.chunk)), list(range(0, self.width, self.chunk))


def _collection(year: int) -> Any:
    """The year's mosaic as 64 single-band images named ``embedding``, property ``band``."""
    import ee

    start, end = aef.year_range_ms(year)
    mosaic = ee.ImageCollection(aef.COLLECTION_ID).filterDate(start, end).mosaic()
    return ee.ImageCollection([mosaic.select([b], ["embedding"]).toFloat().set("band", b)
                               for b in aef.BANDS])


@lru_cache(maxsize=4)
def _dataset(view: View) -> xr.DataArray:
    """The lazily indexed (not yet dask) xee array of a view, once per process."""
    import xarray as xr
    import xee  # noqa: F401  (registers the "ee" engine; the real package, imports are absolute)

    ds = xr.open_dataset(
        _collection(view.year), engine="ee", crs=view.crs,
        crs_transform=(aef.PIXEL_SIZE_M, 0.0, view.x0, 0.0, -aef.PIXEL_SIZE_M, view.y0),
        shape_2d=(view.width, view.height), primary_dim_name="band",
        primary_dim_property="band", request_byte_limit=REQUEST_BYTES,
        io_chunks={"index": aef.N_BANDS, "width": view.chunk, "height": view.chunk},
        getitem_kwargs={"max_retries": 0},  # retries are aether's (read_window)
    )
    return ds["embedding"]


def read_window(view: View, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Pixels [r0:r1, c0:c1] of the view as (band, rows, cols) float32: one request."""
    from aether._compat import ee_retries_off
    from aether.embeddings.earthengine.session import transient_verdict
    from aether.execution.jobs import RetryPolicy, resilient_call

    ensure(view.session)
    with _open_lock:
        arr = _dataset(view)

    def fetch(_: object, level: int) -> np.ndarray:
        with ee_retries_off():  # the retries are these; the client must not multiply them
            return np.asarray(arr[:, r0:r1, c0:c1].values, dtype=np.float32)

    return resilient_call(fetch, [None], transient_verdict, RetryPolicy(attempts=5, base_s=0.2))


def open_array(view: View) -> xr.DataArray:
    """The view as a dask-backed ``(band, y, x)`` DataArray; each chunk is one xee request."""
    import dask
    import dask.array as da
    import xarray as xr

    rows, cols = view.starts()
    blocks = [[da.from_delayed(
        dask.delayed(read_window, pure=True)(view, r, min(r + view.chunk, view.height),
                                             c, min(c + view.chunk, view.width)),
        (aef.N_BANDS, min(view.chunk, view.height - r), min(view.chunk, view.width - c)),
        dtype=np.float32) for c in cols] for r in rows]
    px = aef.PIXEL_SIZE_M
    return xr.DataArray(
        da.block(blocks),
        dims=("band", "y", "x"),
        coords={"band": list(aef.BANDS),
                "y": view.y0 - px / 2 - px * np.arange(view.height),
                "x": view.x0 + px / 2 + px * np.arange(view.width)},
        attrs={"crs": view.crs, "year": view.year},
    )


def _block(values: np.ndarray, view: View, r: int, c: int) -> zonal.PixelBlock:
    px = aef.PIXEL_SIZE_M
    return zonal.PixelBlock(np.moveaxis(values, 0, -1), view.x0 + c * px, view.y0 - r * px,
                            px, -px)


def _point_sums(key: int, values: np.ndarray, view: View, r: int, c: int, idx: np.ndarray,
                x: np.ndarray, y: np.ndarray, radii: list[float]) -> WindowSums:
    block = _block(values, view, r, c)
    return key, idx, windows.radii_partial_sums(block, x, y, radii)


def _grid_sums(values: np.ndarray, view: View, r: int, c: int, cells: grids.Cells
               ) -> tuple[np.ndarray, zonal.Partial]:
    return cells.sums(_block(values, view, r, c))


@dataclass
class XeeSource:
    """Buffer means and grids from Earth Engine pixels fetched through xee."""

    session: EESettings
    chunk: int = CHUNK_PX
    name: str = "xee"

    def __post_init__(self) -> None:
        check_chunk(self.chunk)  # a request EE would refuse fails here, before any work

    def _check_year(self, year: int) -> None:
        """One small request: a year without images is a clear error, not an empty mosaic."""
        import ee

        ensure(self.session)
        start, end = aef.year_range_ms(year)
        n = ee.ImageCollection(aef.COLLECTION_ID).filterDate(start, end).size().getInfo()
        if not n:
            raise CoverageError(f"no AlphaEarth images for year {year}",
                                "check --year and the endpoint")

    def latest_year(self) -> int | None:
        """The newest year the collection holds (one request)."""
        ensure(self.session)
        return catalog.year_of(catalog.newest_start().getInfo())

    def version(self, year: int, bbox: tuple[float, float, float, float]) -> dict[str, Any]:
        """The images (ids and ``system:version``) the year's tables over bbox come from."""
        ensure(self.session)
        return catalog.version_record(catalog.images_over(year, bbox).getInfo())

    def _chunks(self, view: View) -> list[tuple[int, int, Any]]:
        """(first row, first column, delayed pixels) of every chunk of the view."""
        arr = open_array(view)
        rows, cols = view.starts()
        delayed = arr.data.to_delayed()[0]
        return [(r, c, delayed[i, j]) for i, r in enumerate(rows) for j, c in enumerate(cols)]

    def point_means(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> pd.DataFrame:
        """Rows of the poi_embeddings contract for every POI × radius."""
        return point_means_table(pois, radii, year, self.point_sums(pois, radii, year))

    def point_sums(
        self, pois: gpd.GeoDataFrame, radii: Sequence[float], year: int
    ) -> Iterator[WindowSums]:
        """The buffers' sums over every chunk they touch, as the chunks finish."""
        from aether.execution import cluster

        radii = [float(r) for r in radii]
        self._check_year(year)
        lon, lat = pois.geometry.x.to_numpy(), pois.geometry.y.to_numpy()
        # each buffer is reduced in its POI's UTM zone, as the COG and EE sources do
        zone = aef.utm_epsgs(lon, lat)
        tasks: list[Any] = []
        for epsg in np.unique(zone):
            in_zone = np.flatnonzero(zone == epsg)
            tasks += self._zone_tasks(f"EPSG:{epsg}", in_zone, lon[in_zone], lat[in_zone],
                                      radii, year, first_key=len(tasks))
        return cluster.as_completed(tasks)

    def _zone_tasks(self, crs: str, ids: np.ndarray, lon: np.ndarray, lat: np.ndarray,
                    radii: list[float], year: int, first_key: int = 0) -> list[Any]:
        """Delayed partial sums of one UTM zone's POIs (``ids``: their rows in the table)."""
        import dask
        from pyproj import Transformer

        x, y = (np.asarray(v) for v in Transformer.from_crs(
            "EPSG:4326", crs, always_xy=True).transform(lon, lat))
        reach = max(map(windows.reach, radii)) + aef.PIXEL_SIZE_M
        view = View.over(self.session, year, crs, (x.min() - reach, y.min() - reach,
                                                   x.max() + reach, y.max() + reach), self.chunk)
        px = aef.PIXEL_SIZE_M
        tasks: list[Any] = []
        for r, c, pixels in self._chunks(view):
            bx0, by1 = view.x0 + c * px, view.y0 - r * px
            bx1, by0 = bx0 + view.chunk * px, by1 - view.chunk * px
            idx = np.flatnonzero((x + reach > bx0) & (x - reach < bx1)
                                 & (y + reach > by0) & (y - reach < by1))
            if len(idx):
                tasks.append(dask.delayed(_point_sums)(first_key + len(tasks), pixels, view, r,
                                                       c, ids[idx], x[idx], y[idx], radii))
        return tasks

    def grid(self, place: Place, year: int, cell: str | float = 100.0) -> gpd.GeoDataFrame:
        """Area-weighted means over the cells of ``cell`` (``100m``, ``h3:9``; see ``grids``)."""
        import dask

        self._check_year(year)
        cells = grids.make_cells(place.boundary, place.crs, grids.parse_cell(cell), place.name)
        view = self.view(place, year, cells)
        shared = dask.delayed(cells, pure=True)
        tasks = [dask.delayed(_grid_sums)(pixels, view, r, c, shared)
                 for r, c, pixels in self._chunks(view)]
        return cells.frame(grids.accumulate(len(cells), list(dask.compute(*tasks))))

    def view(self, place: Place, year: int, cells: grids.Cells | None = None) -> View:
        """The pixel grid over a place's cells (default: 100 m cells) in its UTM crs."""
        cells = cells or grids.make_cells(place.boundary, place.crs, grids.parse_cell(100.0),
                                          place.name)
        return View.over(self.session, year, cells.crs, cells.bounds(), self.chunk)


def create(options: XeeOptions, workdir: Path | None = None) -> XeeSource:
    """The factory ``get_source('xee', ...)`` calls (xee keeps no work directory)."""
    return XeeSource(options.session(), chunk=options.xee_chunk or CHUNK_PX)
