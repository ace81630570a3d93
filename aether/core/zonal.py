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
#: Rows of a part whose prefix sums are made at once (4 MB of float32 at 256 × 64 bands).
PREFIX_ROWS = 64
#: Circles per sparse product: its index arrays stay ~25 MB per thread (200 m circles), so
#: they are reused rather than held (2048 cost ~100 MB more peak at a million POIs).
BATCH_CIRCLES = 512


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


def _disk_quadrant_area(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed area of {disk(0, r)} ∩ [0, x] × [0, y]; odd in x and in y.

    Inclusion–exclusion of this function at a pixel's four corners gives the exact area
    of the pixel inside the circle.
    """
    return _quadrant(_x_terms(x, r), _y_terms(y, r))


def _prim(t: np.ndarray, r: float) -> np.ndarray:
    """∫_0^t sqrt(r² − s²) ds."""
    return 0.5 * (t * np.sqrt(np.maximum(r * r - t * t, 0.0)) + r * r * np.arcsin(t / r))


def _x_terms(x: np.ndarray, r: float) -> tuple[np.ndarray, ...]:
    """What the quadrant area needs of x alone (shared by a pixel column's corners)."""
    ax = np.minimum(np.abs(x), r)
    return np.sign(x), ax, _prim(ax, r)


def _y_terms(y: np.ndarray, r: float) -> tuple[np.ndarray, ...]:
    """What it needs of y alone: |y|, and where the circle's height equals it (shared by
    a pixel row's corners)."""
    ay = np.minimum(np.abs(y), r)
    xs = np.sqrt(r * r - ay * ay)
    return np.sign(y), ay, xs, _prim(xs, r)


def _quadrant(xt: tuple[np.ndarray, ...], yt: tuple[np.ndarray, ...]) -> np.ndarray:
    sx, ax, pa = xt
    sy, ay, xs, ps = yt
    return sx * sy * np.where(ax <= xs, ax * ay, xs * ay + pa - ps)


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
    block's partial sums add them. Coordinates are in the block's crs.
    """
    return radii_partial_sums(block, x, y, [radius])[0]


def radii_partial_sums(
    block: PixelBlock, x: np.ndarray, y: np.ndarray, radii: list[float]
) -> list[Partial]:
    """``partial_sums`` for several radii around the same centres, one Partial per radius.

    The block is cut into parts of at most ``PART_PX`` a side (their row prefix sums stay
    small, precise in float32 and in cache); each part's sums of every radius are one
    sparse product.
    """
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
            for s in range(0, len(sel), BATCH_CIRCLES):
                batch = sel[s : s + BATCH_CIRCLES]
                sums, vw = _part_sums(part, prefix, x[batch], y[batch], [radii[k] for k in live])
                for j, k in enumerate(live):
                    rows = slice(j * len(batch), (j + 1) * len(batch))
                    outs[k].weighted_sum[batch] += sums[rows]
                    outs[k].valid_weight[batch] += vw[rows]
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
    chunks = ((a, min(a + PREFIX_ROWS, b)) for r, b in runs for a in range(r, b, PREFIX_ROWS))
    for a, b in chunks:  # a few rows at a time: each chunk stays in cache through its passes
        near = (r0 < b) & (r0 + ny > a)
        c_lo, c_hi = int(lo_c[near].min()), int(hi_c[near].max())
        run = s[a:b, c_lo : c_hi + 1]
        run[:, 0] = 0
        body = run[:, 1:]
        np.copyto(body, vals[a:b, c_lo:c_hi], casting="unsafe")
        if vals.dtype == np.int8:
            np.multiply(body, np.abs(body), out=body)
            bad = ~valid[a:b, c_lo:c_hi]
            if bad.any():
                body[bad] = 0
        for c in range(1, c_hi - c_lo):  # in place, column by column: no temporary
            run[:, c + 1] += run[:, c]
    sv = np.zeros((h, w + 1))
    np.cumsum(valid, axis=1, out=sv[:, 1:])
    return s, sv


def _part_sums(
    part: PixelBlock, prefix: tuple[np.ndarray, np.ndarray], cx: np.ndarray, cy: np.ndarray,
    radii: list[float],
) -> tuple[np.ndarray, np.ndarray]:
    """(circles·radii, B) float64 weighted sums and (circles·radii,) valid weights.

    A circle covers, per pixel row, a run of whole pixels (weight 1) between two short runs
    of cut pixels (its boundary ring, exact analytic area). A run costs two entries on the
    row prefix sums and a cut pixel two: about 2·(8r + 2r)/px entries per circle instead of
    πr²/px². The valid mask is summed with the same entries in float64 (fractions stay
    exact to 1e-12), the bands in float32.
    """
    from scipy.sparse import csr_matrix

    s, sv = prefix
    h, w = part.shape
    flat, flat_valid = s.reshape(h * (w + 1), -1), sv.reshape(-1)
    n = len(cx)
    sums = np.zeros((n * len(radii), flat.shape[1]))
    vw = np.zeros(n * len(radii))
    for k, r in enumerate(radii):
        rows = slice(k * n, (k + 1) * n)
        for circle, index, coef in _circle_entries(part, cx, cy, r):  # runs, then cut pixels
            indptr = np.concatenate([[0], np.cumsum(np.bincount(circle, minlength=n))])
            m = csr_matrix((coef, index, indptr), shape=(n, len(flat_valid)))
            vw[rows] += m @ flat_valid
            m.data = coef.astype(np.float32)
            sums[rows] += m @ flat
    return sums, vw


def _circle_entries(
    part: PixelBlock, cx: np.ndarray, cy: np.ndarray, r: float
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(circle, prefix index, coefficient) of the circles' sums over ``part``, sorted by
    circle: one triple for the whole-pixel runs, one for the cut pixels."""
    h, w = part.shape
    dx, dy = part.dx, part.dy
    _, r0, _, ny = _window(part, cx, cy, r)
    rows = r0[:, None] + np.arange(ny)  # (P, ny)
    yl = part.y0 + rows * dy - cy[:, None]
    yh = yl + dy
    near_y2 = np.where(yl * yh <= 0, 0.0, np.minimum(yl * yl, yh * yh))
    far_y2 = np.maximum(yl * yl, yh * yh)
    r2 = r * r
    on = (rows >= 0) & (rows < h) & (near_y2 < r2)
    u = ((cx - part.x0) / dx)[:, None]  # the centre in column units
    ht = np.sqrt(np.maximum(r2 - near_y2, 0.0)) / abs(dx)  # half chord touching the row
    hf = np.sqrt(np.maximum(r2 - far_y2, 0.0)) / abs(dx)  # half chord across the whole row
    t0 = np.floor(u - ht).astype(np.int64)
    t1 = np.ceil(u + ht).astype(np.int64) - 1
    full = far_y2 <= r2
    f0 = np.where(full, np.ceil(u - hf), t1 + 1).astype(np.int64)
    f1 = np.where(full, np.floor(u + hf) - 1, t1).astype(np.int64)
    f1 = np.maximum(f1, f0 - 1)  # a chord shorter than a pixel: no whole pixel, no overlap
    t0c, t1c = np.clip(t0, 0, w), np.clip(t1, -1, w - 1)
    f0c, f1c = np.clip(f0, 0, w), np.clip(f1, -1, w - 1)
    n_left = np.where(on, np.maximum(np.minimum(f0c, t1c + 1) - t0c, 0), 0)
    right0 = np.maximum(f1c + 1, 0)
    n_right = np.where(on, np.maximum(t1c - right0 + 1, 0), 0)
    base = np.clip(rows, 0, h - 1) * (w + 1)
    # whole-pixel runs: +S[f1 + 1] − S[f0]
    pi, ri = np.nonzero(on & (f0c <= f1c))
    run_i = np.stack([base[pi, ri] + f1c[pi, ri] + 1, base[pi, ri] + f0c[pi, ri]], 1).ravel()
    run_w = np.tile([1.0, -1.0], len(pi))
    # cut pixels, row by row: the run left of the whole pixels, then the one right of them
    counts = np.stack([n_left, n_right], -1).ravel()
    starts = np.stack([t0c, right0], -1).ravel()
    seg = np.repeat(np.arange(len(counts)), counts)
    col = starts[seg] + np.arange(len(seg)) - np.repeat(np.cumsum(counts) - counts, counts)
    row = seg // 2  # flat (circle, window row)
    p = row // ny
    xl = part.x0 + col * dx - cx[p]
    xa, xb = _x_terms(xl, r), _x_terms(xl + dx, r)  # two arcsines per cut pixel, not eight
    ya, yb = (tuple(t.ravel().take(row) for t in _y_terms(v, r)) for v in (yl, yh))
    q = _quadrant
    area = q(xb, yb) - q(xa, yb) - q(xb, ya) + q(xa, ya)
    frac = np.abs(area) / part.pixel_area
    at = base.ravel().take(row) + col
    cut_i = np.stack([at + 1, at], 1).ravel()
    cut_w = np.stack([frac, -frac], 1).ravel()
    return [(np.repeat(pi, 2), run_i, run_w), (np.repeat(p, 2), cut_i, cut_w)]


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
