"""The circle kernel's pixel loops, compiled (numba): row prefix sums, the circles' sums
read from them, and the analytic area of a pixel inside a circle.

In numpy each loop was a pass over temporaries (a float32 copy of the window, its square, a
column-by-column running sum; index arrays and a sparse matrix per batch of circles, eight
arcsines' worth of arrays per cut pixel); compiled, each pixel is read once into a running
sum and each circle walks its own rows, which is what brings extraction towards the cost of
inflating the blocks. ``nogil`` lets Dask's threads run them side by side; ``cache`` keeps
the machine code beside this module: the signatures are explicit, so the first import on a
machine compiles them (about 3 s) and later imports load them (about 0.5 s). mutmut leaves
decorated functions alone: these are checked by the tests of ``aether.core.zonal`` against
shapely's areas and exactextract, not by mutants.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(["void(int8[:, :, :], boolean[:, :], int64[:, ::1], boolean, float32[:, :, ::1])",
       "void(float32[:, :, :], boolean[:, :], int64[:, ::1], boolean, float32[:, :, ::1])"],
      cache=True, nogil=True)
def row_prefix(vals: np.ndarray, valid: np.ndarray, chunks: np.ndarray, squared: bool,
               out: np.ndarray) -> None:
    """Fill ``out[r, c_lo : c_hi + 1]`` with the running sums of row ``r``'s values from
    column ``c_lo`` (0 first), for each chunk ``(a, b, c_lo, c_hi)`` of rows ``a..b-1``.

    Invalid pixels add 0; ``squared`` adds ``v·|v|`` (stored AlphaEarth integers: exact in
    float32 up to 2^24, i.e. 1,040 px of ±127 a row) instead of ``v``.
    """
    nb = vals.shape[2]
    acc = np.empty(nb, np.float32)
    for k in range(chunks.shape[0]):
        a, b, c_lo, c_hi = chunks[k, 0], chunks[k, 1], chunks[k, 2], chunks[k, 3]
        for r in range(a, b):
            acc[:] = 0
            out[r, c_lo, :] = 0
            for c in range(c_lo, c_hi):
                if valid[r, c]:
                    if squared:
                        for j in range(nb):
                            v = np.float32(vals[r, c, j])
                            acc[j] += v * abs(v)
                    else:
                        for j in range(nb):
                            acc[j] += np.float32(vals[r, c, j])
                for j in range(nb):
                    out[r, c + 1, j] = acc[j]


@njit(cache=True, nogil=True)
def _prim(t: float, r: float) -> float:
    """∫_0^t sqrt(r² − s²) ds, for 0 ≤ t ≤ r."""
    return 0.5 * (t * math.sqrt(max(r * r - t * t, 0.0)) + r * r * math.asin(t / r))


@njit(cache=True, nogil=True)
def _x_side(x: float, r: float) -> tuple[float, float, float]:
    """What the quadrant area needs of a pixel column's edge x alone (shared by the pixels
    on either side of it): its sign, min(|x|, r) and the primitive there."""
    ax = min(abs(x), r)
    return np.sign(x), ax, _prim(ax, r)


@njit(cache=True, nogil=True)
def _y_side(y: float, r: float) -> tuple[float, float, float, float]:
    """What it needs of a row edge y alone: its sign, min(|y|, r), the x where the circle's
    height is |y|, and the primitive there."""
    ay = min(abs(y), r)
    xs = math.sqrt(r * r - ay * ay)
    return np.sign(y), ay, xs, _prim(xs, r)


@njit(cache=True, nogil=True)
def _quadrant(xt: tuple[float, float, float], yt: tuple[float, float, float, float]) -> float:
    """Signed area of disk(0, r) ∩ [0, x] × [0, y]; odd in x and in y. Inclusion–exclusion
    at a pixel's four corners gives the exact area of the pixel inside the circle."""
    sx, ax, pa = xt
    sy, ay, xs, ps = yt
    return sx * sy * (ax * ay if ax <= xs else xs * ay + pa - ps)


@njit("float64[:, :, ::1](float64[::1], float64[::1], float64, float64[:, :], float64[:, :])",
      cache=True, nogil=True)
def coverage(cx: np.ndarray, cy: np.ndarray, r: float, x_edges: np.ndarray,
             y_edges: np.ndarray) -> np.ndarray:
    """Area of each pixel inside each circle: (P, ny, nx) from edges (P, ny+1) and (P, nx+1);
    edges may decrease (north-up rows); areas are positive, in map units²."""
    n, ny, nx = len(cx), y_edges.shape[1] - 1, x_edges.shape[1] - 1
    out = np.empty((n, ny, nx))
    for p in range(n):
        for i in range(ny):
            ya, yb = _y_side(y_edges[p, i] - cy[p], r), _y_side(y_edges[p, i + 1] - cy[p], r)
            xa = _x_side(x_edges[p, 0] - cx[p], r)
            for k in range(nx):
                xb = _x_side(x_edges[p, k + 1] - cx[p], r)
                out[p, i, k] = abs(_quadrant(xb, yb) - _quadrant(xa, yb)
                                   - _quadrant(xb, ya) + _quadrant(xa, ya))
                xa = xb
    return out


@njit("void(float32[:, :, ::1], float64[:, ::1], float64, float64, float64, float64, "
      "float64[::1], float64[::1], int64[::1], float64, float64[:, ::1], float64[::1])",
      cache=True, nogil=True)
def circle_sums(s: np.ndarray, sv: np.ndarray, x0: float, y0: float, dx: float, dy: float,
                cx: np.ndarray, cy: np.ndarray, at: np.ndarray, r: float,
                sums: np.ndarray, vw: np.ndarray) -> None:
    """Add circle ``p``'s (centre ``cx[p], cy[p]``, radius ``r``) coverage-weighted sums over
    a part to ``sums[at[p]]`` (bands) and ``vw[at[p]]`` (valid pixels, in pixel areas).

    ``s``/``sv`` are the part's row prefix sums of values and valid mask, ``(h, w + 1, B)``
    and ``(h, w + 1)``; the part's pixel (row, col) spans ``x0 + col·dx`` to ``+ dx`` and
    ``y0 + row·dy`` to ``+ dy``. Per pixel row a circle covers a run of whole pixels (two
    reads of the prefix sums) between two short runs of cut pixels (their exact area).
    """
    h, w = sv.shape[0], sv.shape[1] - 1
    nb = s.shape[2]
    r2, area, reach = r * r, abs(dx * dy), r / abs(dx)
    acc = np.empty(nb)
    edge = np.empty((2 * math.ceil(reach) + 4, 3))  # x terms of the circle's column edges
    for p in range(len(cx)):
        u = (cx[p] - x0) / dx  # the centre in column units
        e0, e1 = max(math.floor(u - reach), 0), min(math.ceil(u + reach), w)
        for e in range(e0, e1 + 1):  # each edge's arcsine once, for every row that cuts it
            edge[e - e0, 0], edge[e - e0, 1], edge[e - e0, 2] = _x_side(x0 + e * dx - cx[p], r)
        ra, rb = math.floor((cy[p] - r - y0) / dy), math.floor((cy[p] + r - y0) / dy)
        acc[:] = 0
        weight = 0.0
        last = -2  # the row whose far edge's y terms ``yb`` hold: the next row's near edge
        yb = (0.0, 0.0, 0.0, 0.0)
        for row in range(max(min(ra, rb), 0), min(max(ra, rb) + 1, h)):
            yl = y0 + row * dy - cy[p]
            yh = yl + dy
            near_y2 = 0.0 if yl * yh <= 0 else min(yl * yl, yh * yh)
            if near_y2 >= r2:
                continue
            far_y2 = max(yl * yl, yh * yh)
            ht = math.sqrt(r2 - near_y2) / abs(dx)  # half chord touching the row
            t0, t1 = math.floor(u - ht), math.ceil(u + ht) - 1
            if far_y2 <= r2:  # whole pixels where the chord spans the row's height
                hf = math.sqrt(r2 - far_y2) / abs(dx)
                f0, f1 = math.ceil(u - hf), math.floor(u + hf) - 1
            else:
                f0, f1 = t1 + 1, t1
            f1 = max(f1, f0 - 1)  # a chord shorter than a pixel: no whole pixel
            t0, t1 = min(max(t0, 0), w), min(max(t1, -1), w - 1)
            f0, f1 = min(max(f0, 0), w), min(max(f1, -1), w - 1)
            if f0 <= f1:
                weight += sv[row, f1 + 1] - sv[row, f0]
                for j in range(nb):
                    acc[j] += s[row, f1 + 1, j] - s[row, f0, j]
            ya = yb if row == last + 1 else _y_side(yl, r)
            yb, last = _y_side(yh, r), row
            for lo, hi in ((t0, min(f0, t1 + 1)), (max(f1 + 1, 0), t1 + 1)):  # cut pixels
                for col in range(lo, hi):
                    xa = (edge[col - e0, 0], edge[col - e0, 1], edge[col - e0, 2])
                    xb = (edge[col + 1 - e0, 0], edge[col + 1 - e0, 1], edge[col + 1 - e0, 2])
                    frac = abs(_quadrant(xb, yb) - _quadrant(xa, yb)
                               - _quadrant(xb, ya) + _quadrant(xa, ya)) / area
                    weight += frac * (sv[row, col + 1] - sv[row, col])
                    for j in range(nb):
                        acc[j] += frac * (s[row, col + 1, j] - s[row, col, j])
        vw[at[p]] += weight
        for j in range(nb):
            sums[at[p], j] += acc[j]
