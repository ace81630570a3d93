"""The one zonal kernel: area-weighted means of embedding pixels inside circular buffers.

Every local path (COG tiles, xee pixels) computes buffer means with this code, so they
cannot drift apart. The Earth Engine emulator does not: its coverage
(``aether.testing.emulator.coverage``) is written independently, from Earth Engine's
documented semantics, so the parity tests between the sources and the emulator check
this kernel against something that does not share its mistakes. Semantics follow Earth
Engine's weighted ``Reducer.mean``: each pixel counts by the exact fraction of its area
inside the buffer. Coverage is computed analytically (circle ∩ rectangle), not by
sampling, so the result matches exactextract on a finely segmented buffer polygon.

Work is split as *partial sums* so a buffer that spans two tiles (or two UTM zones) is the
sum of its parts: ``partial_sums`` per block, ``add`` to combine, ``finalize`` to get means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from aether.core import aef

#: Blocks are reduced in parts of at most this many pixels a side (one COG block).
PART_PX = 256
#: Rows finalised at a time (bounds the float64 temporaries of a million buffers).
FINALIZE_ROWS = 65_536
#: Rows of a part that share one column range of prefix sums (their circles' reach).
PREFIX_ROWS = 64


@dataclass(frozen=True)
class PixelBlock:
    """A raster window in a projected crs, band-last: ``values[row, col, band]``.

    ``x0``/``y0`` are the coordinates of the outer edge of column 0 / row 0; ``dy`` is
    negative for north-up rasters and positive for south-up ones (AlphaEarth COGs).
    NaN marks no data; a pixel with NaN in any band is invalid in all. A block of stored
    AlphaEarth int8 values (``from_int8``) is not decoded up front: the circle kernel sums
    the exact integers ``q·|q|`` and scales once (``aef.DEQUANT_SCALE``), other reducers
    decode it on first use (``_prepared``), and ``valid`` is band 0 ≠ −128.
    """

    values: np.ndarray
    x0: float
    y0: float
    dx: float
    dy: float
    valid: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_transform(cls, values: np.ndarray, transform: object,
                       valid: np.ndarray | None = None) -> PixelBlock:
        """Build from a rasterio/affine transform without rotation."""
        a, b, c, d, e, f = (getattr(transform, k) for k in "abcdef")
        if b != 0 or d != 0:
            raise ValueError("rotated rasters are not supported")
        return cls(values, float(c), float(f), float(a), float(e), valid)

    @classmethod
    def from_int8(cls, q: np.ndarray, transform: object) -> PixelBlock:
        """Band-last AlphaEarth int8 ``(rows, cols, 64)``, kept as stored (no copy)."""
        return cls.from_transform(q, transform, aef.valid_mask(q))

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape[0], self.values.shape[1]

    @property
    def pixel_area(self) -> float:
        return abs(self.dx * self.dy)

    @cached_property
    def _prepared(self) -> tuple[np.ndarray, np.ndarray]:
        """(values with 0 at invalid pixels, C-contiguous float32; valid mask)."""
        if self.values.dtype == np.int8:
            return aef.decode(self.values)
        if self.valid is not None:
            return np.ascontiguousarray(self.values, dtype=np.float32), self.valid
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


def coverage(
    cx: np.ndarray, cy: np.ndarray, r: float, x_edges: np.ndarray, y_edges: np.ndarray
) -> np.ndarray:
    """Area of each pixel inside each circle: (P, ny, nx) from edges (P, ny+1) and (P, nx+1).

    Edges may decrease (north-up rows); areas are returned positive, in map units². The
    area is analytic: inclusion–exclusion of the signed quadrant areas at the four corners.
    """
    from aether.core import compiled

    f64 = np.float64
    return compiled.coverage(np.asarray(cx, f64), np.asarray(cy, f64), float(r),
                             np.asarray(x_edges, f64), np.asarray(y_edges, f64))


def partial_sums(block: PixelBlock, x: np.ndarray, y: np.ndarray, radius: float) -> Partial:
    """Sum of coverage-weighted pixel vectors of circles (x, y, radius) over one block.

    Pixels of a circle that fall outside the block contribute nothing here; another
    block's partial sums add them. Coordinates are in the block's crs.
    """
    return radii_partial_sums(block, x, y, [radius])[0]


def radii_partial_sums(
    block: PixelBlock, x: np.ndarray, y: np.ndarray, radii: list[float]
) -> list[Partial]:
    """``partial_sums`` for several radii around the same centres, one Partial per radius.

    The block is cut into parts of at most ``PART_PX`` a side (their row prefix sums stay
    small, precise in float32 and in cache); each circle of each radius then reads its
    rows' sums from its part's prefix sums (``compiled.circle_sums``).
    """
    from aether.core import compiled

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    h, w = block.shape
    n_bands = block.values.shape[-1]
    outs = [Partial.zeros(len(x), n_bands) for _ in radii]
    live = [k for k, r in enumerate(radii) if r > 0]
    if len(x) == 0 or not live:
        return outs
    quantised = block.values.dtype == np.int8
    vals, valid = (block.values, block.valid) if quantised else block._prepared
    assert valid is not None
    c0, r0, nx, ny = _window(block, x, y, max(radii[k] for k in live))
    for pr in range(0, h, PART_PX):
        for pc in range(0, w, PART_PX):
            ph, pw = min(PART_PX, h - pr), min(PART_PX, w - pc)
            sel = np.flatnonzero((c0 + nx > pc) & (c0 < pc + pw) & (r0 + ny > pr) & (r0 < pr + ph))
            if len(sel) == 0:
                continue
            part = PixelBlock(vals[pr : pr + ph, pc : pc + pw], block.x0 + pc * block.dx,
                              block.y0 + pr * block.dy, block.dx, block.dy,
                              valid[pr : pr + ph, pc : pc + pw])
            prefix = _row_prefix(part, r0[sel] - pr, ny, x[sel], max(radii[k] for k in live))
            for k in live:
                compiled.circle_sums(*prefix, part.x0, part.y0, part.dx, part.dy, x[sel],
                                     y[sel], sel, float(radii[k]), outs[k].weighted_sum,
                                     outs[k].valid_weight)
    if quantised:  # the sums are of q·|q|: one division decodes them
        for k in live:
            outs[k].weighted_sum /= aef.DEQUANT_SCALE
    return outs


def _touched_rows(r0: np.ndarray, ny: int, h: int) -> list[tuple[int, int]]:
    """Runs ``[a, b)`` of the part's rows some circle's window covers: the only rows whose
    prefix sums are read."""
    edge = np.zeros(h + 1, np.int64)
    np.add.at(edge, np.clip(r0, 0, h), 1)
    np.add.at(edge, np.clip(r0 + ny, 0, h), -1)
    on = np.concatenate([[0], (np.cumsum(edge[:-1]) > 0).view(np.int8), [0]])
    cuts = np.flatnonzero(np.diff(on))
    return list(zip(cuts[::2].tolist(), cuts[1::2].tolist(), strict=True))


def _row_prefix(part: PixelBlock, r0: np.ndarray, ny: int, cx: np.ndarray, radius: float
                ) -> tuple[np.ndarray, np.ndarray]:
    """Prefix sums along rows: ``(h, w + 1, B)`` float32 of the values, ``(h, w + 1)`` float64
    of the valid mask; the sum of row ``r``'s columns ``a..b-1`` is ``S[r, b] − S[r, a]``.

    Only what circles (centres ``cx``, windows from row ``r0``, ``ny`` rows) read is made: the
    rows they cover, a few at a time, and in those rows the columns between the circles'
    leftmost and rightmost reach (sums start at 0 there; a difference is the same). The
    rest is never read. Stored int8 values are summed as the integers ``q·|q|`` (0 where not
    valid), decoded in this one pass: at most 256 × 127² a row, exact in float32.
    """
    from aether.core import compiled

    vals, valid = part.values, part.valid
    assert valid is not None
    h, w, nb = vals.shape
    s = np.empty((h, w + 1, nb), dtype=np.float32)
    if part.dx > 0:
        u = (cx - part.x0) / part.dx  # centres in column units
        reach = radius / part.dx + 1  # a column more than any chord reaches
        lo_c = np.clip(np.floor(u - reach), 0, w).astype(np.int64)
        hi_c = np.clip(np.ceil(u + reach), 0, w).astype(np.int64)
    else:  # columns running west: whole rows
        lo_c, hi_c = np.zeros(len(cx), np.int64), np.full(len(cx), w, np.int64)
    runs = _touched_rows(r0, ny, h)
    chunks = [(a, min(a + PREFIX_ROWS, b)) for r, b in runs for a in range(r, b, PREFIX_ROWS)]
    bounds = np.empty((len(chunks), 4), np.int64)
    for k, (a, b) in enumerate(chunks):  # each chunk's columns: its circles' reach
        near = (r0 < b) & (r0 + ny > a)
        bounds[k] = a, b, lo_c[near].min(), hi_c[near].max()
    compiled.row_prefix(vals, valid, bounds, vals.dtype == np.int8, s)
    sv = np.zeros((h, w + 1))
    np.cumsum(valid, axis=1, out=sv[:, 1:])
    return s, sv


def _window(
    block: PixelBlock, x: np.ndarray, y: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """First column and row whose pixel may touch each circle, and the window's size. Either
    edge of the circle may be the first: columns run west when ``dx`` < 0, rows north when
    ``dy`` < 0."""
    nx = int(np.ceil(2 * radius / abs(block.dx))) + 1
    ny = int(np.ceil(2 * radius / abs(block.dy))) + 1
    c_a = np.floor((x - radius - block.x0) / block.dx)
    c_b = np.floor((x + radius - block.x0) / block.dx)
    r_a = np.floor((y - radius - block.y0) / block.dy)
    r_b = np.floor((y + radius - block.y0) / block.dy)
    return (np.minimum(c_a, c_b).astype(np.int64), np.minimum(r_a, r_b).astype(np.int64),
            nx, ny)


def finalize(partial: Partial, radius: float, pixel_area: float) -> Means:
    """Means of circular buffers from their combined partial sums."""
    return finalize_area(partial, np.pi * radius * radius / pixel_area)


def finalize_area(
    partial: Partial, area_px: float | np.ndarray, *, in_place: bool = False
) -> Means:
    """Means, weights, valid fractions and norms; ``area_px`` is each region's area in pixels.

    A region with no valid pixel keeps a NaN vector and valid_fraction 0: never zero-filled.
    Rows go in chunks (float64 temporaries stay small); ``in_place`` writes the means over
    float32 sums, so a million regions' means take no second copy.
    """
    vw = partial.valid_weight
    ws = partial.weighted_sum
    inplace = in_place and ws.dtype == np.float32
    mean = ws if inplace else np.empty(ws.shape, np.float32)
    norm = np.empty(len(vw))
    for s in range(0, len(vw), FINALIZE_ROWS):
        rows = slice(s, s + FINALIZE_ROWS)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[rows] = ws[rows] / vw[rows, None]
        mean[rows][vw[rows] <= 0] = np.nan
        norm[rows] = np.linalg.norm(mean[rows].astype(np.float64), axis=1)
    return Means(
        mean=mean,
        weight=vw.astype(np.float64),
        valid_fraction=np.clip(vw / area_px, 0.0, 1.0),
        norm=norm,
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
    generalisation of the circle coverage above, used for square windows and grid cells).
    A bare point takes the pixel it falls in.
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
