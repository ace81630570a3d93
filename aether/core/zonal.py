"""The one zonal kernel: area-weighted means of embedding pixels inside circular buffers.

Every local path (COG tiles, xee pixels, the Earth Engine emulator) computes buffer means
with this code, so they cannot drift apart. Semantics follow Earth Engine's weighted
``Reducer.mean``: each pixel counts by the exact fraction of its area inside the buffer.
Coverage is computed analytically (circle ∩ rectangle), not by sampling, so the result
matches exactextract on a finely segmented buffer polygon.

Work is split as *partial sums* so a buffer that spans two tiles (or two UTM zones) is the
sum of its parts: ``partial_sums`` per block, ``add`` to combine, ``finalize`` to get means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

#: Upper bound on the gathered pixel values of one batch (bytes); keeps memory flat.
BATCH_BYTES = 48 * 2**20


@dataclass(frozen=True)
class PixelBlock:
    """A raster window in a projected crs, band-last: ``values[row, col, band]``.

    ``x0``/``y0`` are the coordinates of the outer edge of column 0 / row 0; ``dy`` is
    negative for north-up rasters and positive for south-up ones (AlphaEarth COGs).
    NaN marks no data; a pixel with NaN in any band is invalid in all.
    """

    values: np.ndarray
    x0: float
    y0: float
    dx: float
    dy: float

    @classmethod
    def from_transform(cls, values: np.ndarray, transform: object) -> PixelBlock:
        """Build from a rasterio/affine transform without rotation."""
        a, b, c, d, e, f = (getattr(transform, k) for k in "abcdef")
        if b != 0 or d != 0:
            raise ValueError("rotated rasters are not supported")
        return cls(values, float(c), float(f), float(a), float(e))

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape[0], self.values.shape[1]

    @property
    def pixel_area(self) -> float:
        return abs(self.dx * self.dy)

    @cached_property
    def _prepared(self) -> tuple[np.ndarray, np.ndarray]:
        vals = np.asarray(self.values, dtype=np.float32)
        invalid = np.asarray(np.isnan(vals).any(axis=-1))
        return np.where(invalid[..., None], np.float32(0), vals), ~invalid

    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the block."""
        h, w = self.shape
        xs = (self.x0, self.x0 + w * self.dx)
        ys = (self.y0, self.y0 + h * self.dy)
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class Partial:
    """Unnormalised sums for P buffers: what one block contributes."""

    weighted_sum: np.ndarray  # (P, B) float64: Σ w·v over valid pixels
    valid_weight: np.ndarray  # (P,) float64: Σ w over valid pixels, in pixel areas
    n_bands: int = field(default=0)

    @classmethod
    def zeros(cls, n: int, n_bands: int) -> Partial:
        return cls(np.zeros((n, n_bands)), np.zeros(n), n_bands)

    def add(self, other: Partial) -> Partial:
        """Combine the contributions of two blocks to the same buffers."""
        return Partial(
            self.weighted_sum + other.weighted_sum,
            self.valid_weight + other.valid_weight,
            self.n_bands or other.n_bands,
        )


@dataclass
class Means:
    """Final buffer means and their quality columns (the poi_embeddings contract)."""

    mean: np.ndarray  # (P, B) float32, NaN where no valid pixel
    weight: np.ndarray  # (P,) covered valid area, in pixels
    valid_fraction: np.ndarray  # (P,) valid covered area / buffer area
    norm: np.ndarray  # (P,) length of the mean vector


def _disk_quadrant_area(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed area of {disk(0, r)} ∩ [0, x] × [0, y]; odd in x and in y.

    Inclusion–exclusion of this function at a pixel's four corners gives the exact area
    of the pixel inside the circle.
    """
    sx, sy = np.sign(x), np.sign(y)
    ax = np.minimum(np.abs(x), r)
    ay = np.minimum(np.abs(y), r)
    xs = np.sqrt(r * r - ay * ay)  # where the circle's height equals ay

    def prim(t: np.ndarray) -> np.ndarray:  # ∫_0^t sqrt(r² − s²) ds
        return 0.5 * (t * np.sqrt(np.maximum(r * r - t * t, 0.0)) + r * r * np.arcsin(t / r))

    area = np.where(ax <= xs, ax * ay, xs * ay + prim(ax) - prim(np.maximum(xs, 0.0)))
    return sx * sy * area


def coverage(
    cx: np.ndarray, cy: np.ndarray, r: float, x_edges: np.ndarray, y_edges: np.ndarray
) -> np.ndarray:
    """Area of each pixel inside each circle: (P, ny, nx) from edges (P, ny+1) and (P, nx+1).

    Edges may decrease (north-up rows); areas are returned positive, in map units².
    """
    gx = (x_edges - cx[:, None])[:, None, :]
    gy = (y_edges - cy[:, None])[:, :, None]
    g = _disk_quadrant_area(gx, gy, r)
    return np.abs(np.diff(np.diff(g, axis=1), axis=2))


def partial_sums(block: PixelBlock, x: np.ndarray, y: np.ndarray, radius: float) -> Partial:
    """Sum of coverage-weighted pixel vectors of circles (x, y, radius) over one block.

    Pixels of a circle that fall outside the block contribute nothing here; another
    block's partial sums add them. Coordinates are in the block's crs. The weights of a
    batch of circles form a sparse (circles × pixels) matrix, so the sums are one sparse
    product with the block: no per-circle copies of pixel windows.
    """
    from scipy.sparse import csr_matrix

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    h, w = block.shape
    n_bands = block.values.shape[-1]
    out = Partial.zeros(len(x), n_bands)
    if len(x) == 0 or radius <= 0:
        return out
    vals, valid = block._prepared
    flat_vals = vals.reshape(h * w, n_bands)
    flat_valid = valid.reshape(-1).astype(np.float64)
    nx = int(np.ceil(2 * radius / abs(block.dx))) + 1
    ny = int(np.ceil(2 * radius / abs(block.dy))) + 1
    # first column / row whose pixel may touch the circle
    c0 = np.floor((x - radius - block.x0) / block.dx).astype(np.int64)
    r_a = np.floor((y - radius - block.y0) / block.dy)
    r_b = np.floor((y + radius - block.y0) / block.dy)
    r0 = np.minimum(r_a, r_b).astype(np.int64)
    # only circles whose window touches the block
    idx = np.flatnonzero((c0 + nx > 0) & (c0 < w) & (r0 + ny > 0) & (r0 < h))
    step = max(1, BATCH_BYTES // (nx * ny * 8))
    cols_off = np.arange(nx)
    rows_off = np.arange(ny)
    for s in range(0, len(idx), step):
        sel = idx[s : s + step]
        cols = c0[sel, None] + cols_off  # (P, nx)
        rows = r0[sel, None] + rows_off  # (P, ny)
        x_edges = block.x0 + np.concatenate([cols, cols[:, -1:] + 1], axis=1) * block.dx
        y_edges = block.y0 + np.concatenate([rows, rows[:, -1:] + 1], axis=1) * block.dy
        wts = coverage(x[sel], y[sel], radius, x_edges, y_edges)  # (P, ny, nx)
        inside = ((cols >= 0) & (cols < w))[:, None, :] & ((rows >= 0) & (rows < h))[:, :, None]
        keep = inside & (wts > 0)
        pix = rows[:, :, None] * w + cols[:, None, :]
        indptr = np.concatenate([[0], np.cumsum(keep.reshape(len(sel), -1).sum(axis=1))])
        weights = csr_matrix((wts[keep], pix[keep], indptr), shape=(len(sel), h * w))
        out.valid_weight[sel] = weights @ flat_valid  # float64: fractions stay exact
        out.weighted_sum[sel] = weights.astype(np.float32) @ flat_vals  # no float64 block copy
    out.weighted_sum /= block.pixel_area
    out.valid_weight /= block.pixel_area
    return out


def finalize(partial: Partial, radius: float, pixel_area: float) -> Means:
    """Means of circular buffers from their combined partial sums."""
    return finalize_area(partial, np.pi * radius * radius / pixel_area)


def finalize_area(partial: Partial, area_px: float | np.ndarray) -> Means:
    """Means, weights, valid fractions and norms; ``area_px`` is each region's area in pixels.

    A region with no valid pixel keeps a NaN vector and valid_fraction 0: never zero-filled.
    """
    vw = partial.valid_weight
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (partial.weighted_sum / vw[:, None]).astype(np.float32)
    mean[vw <= 0] = np.nan
    return Means(
        mean=mean,
        weight=vw.astype(np.float64),
        valid_fraction=np.clip(vw / area_px, 0.0, 1.0),
        norm=np.linalg.norm(mean.astype(np.float64), axis=1),
    )


def _overlap(edges: np.ndarray, origin: float, step: float, n: int) -> np.ndarray:
    """(cells, pixels) length of overlap of each cell interval with each pixel, in pixels."""
    lo_c, hi_c = np.minimum(edges[:-1], edges[1:]), np.maximum(edges[:-1], edges[1:])
    px = origin + np.arange(n + 1) * step
    lo_p, hi_p = np.minimum(px[:-1], px[1:]), np.maximum(px[:-1], px[1:])
    ov = np.minimum(hi_c[:, None], hi_p[None, :]) - np.maximum(lo_c[:, None], lo_p[None, :])
    return np.clip(ov, 0.0, None) / abs(step)


def grid_partial_sums(block: PixelBlock, x_edges: np.ndarray, y_edges: np.ndarray) -> Partial:
    """Sums over the cells of a rectangular grid (edges in the block's crs), row-major.

    Coverage of a rectangle is separable (x overlap × y overlap), so the whole grid reduces
    with two matrix products instead of a loop over cells.
    """
    vals, valid = block._prepared
    h, w = block.shape
    wx = _overlap(np.asarray(x_edges, float), block.x0, block.dx, w)  # (nx, W)
    wy = _overlap(np.asarray(y_edges, float), block.y0, block.dy, h)  # (ny, H)
    # float32 products, as in partial_sums: no float64 copy of the block (memory per task)
    rows = np.tensordot(wy.astype(np.float32), vals, axes=(1, 0))  # (ny, W, B)
    s = np.einsum("ic,jcb->jib", wx.astype(np.float32), rows, optimize=True)
    vw = wy @ valid.astype(np.float64) @ wx.T
    nb = vals.shape[-1]
    return Partial(s.reshape(-1, nb).astype(np.float64), vw.reshape(-1), nb)


def buffer_means(block: PixelBlock, x: np.ndarray, y: np.ndarray, radius: float) -> Means:
    """Means over a single block: the common case of a raster that covers the buffers."""
    return finalize(partial_sums(block, x, y, radius), radius, block.pixel_area)


def polygon_partial_sums(block: PixelBlock, shapes: list) -> Partial:
    """Coverage-weighted sums over arbitrary shapely polygons in the block's crs.

    Each pixel counts by the exact area of its intersection with the polygon (the
    generalisation of the circle coverage above, used by the emulator for non-circular
    regions and geographic reduction grids). A bare point takes the pixel it falls in.
    """
    import shapely

    h, w = block.shape
    vals, valid = block._prepared
    out = Partial.zeros(len(shapes), vals.shape[-1])
    for i, g in enumerate(shapes):
        xmin, ymin, xmax, ymax = g.bounds
        cs = sorted(((xmin - block.x0) / block.dx, (xmax - block.x0) / block.dx))
        rs = sorted(((ymin - block.y0) / block.dy, (ymax - block.y0) / block.dy))
        c0, c1 = max(int(np.floor(cs[0])), 0), min(int(np.floor(cs[1])) + 1, w)
        r0, r1 = max(int(np.floor(rs[0])), 0), min(int(np.floor(rs[1])) + 1, h)
        if c0 >= c1 or r0 >= r1:
            continue
        xe = block.x0 + np.arange(c0, c1 + 1) * block.dx
        ye = block.y0 + np.arange(r0, r1 + 1) * block.dy
        if g.geom_type == "Point":
            wts = np.zeros((r1 - r0, c1 - c0))
            wts[0, 0] = block.pixel_area
        else:
            boxes = shapely.box(xe[None, :-1], ye[:-1, None], xe[None, 1:], ye[1:, None])
            wts = shapely.area(shapely.intersection(boxes, g))
        wts = wts * valid[r0:r1, c0:c1]
        out.weighted_sum[i] = np.tensordot(wts, vals[r0:r1, c0:c1], axes=([0, 1], [0, 1]))
        out.valid_weight[i] = wts.sum()
    out.weighted_sum /= block.pixel_area
    out.valid_weight /= block.pixel_area
    return out
