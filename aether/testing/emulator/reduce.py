"""``reduceRegions`` / ``reduceRegion`` from the polygons Earth Engine would build.

EE semantics copied: the reduction runs in a *working projection* (the given ``crs`` /
``crsTransform`` / ``scale``, else the image's default projection, which for a mosaic is
EPSG:4326 at 1°); each region is the polygon of its geometry moved into that projection, and
pixels take part by ``coverage.pixel_weights`` (fractional 8-bit weights for weighted
reducers, pixel centres for ``unweighted()``); each band is reduced under its own mask;
outputs are named after the bands, or after the reducer for a single-band image. Nothing
here comes from aether's own zonal kernel: the emulator is the oracle it is checked against.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np

from aether.testing.emulator.coverage import pixel_weights
from aether.testing.emulator.geometry import reproject
from aether.testing.emulator.values import (
    METERS_PER_DEGREE,
    Coll,
    EEError,
    Feat,
    Grid,
    Img,
    Projection,
    Reducer,
    is_geographic,
)

#: Side of the square cell (in pixels) that features are grouped by: one read per cell.
CELL_PIXELS = 256
#: EE's default maxPixels of a region reduction.
MAX_PIXELS = 1e8
#: The emulator's compute price (EECU-seconds) of one band of one pixel reduced in a region,
#: and of one feature: a model, deterministic so budgets can be tested; real EE meters
#: its own servers' time.
EECU_S_PER_BAND_PIXEL = 1e-6
EECU_S_PER_FEATURE = 1e-3

_METER: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "emulator_eecu", default=None)


@contextlib.contextmanager
def metered() -> Iterator[list[float]]:
    """Add up the EECU-seconds of the reductions evaluated in the block (one number)."""
    total = [0.0]
    token = _METER.set(total)
    try:
        yield total
    finally:
        _METER.reset(token)


def working_projection(img: Img, scale: float | None, crs: Any, crs_transform: Any
                       ) -> Projection:
    """The projection a reduction runs in, as EE picks it."""
    if isinstance(crs, Projection):
        base = crs
    elif isinstance(crs, str):
        base = Projection(crs, (1.0, 0, 0, 0, -1.0, 0))
    else:
        base = img.projection
    if crs_transform is not None:
        t = tuple(float(v) for v in crs_transform)
        if len(t) != 6:
            raise EEError("crsTransform must have 6 elements.")
        return Projection(base.crs, t)
    if scale is not None:
        if scale <= 0:
            raise EEError(f"Invalid scale: {scale}.")
        step = scale / METERS_PER_DEGREE if is_geographic(base.crs) else float(scale)
        return Projection(base.crs, (step, 0, 0, 0, -step, 0))
    return base


def _flat(reducer: Reducer) -> list[tuple[str, str, bool]]:
    """(kind, output name, weighted) of each leaf reducer."""
    if reducer.kind == "combine":
        return [leaf for p in reducer.parts for leaf in _flat(p)]
    if reducer.kind not in ("mean", "sum"):
        raise EEError(f"Emulator: Reducer.{reducer.kind} is not supported in region reductions")
    return [(reducer.kind, reducer.outputs[0], reducer.weighted)]


def _window(proj: Projection, xmin: float, ymin: float, xmax: float, ymax: float) -> Grid:
    """The smallest grid of the working projection covering a box."""
    a, _, c, _, e, f = proj.transform
    c0, c1 = np.floor((xmin - c) / a), np.ceil((xmax - c) / a)
    r0, r1 = np.floor((ymax - f) / e), np.ceil((ymin - f) / e)
    c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
    return Grid(proj.crs, (a, 0.0, c + c0 * a, 0.0, e, f + r0 * e), int(c1 - c0), int(r1 - r0))


def _reduce_one(values: np.ndarray, grid: Grid, region: Any, weighted: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean and weighted sum (B,) of one region over a window's values."""
    rows, cols, w = pixel_weights(region, grid.transform, grid.width, grid.height, weighted)
    meter = _METER.get()
    if meter is not None:
        meter[0] += EECU_S_PER_FEATURE + EECU_S_PER_BAND_PIXEL * len(w) * values.shape[-1]
    v = values[rows, cols].astype(np.float64)  # (k, B)
    valid = ~np.isnan(v)
    wm = w[:, None] * valid
    total = (wm * np.where(valid, v, 0.0)).sum(axis=0)
    wsum = wm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(wsum > 0, total / wsum, np.nan)
    return mean, total


def reduce_regions(img: Img, coll: Coll, reducer: Reducer, scale: float | None = None,
                   crs: Any = None, crs_transform: Any = None, keep_null: bool = False
                   ) -> Coll:
    """EE ``Image.reduceRegions``: one output feature per input, reducer outputs added."""
    leaves = _flat(reducer)
    proj = working_projection(img, scale, crs, crs_transform)
    feats = [f for f in coll.items if isinstance(f, Feat)]
    if any(f.geom is None for f in feats):
        raise EEError("Image.reduceRegions: Feature has no geometry.")
    shapes = [reproject(f.geom.shape, "EPSG:4326", proj.crs) for f in feats]  # type: ignore[union-attr]
    cell = CELL_PIXELS * proj.scale
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(shapes):
        x0, y0, x1, y1 = s.bounds
        groups[(int((x0 + x1) // (2 * cell)), int((y0 + y1) // (2 * cell)))].append(i)
    modes = sorted({weighted for _, _, weighted in leaves})
    n_b = len(img.bands)
    out = {m: (np.full((len(feats), n_b), np.nan), np.zeros((len(feats), n_b))) for m in modes}
    for idx in groups.values():
        bb = np.array([shapes[i].bounds for i in idx])
        grid = _window(proj, bb[:, 0].min(), bb[:, 1].min(), bb[:, 2].max(), bb[:, 3].max())
        if grid.width * grid.height > MAX_PIXELS:
            raise EEError(f"Too many pixels in the region. Found {grid.width * grid.height}, "
                          "but maxPixels allows 1e8.")
        values = img.read(grid)
        for i in idx:
            for m in modes:
                out[m][0][i], out[m][1][i] = _reduce_one(values, grid, shapes[i], m)
    names = _output_names(img.bands, leaves)
    rows = np.concatenate([out[w][0] if kind == "mean" else out[w][1]
                           for kind, _, w in leaves], axis=1)
    # a reducer without input (mean of masked pixels) is null: reduceRegions leaves the
    # property out, reduceRegion keeps the key with null
    result = [Feat(f.geom, {**f.props, **{k: v if v == v else None
                                          for k, v in zip(names, row, strict=True)
                                          if keep_null or v == v}}, f.id)
              for f, row in zip(feats, rows.tolist(), strict=True)]
    return Coll(result, "FeatureCollection", dict(coll.props))


def _output_names(bands: list[str], leaves: list[tuple[str, str, bool]]) -> list[str]:
    """EE naming: band names; the reducer's name for one band; ``band_output`` for several."""
    if len(bands) == 1:
        return [name for _, name, _ in leaves]
    if len(leaves) == 1:
        return list(bands)
    return [f"{b}_{name}" for _, name, _ in leaves for b in bands]
