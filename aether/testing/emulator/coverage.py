"""Which pixels of a grid a region covers, and with what weight, as Earth Engine decides it.

The rules are those of the "Reduce Region" and "Weighted reductions" guides
(developers.google.com/earth-engine/guides/reducers_reduce_region#pixels-in-the-region and
/reducers_weighting): a *weighted* reducer takes a pixel when at least (approximately) 0.5%
of it lies in the region, weighted by that fraction held as an 8-bit integer (0..255, so a
fraction below ~1/256 rounds down to 0); an *unweighted* reducer takes a pixel, with weight
1, when its centre lies in the region. Fractions are polygon ∩ pixel areas from shapely,
computed in the working projection; pixels wholly inside skip the clipping.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: A weighted reducer ignores pixels less covered than this (the guide's "approximately 0.5%").
MIN_COVERAGE = 0.005
#: Weights are held as 8-bit integers: fractions are quantised to 1/255, rounding down.
WEIGHT_LEVELS = 255


def quantise(fraction: np.ndarray) -> np.ndarray:
    """Coverage fractions as EE's weights: floor(255 f) / 255, 0 under the minimum coverage."""
    # the epsilon absorbs float noise of reprojected vertices (a full pixel stays 255/255)
    q = np.floor(WEIGHT_LEVELS * np.asarray(fraction, dtype=np.float64) + 1e-6) / WEIGHT_LEVELS
    return np.where(np.asarray(fraction) >= MIN_COVERAGE, q, 0.0)


def pixel_weights(region: Any, transform: tuple[float, ...], width: int, height: int,
                  weighted: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, weights) of the pixels of a north-up grid that ``region`` takes.

    ``region`` is a shapely geometry in the grid's crs; ``transform`` its affine (a, b, c, d,
    e, f) with b = d = 0. Only pixels with a non-zero weight are returned.
    """
    import shapely

    a, _, c, _, e, f = transform
    xmin, ymin, xmax, ymax = region.bounds
    c0 = max(0, math.floor((xmin - c) / a))
    c1 = min(width, math.ceil((xmax - c) / a))
    r0 = max(0, math.floor((ymax - f) / e))
    r1 = min(height, math.ceil((ymin - f) / e))
    empty = np.empty(0, dtype=np.int64)
    if c0 >= c1 or r0 >= r1:
        return empty, empty, np.empty(0)
    grid_r, grid_c = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    rows, cols = grid_r.ravel(), grid_c.ravel()
    x0, y0 = c + a * cols, f + e * rows
    shapely.prepare(region)
    if not weighted:
        keep = shapely.contains_xy(region, x0 + a / 2, y0 + e / 2)
        return rows[keep], cols[keep], np.ones(int(keep.sum()))
    frac = np.ones(len(rows))
    edge = ~_wholly_inside(region, a, c, e, f, r0, r1, c0, c1).ravel()
    if edge.any():
        # the vectorised GEOS rectangle clip behind shapely.clip_by_rect (whose wrapper takes
        # one rectangle): exact polygon ∩ pixel areas, ~25x faster than a general intersection
        xs, ys = x0[edge], y0[edge]
        frac[edge] = shapely.area(shapely.lib.clip_by_rect(region, xs, ys + e, xs + a, ys)
                                  ) / abs(a * e)
    w = quantise(np.minimum(frac, 1.0))
    keep = w > 0
    return rows[keep], cols[keep], w[keep]


def _wholly_inside(region: Any, a: float, c: float, e: float, f: float, r0: int, r1: int,
                   c0: int, c1: int) -> np.ndarray:
    """(rows, cols) mask of the window's pixels certainly inside ``region``.

    A pixel whose four corners are strictly inside and which holds no vertex of the region
    is wholly inside: a straight edge entering it would have to separate its corners.
    """
    import shapely

    xs = c + a * np.arange(c0, c1 + 1)
    ys = f + e * np.arange(r0, r1 + 1)
    gx, gy = np.meshgrid(xs, ys)
    corner = shapely.contains_xy(region, gx, gy)
    inside = corner[:-1, :-1] & corner[1:, :-1] & corner[:-1, 1:] & corner[1:, 1:]
    v = shapely.get_coordinates(region)
    vc = np.floor((v[:, 0] - c) / a).astype(np.int64) - c0
    vr = np.floor((v[:, 1] - f) / e).astype(np.int64) - r0
    for dr in (-1, 0, 1):  # a vertex on a pixel side or corner touches the neighbours too
        for dc in (-1, 0, 1):
            rr, cc = vr + dr, vc + dc
            ok = (rr >= 0) & (rr < r1 - r0) & (cc >= 0) & (cc < c1 - c0)
            inside[rr[ok], cc[ok]] = False
    return inside
