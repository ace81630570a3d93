"""The heat layer of a served answer: one byte per pixel of a Web Mercator raster of the grid.

A browser cannot draw a million cell polygons per answer, and a JSON list of a million scores
is megabytes to build, send and parse. So the grid is rasterised once, at load, in the map's
own projection (Web Mercator, which Leaflet stretches linearly between an image's corners):
each pixel holds the row of the cell under its centre. An answer is then one gather: the
scores quantised to a byte (0..254 over the answer's range, 255 where no cell or a masked
one) and looked up through that raster. Square grids are found by arithmetic on their UTM
lattice; any other grid (H3) by the nearest cell centre.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Most pixels of a heat raster (its bytes per answer): about one per cell at 1 M cells.
MAX_PIXELS = 2**20
#: Most pixels per side of a cell, so a small grid draws crisp cell edges.
MAX_OVERSAMPLE = 8
NODATA = 255
LEVELS = 254  # values 0..254
R_EARTH = 6378137.0


@dataclass(frozen=True)
class HeatRaster:
    """Which cell each pixel of a Web Mercator raster shows (``len(cells)``: none)."""

    pixels: np.ndarray  # (height, width) int32 row of the grid, or n_cells for no cell
    bounds: tuple[tuple[float, float], tuple[float, float]]  # ((south, west), (north, east))

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def cells_drawn(self, n_cells: int) -> int:
        """How many of the grid's ``n_cells`` some pixel shows: all but a few, unless the
        cells lie so far apart (towns hundreds of km apart) that the bounded raster's pixels
        outgrow them."""
        counts = np.bincount(self.pixels.ravel(), minlength=n_cells + 1)
        return int(np.count_nonzero(counts[:n_cells]))

    def encode(self, scores: np.ndarray, lo: float, hi: float) -> bytes:
        """The answer's bytes, row-major from the north-west corner: a score ``s`` is
        ``round(254·(s − lo)/(hi − lo))``, 255 where there is no score (float32 throughout:
        a few ms at a million cells)."""
        span = hi - lo if hi > lo else 1.0
        v = np.subtract(scores, np.float32(lo), dtype=np.float32)
        v *= np.float32(LEVELS / span)
        np.clip(v, 0, LEVELS, out=v)  # NaN stays NaN
        v += np.float32(0.5)
        q = np.empty(len(scores) + 1, np.uint8)
        with np.errstate(invalid="ignore"):
            np.copyto(q[:-1], v, casting="unsafe")
        q[:-1][np.isnan(scores)] = NODATA
        q[-1] = NODATA
        return np.take(q, self.pixels).tobytes()


def heat_raster(x: np.ndarray, y: np.ndarray, crs: str) -> HeatRaster:
    """The raster of a grid whose cell centres are ``x``, ``y`` in the projected ``crs``."""
    from pyproj import Transformer

    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    spacing = _spacing(x, y)
    # the grid's extent (centres ± half a cell) in Web Mercator metres
    corners_x = np.array([x.min() - spacing / 2] * 2 + [x.max() + spacing / 2] * 2)
    corners_y = np.array([y.min() - spacing / 2, y.max() + spacing / 2] * 2)
    lon, lat = to_ll.transform(corners_x, corners_y)
    mx, my = _mercator(np.asarray(lon), np.asarray(lat))
    west, east, south, north = mx.min(), mx.max(), my.min(), my.max()
    # a cell's side in Mercator metres is its side / cos(latitude)
    side = spacing / np.cos(np.radians(float(np.mean(lat))))
    n_cells_bbox = (east - west) * (north - south) / side**2
    over = float(np.clip(np.sqrt(MAX_PIXELS / max(n_cells_bbox, 1.0)), 1.0, MAX_OVERSAMPLE))
    px = side / over
    width = max(1, int(np.ceil((east - west) / px)))
    height = max(1, int(np.ceil((north - south) / px)))
    while width * height > MAX_PIXELS:  # the clip to one pixel per cell side may not fit
        px *= 1.05
        width, height = int(np.ceil((east - west) / px)), int(np.ceil((north - south) / px))
    gx = west + (np.arange(width) + 0.5) * px
    gy = north - (np.arange(height) + 0.5) * px
    pixels = np.empty((height, width), np.int32)
    from_ll = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    lons = np.degrees(gx / R_EARTH)
    step = max(1, 2**20 // width)  # rows per batch: bounded temporaries
    locate = _locator(x, y, spacing)
    for r0 in range(0, height, step):
        lats = np.degrees(2 * np.arctan(np.exp(gy[r0:r0 + step] / R_EARTH)) - np.pi / 2)
        lo_, la_ = np.meshgrid(lons, lats)
        ux, uy = from_ll.transform(lo_.ravel(), la_.ravel())
        pixels[r0:r0 + step] = locate(np.asarray(ux), np.asarray(uy)).reshape(-1, width)
    wl, sl = _lonlat(west, north - height * px)  # the raster's own edges (whole pixels)
    el, nl = _lonlat(west + width * px, north)
    return HeatRaster(pixels, ((sl, wl), (nl, el)))


def _mercator(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (R_EARTH * np.radians(lon),
            R_EARTH * np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)))


def _lonlat(mx: float, my: float) -> tuple[float, float]:
    return (float(np.degrees(mx / R_EARTH)),
            float(np.degrees(2 * np.arctan(np.exp(my / R_EARTH)) - np.pi / 2)))


def _spacing(x: np.ndarray, y: np.ndarray) -> float:
    """The distance between neighbouring cell centres (the median over a sample)."""
    from scipy.spatial import cKDTree

    if len(x) < 2:
        return 1.0
    pts = np.column_stack([x, y])
    sample = pts[np.random.default_rng(0).choice(len(pts), min(len(pts), 2000), replace=False)]
    d, _ = cKDTree(pts).query(sample, k=2)
    return float(np.median(d[:, 1]))


@dataclass(frozen=True)
class Lattice:
    """A square grid as a dense array over its lattice (row 0 at the smallest y)."""

    x0: float
    y0: float
    size: float
    rows: np.ndarray  # (ny, nx) grid row of each lattice position, or n_cells
    n_cells: int


def square_lattice(x: np.ndarray, y: np.ndarray, size: float | None = None) -> Lattice | None:
    """A square grid's cells (centres ``x``, ``y``, side ``size``: the centres' spacing when
    not given) as a dense array over its lattice; None when they are not on one."""
    if size is None:
        size = _spacing(x, y)
    ix, iy = (x - x.min()) / size, (y - y.min()) / size
    if not (np.allclose(ix, np.rint(ix), atol=1e-3) and np.allclose(iy, np.rint(iy), atol=1e-3)):
        return None
    ix, iy = np.rint(ix).astype(np.int64), np.rint(iy).astype(np.int64)
    if (ix.max() + 1) * (iy.max() + 1) > 16 * len(x):  # sparse: the nearest centre is cheaper
        return None
    rows = np.full((iy.max() + 1, ix.max() + 1), len(x), np.int32)
    rows[iy, ix] = np.arange(len(x), dtype=np.int32)
    return Lattice(float(x.min()), float(y.min()), size, rows, len(x))


def _on_lattice(lat: Lattice, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
    ix = np.floor((ux - lat.x0) / lat.size + 0.5).astype(np.int64)
    iy = np.floor((uy - lat.y0) / lat.size + 0.5).astype(np.int64)
    ny, nx = lat.rows.shape
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    out = np.full(len(ux), lat.n_cells, np.int32)
    out[inside] = lat.rows[iy[inside], ix[inside]]
    return out


def _locator(x: np.ndarray, y: np.ndarray, spacing: float
             ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Grid row of the cell holding each projected point (``len(x)``: none): arithmetic on a
    square lattice, else the nearest centre within a hexagon's circumradius (spacing/√3)."""
    from scipy.spatial import cKDTree

    lattice = square_lattice(x, y, spacing)
    if lattice is not None:
        return lambda ux, uy: _on_lattice(lattice, ux, uy)
    tree = cKDTree(np.column_stack([x, y]))

    def nearest(ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        d, i = tree.query(np.column_stack([ux, uy]),
                          distance_upper_bound=spacing / np.sqrt(3) * 1.01)
        return np.where(np.isfinite(d), i, len(x)).astype(np.int32)

    return nearest
