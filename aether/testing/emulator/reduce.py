"""``reduceRegions`` / ``reduceRegion`` through the project's zonal kernel.

EE semantics copied: the reduction runs in a *working projection* (the given ``crs`` /
``crsTransform`` / ``scale``, else the image's default projection, which for a mosaic is
EPSG:4326 at 1°); pixels count by the fraction of their area inside the region (weighted
``Reducer.mean`` / ``Reducer.sum``); each band is reduced under its own mask; outputs are
named after the bands, or after the reducer for a single-band image.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from aether.core import zonal
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
        return Projection(base.crs, t)  # type: ignore[arg-type]
    if scale is not None:
        if scale <= 0:
            raise EEError(f"Invalid scale: {scale}.")
        step = scale / METERS_PER_DEGREE if is_geographic(base.crs) else float(scale)
        return Projection(base.crs, (step, 0, 0, 0, -step, 0))
    return base


def _flat(reducer: Reducer) -> list[tuple[str, str]]:
    """(kind, output name) of each leaf reducer."""
    if reducer.kind == "combine":
        return [leaf for p in reducer.parts for leaf in _flat(p)]
    if reducer.kind not in ("mean", "sum"):
        raise EEError(f"Emulator: Reducer.{reducer.kind} is not supported in region reductions")
    return [(reducer.kind, reducer.outputs[0])]


def _to_crs(geoms: list[Any], crs: str) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Circle centres (x, y; NaN for non-circles) and shapes transformed into ``crs``."""
    import shapely
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    lon = np.array([g.circle[0] if g.circle else np.nan for g in geoms])
    lat = np.array([g.circle[1] if g.circle else np.nan for g in geoms])
    x, y = tr.transform(lon, lat)

    def fn(c: np.ndarray) -> np.ndarray:
        return np.column_stack(tr.transform(c[:, 0], c[:, 1]))

    shapes = [None if g.circle else shapely.transform(g.shape, fn) for g in geoms]
    return np.asarray(x, dtype=float), np.asarray(y, dtype=float), shapes


def _window(proj: Projection, xmin: float, ymin: float, xmax: float, ymax: float) -> Grid:
    """The smallest grid of the working projection covering a box."""
    a, _, c, _, e, f = proj.transform
    c0, c1 = np.floor((xmin - c) / a), np.ceil((xmax - c) / a)
    r0, r1 = np.floor((ymax - f) / e), np.ceil((ymin - f) / e)
    c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
    return Grid(proj.crs, (a, 0.0, c + c0 * a, 0.0, e, f + r0 * e), int(c1 - c0), int(r1 - r0))


def _band_groups(values: np.ndarray) -> list[np.ndarray]:
    """Band indices sharing one mask: each group goes through the kernel once."""
    nan = np.isnan(values)
    if (nan == nan[..., :1]).all():
        return [np.arange(values.shape[-1])]
    groups: dict[bytes, list[int]] = defaultdict(list)
    for b in range(values.shape[-1]):
        groups[np.packbits(nan[..., b]).tobytes()].append(b)
    return [np.array(g) for g in groups.values()]


def _reduce_group(img: Img, proj: Projection, x: np.ndarray, y: np.ndarray, radius: float,
                  shapes: list[Any] | None, bbox: tuple[float, float, float, float]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Means and weighted sums (P, B) of one spatial group of regions."""
    grid = _window(proj, *bbox)
    n_px = grid.width * grid.height
    if n_px > 1e8:
        raise EEError(f"Too many pixels in the region. Found {n_px}, but maxPixels allows 1e8.")
    values = img.read(grid)
    a, _, c, _, e, f = grid.transform
    n = len(shapes) if shapes is not None else len(x)
    mean = np.full((n, len(img.bands)), np.nan, dtype=np.float64)
    total = np.zeros_like(mean)
    for idx in _band_groups(values):
        block = zonal.PixelBlock(values[..., idx], c, f, a, e)
        if shapes is None:
            part = zonal.partial_sums(block, x, y, radius)
        else:
            part = zonal.polygon_partial_sums(block, shapes)
        mean[:, idx] = zonal.finalize(part, radius if shapes is None else np.nan,
                                      block.pixel_area).mean
        total[:, idx] = part.weighted_sum
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
    x, y, shapes = _to_crs([f.geom for f in feats], proj.crs)
    use_circle = not is_geographic(proj.crs)
    cell = CELL_PIXELS * proj.scale
    groups: dict[tuple, list[int]] = defaultdict(list)
    boxes = []
    for i, f in enumerate(feats):
        circle = f.geom.circle if use_circle else None  # type: ignore[union-attr]
        if circle:
            r = circle[2]
            box = (x[i] - r, y[i] - r, x[i] + r, y[i] + r)
            key: tuple = ("c", r)
        else:
            if shapes[i] is None:  # circle in a geographic grid: its polygon
                shapes[i] = _to_crs([type(f.geom)(f.geom.shape)], proj.crs)[2][0]  # type: ignore[union-attr]
            box = shapes[i].bounds
            key = ("p",)
        boxes.append(box)
        groups[(*key, int((box[0] + box[2]) // (2 * cell)), int((box[1] + box[3]) // (2 * cell)))
               ].append(i)
    n_b = len(img.bands)
    mean = np.full((len(feats), n_b), np.nan)
    total = np.zeros((len(feats), n_b))
    for key, idx in groups.items():
        sel = np.array(idx)
        bb = np.array([boxes[i] for i in idx])
        bbox = (bb[:, 0].min(), bb[:, 1].min(), bb[:, 2].max(), bb[:, 3].max())
        if key[0] == "c":
            m, t = _reduce_group(img, proj, x[sel], y[sel], key[1], None, bbox)
        else:
            m, t = _reduce_group(img, proj, x[sel], y[sel], np.nan, [shapes[i] for i in idx], bbox)
        mean[sel], total[sel] = m, t
    names = _output_names(img.bands, leaves)
    rows = np.concatenate([mean if kind == "mean" else total for kind, _ in leaves], axis=1)
    # a reducer without input (mean of masked pixels) is null: reduceRegions leaves the
    # property out, reduceRegion keeps the key with null
    out = [Feat(f.geom, {**f.props, **{k: v if v == v else None
                                       for k, v in zip(names, row, strict=True)
                                       if keep_null or v == v}}, f.id)
           for f, row in zip(feats, rows.tolist(), strict=True)]
    return Coll(out, "FeatureCollection", dict(coll.props))


def _output_names(bands: list[str], leaves: list[tuple[str, str]]) -> list[str]:
    """EE naming: band names; the reducer's name for one band; ``band_output`` for several."""
    if len(bands) == 1:
        return [name for _, name in leaves]
    if len(leaves) == 1:
        return list(bands)
    return [f"{b}_{name}" for _, name in leaves for b in bands]
